"""Evaluation: registry, data loading, the resumable/shardable runner, the results folder, plots.

Runs on a tiny random model (2 layers, hidden 32) with a sentencepiece vocabulary trained here,
over a slice of WikiSplit validation when ../shared has it (synthetic WikiSplit-style rows when
not). The kill test kills a real `run_evaluation` process with SIGKILL in the middle of a run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

import bertgen
from bertgen.config import BertGenerationConfig, EncoderDecoderConfig
from bertgen.tasks import SEP, TASKS, decoding_defaults
from bertgen.tokenization import train_sentencepiece
from evaluation import __main__ as cli
from evaluation import plots
from evaluation.benchmarks import BENCHMARKS, check_registry, get_benchmark, paper_results
from evaluation.data import DataError, load_examples
from evaluation.runner import COPY, merge, plan_batches, run_evaluation, run_key
from evaluation.runs import RunError, leaderboard, load_runs, read_predictions, read_record

ROOT = Path(__file__).resolve().parents[1]
WIKISPLIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikisplit"
HAVE_WIKISPLIT = (WIKISPLIT / "validation.tsv").is_file()
N = 12  # examples per runner test
FAST = {"num_beams": 2, "max_new_tokens": 6, "early_stopping": True}


# ----------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------
def _synthetic_rows(n: int) -> list[tuple[str, str]]:
    rows = []
    for i in range(n):
        a = f"The river number {i} floods every spring ."
        b = f"Farmers plant rice on its banks {'after the water recedes ' * (i % 3)}."
        rows.append((f"{a[:-2]} and {b}", f"{a} {SEP} {b}"))
    return rows


@pytest.fixture(scope="module")
def wikisplit_rows() -> list[tuple[str, str]]:
    if not HAVE_WIKISPLIT:
        return _synthetic_rows(60)
    lines = (WIKISPLIT / "validation.tsv").read_text(encoding="utf-8").splitlines()[:60]
    return [tuple(line.split("\t")) for line in lines]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, wikisplit_rows) -> Path:
    """N rows in the WikiSplit TSV format (no header, tab, ` <::::> ` in column 2)."""
    path = tmp_path_factory.mktemp("data") / "validation.tsv"
    path.write_text("".join(f"{a}\t{b}\n" for a, b in wikisplit_rows[:N]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, wikisplit_rows) -> Path:
    """A random 2-layer BertGeneration model with a sentencepiece tokenizer, saved by bertgen."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tok = train_sentencepiece([t for row in wikisplit_rows for t in row], 200, folder)
    enc = BertGenerationConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=128)
    config = EncoderDecoderConfig(encoder=enc, decoder=enc.as_decoder(), decoder_start_token_id=2,
                                  pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    bertgen.save(bertgen.EncoderDecoderModel(config), folder, tokenizer=tok)
    return folder


@pytest.fixture(scope="module")
def pipe(tiny_model):
    from bertgen.pipeline import pipeline
    return pipeline("text2text-generation", model=tiny_model, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model, data_file, pipe):
    """An uninterrupted, unsharded run: what every resumed or sharded run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    return run_evaluation(str(tiny_model), "wikisplit", data_files=data_file, settings=FAST, batch_size=4,
                          output_dir=out, pipeline=pipe, show_progress=False)


def _predictions(record) -> list[tuple[int, str]]:
    return sorted((i, row["prediction"]) for i, row in read_predictions(record.predictions_path).items())


def _line_indices(record) -> list[int]:
    return [json.loads(line)["index"] for line in record.predictions_path.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------
def test_registry_is_consistent():
    assert check_registry() == []
    assert {"discofuse", "wikisplit", "wikisplit-fusion", "gigaword", "cnn_dailymail", "xsum",
            "wmt14-en-de", "wmt14-de-en"} <= set(BENCHMARKS)
    for bench in BENCHMARKS.values():
        assert bench.task in TASKS
    assert get_benchmark("cnn_dailymail").hub_config == "3.0.0"
    assert get_benchmark("wmt14-de-en").metrics == ("bleu",)
    assert get_benchmark("discofuse").metrics == ("exact_match", "sari")
    assert get_benchmark("wikisplit").metrics == ("exact_match", "sari", "bleu")
    assert get_benchmark("wikisplit").paper_reference()["values"] == {"exact_match": 16.4, "sari": 63.8, "bleu": 77.4}
    assert len(paper_results()) == 98 and all(0 < r["value"] < 100 for r in paper_results())
    shared = WIKISPLIT.parents[1] / "reference" / "paper_results.csv"
    if shared.is_file():  # our copy of the facts is the shared reference, unchanged
        assert (ROOT / "evaluation" / "paper_results.csv").read_bytes() == shared.read_bytes()
    with pytest.raises(KeyError, match="known benchmarks"):
        get_benchmark("nope")


def test_row_formatting():
    disco = {"incoherent_first_sentence": "Zeitler moves well .", "incoherent_second_sentence": "He struggles .",
             "coherent_first_sentence": "Zeitler moves well , but he struggles .", "coherent_second_sentence": ""}
    assert get_benchmark("discofuse").format(disco) == ("Zeitler moves well . He struggles .",
                                                        "Zeitler moves well , but he struggles .")
    hub = {"complex_sentence": "A and B .", "simple_sentence_1": "A .", "simple_sentence_2": "B ."}
    tsv = {"complex_sentence": "A and B .", "simple_sentences": f"A . {SEP} B ."}
    assert get_benchmark("wikisplit").format(hub) == get_benchmark("wikisplit").format(tsv) == ("A and B .", f"A . {SEP} B .")
    assert get_benchmark("wikisplit-fusion").format(tsv) == (f"A . {SEP} B .", "A and B .")
    assert get_benchmark("wmt14-en-de").format({"translation": {"en": "Hi", "de": "Hallo"}}) == ("Hi", "Hallo")


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAVE_WIKISPLIT, reason=f"WikiSplit data not found at {WIKISPLIT}")
def test_real_wikisplit_tsv_loads_all_rows_with_quotes_intact():
    ex = load_examples("wikisplit", data_files=WIKISPLIT / "validation.tsv")
    assert len(ex) == ex.total == 5000 and ex.split == "validation"
    assert all(SEP in ref for ref in ex.references)
    first_line = (WIKISPLIT / "validation.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert (ex.sources[0], ex.references[0]) == tuple(first_line)  # stray quotes kept as they are
    fusion = load_examples("wikisplit-fusion", split="validation", limit=3)  # found without --data-files
    assert fusion.sources == ex.references[:3] and fusion.references == ex.sources[:3]


def test_local_formats_and_column_mapping(tmp_path):
    rows = [{"article": "NA is a word , not a gap .", "highlights": "NA stays ."},
            {"article": 'He said "hi" .', "highlights": "null too ."}]
    pd.DataFrame(rows).to_json(tmp_path / "a.jsonl", orient="records", lines=True)
    pd.DataFrame(rows).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")
    (tmp_path / "a.tsv").write_text("article\thighlights\n" + "".join(f"{r['article']}\t{r['highlights']}\n" for r in rows))
    for name in ("a.jsonl", "a.csv", "a.parquet", "a.tsv"):
        ex = load_examples("cnn_dailymail", data_files=tmp_path / name)
        assert ex.sources == [r["article"] for r in rows] and ex.references == [r["highlights"] for r in rows], name
        assert ex.data_hash.startswith("sha256:") and ex.split == "a"
    pd.DataFrame([{"text": r["article"], "summary": r["highlights"]} for r in rows]).to_json(
        tmp_path / "b.jsonl", orient="records", lines=True)
    mapped = load_examples("cnn_dailymail", data_files=tmp_path / "b.jsonl", columns={"article": "text", "highlights": "summary"})
    assert mapped.references == ["NA stays .", "null too ."]
    (tmp_path / "wmt.jsonl").write_text(json.dumps({"translation": {"de": "Guten Tag .", "en": "Good day ."}}) + "\n")
    wmt = load_examples("wmt14-de-en", data_files=tmp_path / "wmt.jsonl")
    assert (wmt.sources, wmt.references) == (["Guten Tag ."], ["Good day ."])
    pd.DataFrame([{"source": "x y", "target": "y"}]).to_json(tmp_path / "st.jsonl", orient="records", lines=True)
    assert load_examples("xsum", data_files=tmp_path / "st.jsonl", limit=1).sources == ["x y"]
    with pytest.raises(DataError, match="--columns"):
        load_examples("cnn_dailymail", data_files=tmp_path / "b.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        load_examples("wikisplit", data_files=tmp_path / "missing.tsv")


def test_wikisplit_tsv_without_header_and_with_quotes(tmp_path):
    path = tmp_path / "tune.tsv"
    path.write_text("'' A '' and B .\t'' A '' . <::::> B .\n\" C and D\tC . <::::> D .\n", encoding="utf-8")
    ex = load_examples("wikisplit", data_files=path)
    assert ex.sources == ["'' A '' and B .", '" C and D'] and ex.references[1] == "C . <::::> D ."
    assert ex.split == "tune"
    assert load_examples("wikisplit-fusion", data_files=path).sources == ex.references


def test_offline_hub_load_says_how_to_use_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"offline mode.*--data-files"):
        load_examples("cnn_dailymail", split="test")
    assert time.perf_counter() - start < 20  # fails fast, no retries


def test_cli_errors_are_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert cli.main(["run", "--model", "copy", "--benchmark", "xsum", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot load EdinburghNLP/xsum") and "\n" not in err
    assert cli.main(["run", "--model", "copy", "--benchmark", "nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------
def test_run_records_everything(reference_run, tiny_model):
    run = reference_run
    assert run.status == "complete" and run.num_done == run.num_examples == N
    assert set(run.metrics) >= {"exact_match", "sari", "bleu"} and run.sari_variant == "paper"
    assert run.model == str(tiny_model.resolve()) and run.model_hash.startswith("sha256:")
    assert run.settings == {**TASKS["sentence-splitting"].decoding, **FAST}
    assert run.examples_per_second > 0 and run.hardware["cpu_cores"] and "torch" in run.versions
    assert run.date and run.data_hash.startswith("sha256:")
    assert read_record(run.record_path).to_dict() == run.to_dict()
    assert sorted(_line_indices(run)) == list(range(N))  # each example once


def test_rerun_resumes_instead_of_regenerating(reference_run, tiny_model, data_file):
    class Exploding:
        def run(self, texts, **kw):
            raise AssertionError("nothing is left to generate")

    again = run_evaluation(str(tiny_model), "wikisplit", data_files=data_file, settings=FAST, batch_size=4,
                           output_dir=reference_run.folder, pipeline=Exploding(), show_progress=False)
    assert again.run_id == reference_run.run_id and again.metrics == reference_run.metrics


def test_batches_are_length_sorted_and_shards_interleave():
    sources = ["a" * n for n in (3, 9, 1, 7, 5)]
    assert plan_batches(sources, 2) == [(0, [1, 3]), (1, [4, 0]), (2, [2])]
    assert plan_batches(sources, 2, num_shards=2, shard_index=1) == [(1, [4, 0])]


def test_stop_and_progress_then_resume(tmp_path, tiny_model, data_file, pipe, reference_run):
    calls = []
    stopped = run_evaluation(str(tiny_model), "wikisplit", data_files=data_file, settings=FAST, batch_size=4,
                             output_dir=tmp_path, pipeline=pipe, show_progress=False,
                             progress=lambda done, total: calls.append((done, total)),
                             should_stop=lambda: len(calls) >= 3)
    assert stopped.status == "stopped" and stopped.num_done == 8 and calls == [(0, N), (4, N), (8, N)]
    resumed = run_evaluation(str(tiny_model), "wikisplit", data_files=data_file, settings=FAST, batch_size=4,
                             output_dir=tmp_path, pipeline=pipe, show_progress=False)
    assert resumed.status == "complete"
    assert _predictions(resumed) == _predictions(reference_run) and resumed.metrics == reference_run.metrics


KILL_SCRIPT = """
import sys, time
from bertgen.pipeline import pipeline
from evaluation.runner import run_evaluation

model, data, out = sys.argv[1:4]
real = pipeline("text2text-generation", model=model, device="cpu", batch_size=4)

class Slow:  # slow enough to be killed in the middle
    def run(self, texts, **kw):
        time.sleep(0.4)
        return real.run(texts, **kw)

run_evaluation(model, "wikisplit", data_files=data, settings={settings}, batch_size=2, output_dir=out,
               pipeline=Slow(), show_progress=False)
"""


def test_killed_run_resumes_to_identical_results(tmp_path, tiny_model, data_file, pipe, reference_run):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT).replace("{settings}", repr(FAST)))
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_model), str(data_file), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # generous: on a loaded machine the child may start slowly
    lines = 0
    while lines < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        lines = sum(p.read_bytes().count(b"\n") for p in out.glob("*.predictions.jsonl"))
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    (pred_file,) = out.glob("*.predictions.jsonl")
    assert 4 <= pred_file.read_bytes().count(b"\n") < N
    with pred_file.open("a", encoding="utf-8") as f:  # a write torn by the kill
        f.write('{"index": 11, "source": "half a li')

    resumed = run_evaluation(str(tiny_model), "wikisplit", data_files=data_file, settings=FAST, batch_size=2,
                             output_dir=out, pipeline=pipe, show_progress=False)
    assert resumed.status == "complete" and resumed.predictions_path == pred_file
    assert sorted(_line_indices(resumed)) == list(range(N))  # no duplicate, none lost, torn line gone
    assert _predictions(resumed) == _predictions(reference_run)
    assert resumed.metrics == reference_run.metrics


def test_a_run_already_going_is_refused(tmp_path, data_file):
    fcntl = pytest.importorskip("fcntl")
    first = run_evaluation(COPY, "wikisplit", data_files=data_file, output_dir=tmp_path, show_progress=False)
    with first.predictions_path.open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running process holds it
        with pytest.raises(RunError, match="another process"):
            run_evaluation(COPY, "wikisplit", data_files=data_file, output_dir=tmp_path, show_progress=False)


def test_sharded_merge_equals_unsharded(tmp_path, tiny_model, data_file, pipe, reference_run):
    shards = [run_evaluation(str(tiny_model), "wikisplit", data_files=data_file, settings=FAST, batch_size=4,
                             output_dir=tmp_path, pipeline=pipe, show_progress=False, num_shards=2, shard_index=i)
              for i in (0, 1)]
    assert sum(s.num_done for s in shards) == N and all(s.group_id == reference_run.group_id for s in shards)
    with pytest.raises(RunError, match="shards 0..1"):
        merge([shards[0], shards[0]])
    merged = merge(shards)
    assert merged.metrics == reference_run.metrics
    assert _predictions(merged) == _predictions(reference_run)
    assert merged.is_final and merged.merged_from == [s.run_id for s in shards]


def test_cli_run_loads_the_model_and_prints_metrics_last(tmp_path, tiny_model, data_file, capsys):
    args = ["run", "--model", str(tiny_model), "--benchmark", "wikisplit", "--data-files", str(data_file),
            "--limit", "4", "--num-beams", "1", "--max-new-tokens", "4", "--output", str(tmp_path)]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["status"] == "complete" and summary["examples"] == 4 and "sari" in summary
    assert "4/4" in captured.err  # the progress bar
    (run,) = load_runs(tmp_path)
    assert run.settings["num_beams"] == 1 and run.settings["max_new_tokens"] == 4 and run.limit == 4


def test_int8_run_is_its_own_run_and_says_so(tmp_path, tiny_model, data_file, capsys, reference_run):
    base = ["run", "--model", str(tiny_model), "--benchmark", "wikisplit", "--data-files", str(data_file),
            "--limit", "4", "--num-beams", "1", "--max-new-tokens", "4", "--output", str(tmp_path)]
    assert cli.main(base) == 0 and cli.main(base + ["--quantize", "int8"]) == 0
    capsys.readouterr()
    fp32, int8 = sorted(load_runs(tmp_path), key=lambda r: r.quantize or "")
    assert fp32.quantize is None and int8.quantize == "int8" and fp32.run_id != int8.run_id
    assert int8.label == fp32.label + " (int8)" and int8.status == "complete" and int8.num_done == 4
    # fp32 ids did not change with the precision field (earlier records still resume)
    assert fp32.group_id == run_key(fp32.model, fp32.model_hash, get_benchmark("wikisplit"),
                                    load_examples(get_benchmark("wikisplit"), data_files=[data_file], limit=4),
                                    4, fp32.settings, 0)
    with pytest.raises(RunError, match="unknown quantize"):
        run_evaluation(str(tiny_model), "wikisplit", data_files=data_file, quantize="int4", output_dir=tmp_path)
    from bertgen.kernels import native_kernels
    if native_kernels() is not None:  # weights in bf16, math in fp32: one more run of its own
        assert cli.main(base + ["--quantize", "bf16-weights"]) == 0
        bf16 = [r for r in load_runs(tmp_path) if r.quantize == "bf16-weights"]
        assert len(bf16) == 1 and bf16[0].label == fp32.label + " (bf16-weights)" and bf16[0].num_done == 4


BUNDLED_SPLIT = ROOT / "checkpoints" / "wikisplit-split-small"


@pytest.mark.skipif(not (BUNDLED_SPLIT / "config.json").is_file(), reason=f"no bundled checkpoint at {BUNDLED_SPLIT}")
def test_bundled_split_model_on_wikisplit(tmp_path, wikisplit_rows):
    data = tmp_path / "validation.tsv"
    data.write_text("".join(f"{a}\t{b}\n" for a, b in wikisplit_rows[:20]), encoding="utf-8")
    run = run_evaluation("wikisplit-split-small", "wikisplit", data_files=data, output_dir=tmp_path / "runs",
                         settings={"num_beams": 1, "max_new_tokens": 48}, show_progress=False)
    assert run.status == "complete" and run.num_done == 20 and run.model == "wikisplit-split-small"
    assert run.model_hash.startswith("sha256:") and {"exact_match", "sari", "bleu"} <= set(run.metrics)
    # the checkpoint's own decoding choices under the caller's: EOS waits for the separator
    sep = bertgen.load_tokenizer(BUNDLED_SPLIT).sep_token_id
    assert run.settings["required_token_id"] == sep and run.settings["num_beams"] == 1
    ended = [row for row in read_predictions(run.predictions_path).values() if row["new_tokens"] < 48]
    assert ended and all(SEP in row["prediction"] for row in ended)


def test_a_checkpoints_own_decoding_choices_sit_between_the_task_and_the_caller(tmp_path, tiny_model, data_file):
    folder = tmp_path / "tuned"
    shutil.copytree(tiny_model, folder)
    own = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps(
        {**own, "num_beams": 3, "length_penalty": 1.5, "eos_token_id": 7, "transformers_only_key": 1}))
    task = TASKS["sentence-splitting"].decoding
    defaults = decoding_defaults("sentence-splitting", folder)
    # token ids stay the model's, keys we do not implement stay the checkpoint's business
    assert defaults == {**task, "num_beams": 3, "length_penalty": 1.5}
    assert decoding_defaults("sentence-splitting") == task
    run = run_evaluation(str(folder), "wikisplit", data_files=data_file, limit=2, output_dir=tmp_path / "runs",
                         settings={"num_beams": 2, "max_new_tokens": 4}, show_progress=False)
    assert run.settings == {**task, "num_beams": 2, "length_penalty": 1.5, "max_new_tokens": 4}
    (folder / "generation_config.json").write_text("{not json")
    with pytest.raises(RunError, match="generation_config.json is not valid JSON"):
        run_evaluation(str(folder), "wikisplit", data_files=data_file, limit=2, output_dir=tmp_path / "runs")


def test_copy_baseline(tmp_path, data_file, capsys):
    assert cli.main(["run", "--model", "copy", "--benchmark", "wikisplit", "--data-files", str(data_file),
                     "--output", str(tmp_path), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "complete" and summary["exact_match"] == 0 and 0 < summary["bleu"] < 100
    (run,) = load_runs(tmp_path)
    assert run.model == COPY and run.settings == {}
    assert [r["prediction"] for r in read_predictions(run.predictions_path).values()] == \
           [r["source"] for r in read_predictions(run.predictions_path).values()]


# ----------------------------------------------------------------------------------------
# Results folder
# ----------------------------------------------------------------------------------------
def test_corrupt_files_are_skipped_with_warnings(tmp_path, reference_run):
    for path in reference_run.folder.glob(f"{reference_run.run_id}*"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "partial.json").write_text(json.dumps({"run_id": "x"}))
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    pred = tmp_path / reference_run.predictions_file
    lines = pred.read_text(encoding="utf-8").splitlines(keepends=True)
    pred.write_text(lines[0] + "garbage\n" + "".join(lines[1:]) + '{"index": 3, "predi', encoding="utf-8")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = load_runs(tmp_path)
        rows = read_predictions(pred)
    assert [r.run_id for r in runs] == [reference_run.run_id]
    assert len([w for w in caught if "skipping" in str(w.message)]) == 4
    assert any("corrupt prediction line" in str(w.message) for w in caught)
    assert any("unfinished last line" in str(w.message) for w in caught)
    assert len(rows) == N
    board = leaderboard(runs, paper=True)
    assert list(board["model"]) == ["paper: robertaShare-24L (test)", runs[0].label]
    assert board.loc[1, "sari"] == round(reference_run.metrics["sari"], 2)


def test_report_cli(tmp_path, reference_run, capsys):
    for path in reference_run.folder.glob(f"{reference_run.run_id}*"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    assert cli.main(["report", "--output", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["runs"] == 1
    assert "| paper: robertaShare-24L (test) |" in (tmp_path / "leaderboard.md").read_text()
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "plotly" in page and "Leaderboard" in page and "<script src=\"https://cdn.plot.ly" not in page  # inline js: works offline
    assert len(pd.read_csv(tmp_path / "leaderboard.csv")) == 2


# ----------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------
def test_plots_have_the_expected_traces(tmp_path, reference_run, data_file):
    copy = run_evaluation(COPY, "wikisplit", data_files=data_file, output_dir=tmp_path, show_progress=False)
    fig = plots.metrics_by_model([reference_run, copy])
    names = [t.name for t in fig.data]
    assert names == ["exact_match", "sari", "bleu", "paper exact_match", "paper sari", "paper bleu"]
    assert list(fig.data[1].y) == [reference_run.metrics["sari"], copy.metrics["sari"]]
    assert list(fig.data[4].y) == [63.8, 63.8]
    assert [t.name for t in plots.metrics_by_model([copy], paper=False).data] == ["exact_match", "sari", "bleu"]

    fig = plots.score_vs_length(copy)
    assert [t.name for t in fig.data] == ["examples", "mean per bin"] and len(fig.data[0].x) == N

    fig = plots.per_example_diff(reference_run, copy)
    assert len(fig.data) == 1 and len(fig.data[0].y) == N and list(fig.data[0].y) == sorted(fig.data[0].y)
    table = plots.compare_examples(reference_run, copy)
    assert table["difference"].tolist() == (table["score_a"] - table["score_b"]).tolist()
    # the per-example SARI averages to the corpus SARI (the metric is a mean over sentences)
    assert table["score_b"].mean() == pytest.approx(copy.metrics["sari"])
