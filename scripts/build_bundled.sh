#!/usr/bin/env bash
# Rebuilds checkpoints/wikisplit-split-small and checkpoints/wikisplit-fusion-small from
# ../shared/data/wikisplit/tune.tsv (training) and validation.tsv (selection and scores).
# Deterministic (seed 0, fixed torch threads per stage); resumable: after an interruption
# run it again and training continues from its last snapshot in runs/bundled/.
# About 80 minutes of training on 2 CPU cores (one thread), ~35-40 minutes of fusion fine-tuning
# (two threads), ~20 minutes of scoring, then the bertShare comparison: ~35 minutes of training
# and ~20 of scoring.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
PY="${PYTHON:-.venv/bin/python}"
"$PY" scripts/build_bundled.py --stage train "$@"
"$PY" scripts/build_bundled.py --stage export "$@"
# the fusion model: the exported model fine-tuned on fusion with rule-made pairs (2 threads)
OMP_NUM_THREADS=2 "$PY" scripts/build_bundled.py --stage fusion "$@"
# score both directions at once (one thread each), then write the model cards
"$PY" scripts/build_bundled.py --stage eval --task split "$@" &
split_pid=$!
"$PY" scripts/build_bundled.py --stage eval --task fusion "$@"
wait "$split_pid"
# the quality cost of int8 and bf16 on the first 1,000 rows (both in parallel)
"$PY" scripts/build_bundled.py --stage precision --precision int8 --eval-rows 1000 "$@" &
int8_pid=$!
"$PY" scripts/build_bundled.py --stage precision --precision bfloat16 --eval-rows 1000 "$@"
wait "$int8_pid"
# the other recipe (bertShare from MiniLM), for the comparison in the cards: train, then score
# both directions at once
OMP_NUM_THREADS=2 "$PY" scripts/build_bundled.py --stage bertshare "$@"
"$PY" scripts/build_bundled.py --stage bertshare-eval --task split "$@" &
split_pid=$!
"$PY" scripts/build_bundled.py --stage bertshare-eval --task fusion "$@"
wait "$split_pid"
"$PY" scripts/build_bundled.py --stage cards "$@"
du -sh checkpoints/wikisplit-*-small
