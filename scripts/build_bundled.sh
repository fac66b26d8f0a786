#!/usr/bin/env bash
# Rebuilds checkpoints/wikisplit-split-small and checkpoints/wikisplit-fusion-small from
# ../shared/data/wikisplit/tune.tsv (training) and validation.tsv (selection and scores).
# Deterministic (seed 0, one torch thread per process); resumable: after an interruption
# run it again and training continues from its last snapshot in runs/bundled/.
# Takes about 75 minutes of training on 2 (shared) CPU cores plus ~15 minutes of scoring.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
PY="${PYTHON:-.venv/bin/python}"
"$PY" scripts/build_bundled.py --stage train "$@"
"$PY" scripts/build_bundled.py --stage export "$@"
# score both directions at once (one thread each), then write the model cards
"$PY" scripts/build_bundled.py --stage eval --task split "$@" &
split_pid=$!
"$PY" scripts/build_bundled.py --stage eval --task fusion "$@"
wait "$split_pid"
"$PY" scripts/build_bundled.py --stage cards "$@"
du -sh checkpoints/wikisplit-*-small
