"""`python -m evaluation`: run a benchmark, merge shards, write the report, list benchmarks.

  run     scores a model (folder, hub id, bundled name, or `copy`); the last stdout line is the
          metrics as JSON; rerunning the same command resumes an interrupted run
  merge   combines the complete shards of one run into one record
  report  writes leaderboard.csv, leaderboard.md and report.html from a results folder
  list    the benchmarks, their data and metrics

Errors print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings

DECODING = {  # flag -> (type, help)
    "num_beams": (int, "beam size"),
    "max_new_tokens": (int, "longest output, in tokens"),
    "length_penalty": (float, "beam length penalty (alpha)"),
    "no_repeat_ngram_size": (int, "forbid repeating n-grams of this size"),
    "temperature": (float, "sampling temperature"),
    "top_k": (int, "sample from the k likeliest tokens"),
    "top_p": (float, "nucleus sampling mass"),
    "repetition_penalty": (float, "penalty for repeated tokens"),
    "required_token_id": (None, "no EOS before this token id was generated; 'none' switches off the "
                                "checkpoint's (the split models require the separator)"),
}


def build_parser() -> argparse.ArgumentParser:
    from bertgen.pipeline import QUANTIZATIONS
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="score a model on a benchmark")
    run.add_argument("--model", required=True, help="checkpoint folder, hub id, bundled name, or 'copy'")
    run.add_argument("--benchmark", required=True, help="see `python -m evaluation list`")
    run.add_argument("--data-files", nargs="+", help="local JSONL/CSV/TSV/Parquet file(s) instead of the hub")
    run.add_argument("--columns", help="map benchmark columns to the file's: name=column,...")
    run.add_argument("--split", help="split name (default: the benchmark's, or the file's name)")
    run.add_argument("--limit", type=int, help="only the first N examples")
    run.add_argument("--max-data-mb", type=float, help="refuse data files above this size (default 1024)")
    run.add_argument("--batch-size", type=int, default=16)
    run.add_argument("--output", default="runs", help="results folder (default runs/)")
    run.add_argument("--num-shards", type=int, default=1)
    run.add_argument("--shard-index", type=int, default=0)
    run.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    run.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    run.add_argument("--quantize", choices=QUANTIZATIONS,
                     help="int8: dynamic quantization of the linear layers (CPU); bf16-weights: weights in bf16, "
                          "math in fp32 (CPU); 4bit: bitsandbytes (CUDA)")
    run.add_argument("--sari-variant", choices=["paper", "common", "t2t"], help="default: the paper's")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--do-sample", action="store_true", default=None, help="sample instead of search")
    from bertgen.__main__ import token_id_or_unset
    for name, (kind, text) in DECODING.items():
        run.add_argument("--" + name.replace("_", "-"), type=kind or token_id_or_unset, help=text)
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    merge = sub.add_parser("merge", help="merge the complete shards of one run")
    merge.add_argument("shards", nargs="+", help="shard records (paths or run ids)")
    merge.add_argument("--output", default="runs")

    report = sub.add_parser("report", help="leaderboard (CSV, markdown) and an HTML page of plots")
    report.add_argument("--output", default="runs", help="results folder to read (and write into)")
    report.add_argument("--to", help="write the report here instead")

    sub.add_parser("list", help="the benchmarks")
    return parser


def _columns(text: str | None) -> dict | None:
    if not text:
        return None
    pairs = [item.split("=", 1) for item in text.split(",")]
    if any(len(p) != 2 or not all(p) for p in pairs):
        raise ValueError(f"--columns wants name=column,...; got {text!r}")
    return dict(pairs)


def cmd_run(args) -> dict:
    from .runner import run_evaluation

    settings = {name: getattr(args, name) for name in DECODING}
    settings["do_sample"] = args.do_sample
    record = run_evaluation(args.model, args.benchmark, data_files=args.data_files, split=args.split,
                            limit=args.limit, settings=settings, batch_size=args.batch_size,
                            output_dir=args.output, seed=args.seed, num_shards=args.num_shards,
                            shard_index=args.shard_index, device=args.device, dtype=args.dtype,
                            quantize=args.quantize,
                            columns=_columns(args.columns), sari_variant=args.sari_variant,
                            show_progress=not args.quiet,
                            max_data_bytes=None if args.max_data_mb is None else int(args.max_data_mb * 2**20))
    print(f"{record.run_id}: {record.status}, {record.num_done}/{record.num_examples} examples "
          f"-> {record.record_path}", file=sys.stderr)
    return _summary(record)


def _summary(record) -> dict:
    scalars = {k: v for k, v in record.metrics.items() if isinstance(v, (int, float, str))}
    return {"run_id": record.run_id, "status": record.status, "examples": record.num_done, **scalars}


def cmd_merge(args) -> dict:
    from .runner import merge
    from .runs import find_run

    record = merge([find_run(args.output, ref) for ref in args.shards], output_dir=args.output)
    return _summary(record)


def cmd_report(args) -> dict:
    from .plots import write_report
    from .runs import load_runs

    runs = load_runs(args.output)
    paths = write_report(runs, args.to or args.output)
    return {"runs": len(runs), **{k: str(v) for k, v in paths.items()}}


def cmd_list(_args) -> dict:
    from .benchmarks import BENCHMARKS

    for b in BENCHMARKS.values():
        where = b.hub_id + (f" ({b.hub_config})" if b.hub_config else "")
        print(f"{b.name:18} {b.task:20} {', '.join(b.metrics):28} {where}")
    return {"benchmarks": list(BENCHMARKS)}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from bertgen.checkpoints import CheckpointError

    from .data import DataError
    from .runs import RunError

    logging.getLogger("sacrebleu").setLevel(logging.ERROR)  # "forgot to detokenize?": WikiSplit is tokenized
    warnings.simplefilter("always", UserWarning)  # corrupt files are reported every time
    warnings.formatwarning = lambda message, *_args, **_kw: f"warning: {message}\n"
    try:
        result = {"run": cmd_run, "merge": cmd_merge, "report": cmd_report, "list": cmd_list}[args.command](args)
    except (DataError, RunError, CheckpointError, KeyError, ValueError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
