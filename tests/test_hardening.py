"""Hardening, measured (phase 1: library, CLI, evaluation and training layers).

Bad input, hostile files, property-based fuzzing and interrupted work, each expected to give a
clear error or a sensible result while nothing already saved is lost. docs/RELIABILITY.md has
the table of what is tried here and what came out. Known bugs in modules owned by others are
`xfail(strict=True)`: each says what is wrong, and turns into a failure once it is fixed (then
drop the marker).

Everything runs on a random 2-layer, hidden-32 checkpoint with 32 positions made at test time
(`tiny_spm_checkpoint` in conftest.py); the file takes well under 90 s on 2 busy cores.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bertgen
from bertgen.checkpoints import CheckpointError
from bertgen.config import MAX_PARAMETERS
from bertgen.generation import GenerationSettings
from bertgen.pipeline import pipeline
from bertgen.tokenization import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                     HealthCheck.too_slow], derandomize=True)


def fuzz(max_examples: int):
    """Small, deterministic hypothesis runs (the same examples in CI as here)."""
    return settings(FUZZ, max_examples=max_examples)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def ckpt(tiny_spm_checkpoint):
    """The checkpoint folder and a digest of its files, to prove no failure below changes it."""
    return tiny_spm_checkpoint, _digest(tiny_spm_checkpoint)


@pytest.fixture(scope="module")
def pipe(ckpt):
    return pipeline("text2text-generation", model=ckpt[0], device="cpu", batch_size=4)


@pytest.fixture
def folder(tmp_path, ckpt) -> Path:
    """A private copy of the checkpoint to damage."""
    return Path(shutil.copytree(ckpt[0], tmp_path / "ckpt"))


# ========================================================================================
# 1. Bad input at the library layer: bertgen.pipeline(...).run(...)
# ========================================================================================
@pytest.mark.parametrize("text", ["", " ", " \t\n\r ", "\u3000\u2003"], ids=["empty", "space", "ws", "unicode-ws"])
def test_empty_or_whitespace_input_is_refused(pipe, text):
    with pytest.raises(ValueError, match="input 0 is empty"):
        pipe.run(text)
    with pytest.raises(ValueError, match="input 1 is empty"):
        pipe.run(["the river", text])


def test_text_that_tokenizes_to_nothing_is_refused(pipe):
    with pytest.raises(ValueError, match="no tokens"):  # zero-width characters are not whitespace
        pipe.run("\u200b\u200b\ufeff")


def test_non_text_input_is_refused(pipe):
    with pytest.raises(ValueError, match="input 1 is a int"):
        pipe.run(["the river", 5])


def test_a_megabyte_of_text_is_truncated_with_a_notice(pipe):
    text = "The river floods every spring . " * 33_000  # ~1 MB
    assert len(text.encode()) > 1_000_000
    (result,) = pipe.run(text, max_new_tokens=3)
    assert result.truncated and result.tokens_cut > 100_000
    assert len(result.input_tokens) == pipe.max_input_tokens() == 32
    assert 1 <= result.new_tokens[0] <= 3


@pytest.mark.parametrize("text", [
    "a\x00b", "\x00\x00", "\x01\x02\x03\x1b[31mred\x1b[0m", "tab\tnew\nline\r\nend\x7f", "\x7f\x80\x9f\x1f",
], ids=["nul", "only-nul", "ansi", "mixed", "separators"])
def test_control_characters_give_a_result(pipe, text):
    (result,) = pipe.run(text, max_new_tokens=3)
    assert isinstance(result.text, str) and result.input_tokens and not result.truncated


@pytest.mark.parametrize("text", [
    "😀👍🏽🇩🇪 emoji", "東京 日本語 北京", "مرحبا بالعالم", "שלום עולם", "mixed \u202eRTL override\u202c",
    "e\u0301 combining", "ﬁ ① ＡＢ full width", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 astral",
], ids=["emoji", "cjk", "arabic", "hebrew", "bidi-controls", "combining", "compat", "astral"])
def test_unicode_scripts_give_a_result(pipe, text):
    results = pipe.run(["the river", text, "farmers plant rice"], max_new_tokens=3)
    assert len(results) == 3 and all(isinstance(r.text, str) for r in results)
    assert results[1].input_tokens  # the unknown characters map to <unk>, they are not dropped


@pytest.mark.parametrize("text", ["a\ud800b", "\udce9caf", "\udfff"], ids=["high", "escaped-byte", "low"])
def test_lone_surrogates_are_a_clear_error(pipe, text):
    # Fixed here (bertgen/tokenization.py): sentencepiece raised "Unable to cast Python instance
    # of type <class 'str'> to C++ type" for text decoded with errors="surrogateescape".
    with pytest.raises(ValueError, match="lone surrogate.*UTF-8"):
        pipe.run(text)


def test_inputs_longer_than_the_positions_are_cut_and_counted(pipe):
    limit = pipe.max_input_tokens()
    for n_words in (limit - 5, limit, limit + 1, 10 * limit):
        text = " ".join(["river"] * n_words)
        full = len(pipe.tokenizer.encode(text))
        (r,) = pipe.run(text, max_new_tokens=2)
        assert len(r.input_tokens) == min(full, limit)
        assert r.truncated == (full > limit) and r.tokens_cut == max(full - limit, 0)
    (r,) = pipe.run(" ".join(["river"] * 100), max_new_tokens=2, add_special_tokens=True)
    assert r.input_tokens[0] == "<s>" and r.input_tokens[-1] == "</s>" and len(r.input_tokens) == limit


NAN, INF = float("nan"), float("inf")
BAD_SETTINGS = [
    ("max_new_tokens", NAN), ("max_new_tokens", INF), ("max_new_tokens", -1), ("max_new_tokens", 0),
    ("max_new_tokens", 10**12), ("max_new_tokens", "5"), ("max_new_tokens", True), ("max_new_tokens", 5.0),
    ("max_length", 1), ("max_length", 10**9), ("max_length", "x"),
    ("min_length", -1), ("min_length", 2.5), ("min_new_tokens", -3), ("min_new_tokens", False),
    ("num_beams", 0), ("num_beams", -2), ("num_beams", 1.5), ("num_beams", "4"), ("num_beams", NAN),
    ("num_return_sequences", 0), ("num_return_sequences", 2), ("num_return_sequences", True),
    ("temperature", NAN), ("temperature", INF), ("temperature", -INF), ("temperature", "1"), ("temperature", True),
    ("top_p", NAN), ("top_p", 0.0), ("top_p", -0.1), ("top_p", 1.5), ("top_p", "0.9"),
    ("top_k", -5), ("top_k", 2.5), ("top_k", "50"),
    ("repetition_penalty", 0), ("repetition_penalty", -1.0), ("repetition_penalty", INF), ("repetition_penalty", NAN),
    ("length_penalty", NAN), ("length_penalty", INF), ("length_penalty", "1"),
    ("no_repeat_ngram_size", -1), ("no_repeat_ngram_size", 1.0),
    ("seed", -1), ("seed", "x"), ("seed", 1.5), ("do_sample", 1), ("do_sample", "yes"),
    ("early_stopping", "sometimes"), ("early_stopping", 2),
    ("eos_token_id", -1), ("eos_token_id", []), ("eos_token_id", [True]), ("eos_token_id", "1"),
    ("eos_token_id", 10**9), ("decoder_start_token_id", 10**6), ("decoder_start_token_id", -1),
    ("pad_token_id", -3), ("pad_token_id", 10**6), ("no_such_setting", 1),
]


@pytest.mark.parametrize("name, value", BAD_SETTINGS, ids=[f"{n}={v!r}" for n, v in BAD_SETTINGS])
def test_bad_decoding_values_are_a_clear_value_error(pipe, name, value):
    # a too-long max_length is reported in max_new_tokens terms (max_length - 1): still clear
    with pytest.raises(ValueError, match="max_length|max_new_tokens" if name == "max_length" else name):
        pipe.run("the river", **{name: value})


def test_sampling_specific_checks(pipe):
    with pytest.raises(ValueError, match="temperature"):
        pipe.run("the river", do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        pipe.run("the river", do_sample=True, temperature=-1.0)
    # values that only matter when sampling are ignored by greedy search (as in transformers)
    assert pipe.run("the river", temperature=-1.0, max_new_tokens=2)[0].new_tokens[0] <= 2


def test_extreme_but_valid_values_still_work(pipe):
    cases = [dict(top_k=10**12), dict(no_repeat_ngram_size=10**9), dict(min_length=10**9), dict(min_new_tokens=10**6),
             dict(repetition_penalty=1e30), dict(repetition_penalty=1e-30), dict(num_beams=20, num_return_sequences=20),
             dict(num_beams=100), dict(do_sample=True, top_p=1e-300), dict(do_sample=True, temperature=1e30),
             dict(do_sample=True, top_k=1, num_return_sequences=5), dict(seed=2**63, do_sample=True),
             dict(length_penalty=-50.0, num_beams=3), dict(no_repeat_ngram_size=1, max_new_tokens=31)]
    for kw in cases:
        kw = {"max_new_tokens": 4, **kw}
        (r,) = pipe.run("the river", **kw)
        assert all(1 <= n <= kw["max_new_tokens"] for n in r.new_tokens), kw


def test_unknown_task_and_bad_pipeline_arguments(ckpt):
    with pytest.raises(ValueError, match="unsupported task 'summarization'"):
        pipeline("summarization", model=ckpt[0])
    with pytest.raises(ValueError, match="pass model="):
        pipeline("text2text-generation")
    with pytest.raises(ValueError, match="batch_size"):
        pipeline(model=ckpt[0], batch_size=0)
    with pytest.raises(ValueError, match="unknown dtype"):
        pipeline(model=ckpt[0], dtype="int4")
    with pytest.raises(ValueError, match="unknown quantize"):
        pipeline(model=ckpt[0], quantize="2bit")


@pytest.mark.parametrize("name, message", [
    ("{tmp}/no-such-folder", "neither a checkpoint folder nor a hub id"),
    ("nobody-here/no-such-model", "cannot be downloaded.*HF_HUB_OFFLINE=1"),
    ("../../etc", "not a checkpoint folder|neither a checkpoint folder"),
    ("/etc", "has no config.json"),
    ("", "no checkpoint given"),
    ("   ", "no checkpoint given"),
    ("a/b/c/../../../..", "not a checkpoint folder|neither a checkpoint folder"),
    ("./no-such-folder", "neither a checkpoint folder nor a hub id"),
    ("../no-such-folder", "neither a checkpoint folder nor a hub id"),
    ("owner--x/name", "not a valid hub id"),
], ids=["missing", "hub-offline", "dotdot-etc", "etc", "empty", "blank", "dotdot-chain", "dot-slash", "dotdot-slash",
        "double-dash"])
def test_missing_hub_and_odd_paths_are_checkpoint_errors(tmp_path, name, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # relative names resolve here, never into the repository
    with pytest.raises(CheckpointError, match=message):
        pipeline(model=name.format(tmp=tmp_path))


def test_nothing_saved_was_changed_by_the_failures_above(ckpt):
    folder, before = ckpt
    assert _digest(folder) == before


# --- pipeline.py: fixed by its author, kept as regression tests ----------------------------
def test_bytes_or_none_input_names_the_real_type(pipe):
    with pytest.raises(ValueError, match="bytes"):
        pipe.run(b"the river")
    with pytest.raises(ValueError, match="NoneType|None"):
        pipe.run(None)


# ========================================================================================
# 2. Bad input at the CLI layers: python -m bertgen generate, python -m evaluation run
# ========================================================================================
def _bertgen(args, stdin: bytes | None = None, capsys=None, monkeypatch=None, errors="surrogateescape"):
    """`python -m bertgen` in process; stdin decoded as Python does for a pipe under a UTF-8 locale."""
    from bertgen.__main__ import main

    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8", errors=errors))
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(code, err, *needles):
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle.lower() in err.lower(), (needle, err)


@pytest.mark.parametrize("args, stdin, needle", [
    (["--max-new-tokens", "3", ""], None, "empty"),
    (["--max-new-tokens", "3"], b"the river\n\nfarmers\n", "line 2 is empty"),
    (["--max-new-tokens", "3"], b"caf\xe9 river\n", "UTF-8"),
    (["--max-new-tokens", "3"], b"a\xed\xa0\x80b\n", "UTF-8"),
    (["--temperature", "nan", "--do-sample", "x"], None, "temperature"),
    (["--temperature", "inf", "--do-sample", "x"], None, "temperature"),
    (["--top-p", "2", "x"], None, "top_p"),
    (["--num-beams", "0", "x"], None, "num_beams"),
    (["--seed", "-1", "x"], None, "seed"),
    (["--max-new-tokens", "100000", "x"], None, "max_new_tokens"),
    (["--repetition-penalty", "-1", "x"], None, "repetition_penalty"),
    (["--num-return-sequences", "3", "x"], None, "num_return_sequences"),
    (["--batch-size", "0", "x"], None, "batch_size"),
], ids=["empty-arg", "blank-line", "latin1", "encoded-surrogate", "temp-nan", "temp-inf", "top-p", "beams",
        "seed", "too-long", "rep-pen", "nret", "batch"])
def test_bertgen_cli_bad_input_is_one_line(ckpt, capsys, monkeypatch, args, stdin, needle):
    code, out, err = _bertgen(["generate", "--model", str(ckpt[0]), *args], stdin, capsys, monkeypatch)
    _one_line_error(code, err, needle)
    assert out == ""


@pytest.mark.parametrize("model, needle", [
    ("{tmp}/missing", "neither a checkpoint folder"), ("nobody-here/no-such-model", "cannot be downloaded"),
    ("../../etc", "checkpoint folder"), ("", "no checkpoint given"),
], ids=["missing", "hub-offline", "dotdot-etc", "empty"])
def test_bertgen_cli_bad_model_is_one_line(tmp_path, capsys, monkeypatch, model, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = _bertgen(["generate", "--model", model.format(tmp=tmp_path), "x"], None, capsys, monkeypatch)
    _one_line_error(code, err, needle)


def test_bertgen_cli_odd_but_valid_stdin(ckpt, capsys, monkeypatch):
    lines = ["a\x00b", "東京 😀", "שלום עולם", "river " * 200_000, "\ufeffthe river"]  # one ~1.2 MB line
    code, out, err = _bertgen(["generate", "--model", str(ckpt[0]), "--max-new-tokens", "2", "--json"],
                              "\n".join(lines).encode() + b"\n", capsys, monkeypatch)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["input"] for r in records] == lines
    assert [r["truncated"] for r in records] == [False, False, False, True, False]


def test_bertgen_cli_one_output_per_input_line(ckpt, capsys, monkeypatch):
    code, out, err = _bertgen(["generate", "--model", str(ckpt[0]), "--max-new-tokens", "2", "--json"],
                              "a\u2028b\nc\x0bd\ne\x85f\n".encode(), capsys, monkeypatch)
    assert code == 0, err
    assert [json.loads(line)["input"] for line in out.splitlines()] == ["a\u2028b", "c\x0bd", "e\x85f"]


def test_bertgen_cli_invalid_utf8_stdin_in_a_real_process(ckpt):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "bertgen", "generate", "--model", str(ckpt[0]), "--max-new-tokens",
                           "2"], input=b"fine\ncaf\xe9\n", capture_output=True, env=env, timeout=120)
    err = done.stderr.decode("utf-8", "replace")
    _one_line_error(done.returncode, err, "UTF-8")
    assert done.stdout == b""  # nothing half-printed before the error


def test_bertgen_cli_names_the_bad_stdin_line(ckpt, capsys, monkeypatch):
    code, _, err = _bertgen(["generate", "--model", str(ckpt[0]), "--max-new-tokens", "2"],
                            b"fine\nalso fine\ncaf\xe9\n", capsys, monkeypatch)
    _one_line_error(code, err, "line 3", "UTF-8")


def _evaluation(args, capsys):
    from evaluation.__main__ import main

    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "ok.tsv").write_text("The river floods and farmers plant rice .\tThe river floods . <::::> Farmers plant "
                              "rice .\n", encoding="utf-8")
    (d / "latin1.tsv").write_bytes(b"ok .\tok . <::::> ok .\ncaf\xe9 river .\ta . <::::> b .\n")
    (d / "binary.tsv").write_bytes(bytes(range(256)) * 40)
    (d / "binary.jsonl").write_bytes(b'{"source": "a", "target": "b"}\n' + bytes(range(256)) * 40)
    (d / "fake.parquet").write_bytes(b"this is not parquet at all" * 100)
    (d / "cols.jsonl").write_text('{"foo": "a", "bar": "b"}\n')
    (d / "types.jsonl").write_text('{"source": "a", "target": 5}\n')
    (d / "nulls.jsonl").write_text('{"source": null, "target": "b"}\n')
    (d / "empty.jsonl").write_bytes(b"")
    (d / "blank.jsonl").write_text("\n  \n\n")
    (d / "list.json").write_text("[1, 2, 3]")
    (d / "notjson.jsonl").write_text("{this is not json\n")
    (d / "truncated-utf8.jsonl").write_bytes('{"source": "東'.encode()[:-1])
    return d


@pytest.mark.parametrize("args, needle", [
    (["--benchmark", "no-such-benchmark", "--data-files", "ok.tsv"], "unknown benchmark 'no-such-benchmark'"),
    (["--benchmark", "wikisplit", "--data-files", "latin1.tsv"], "latin1.tsv, line 2: not valid UTF-8"),
    (["--benchmark", "wikisplit", "--data-files", "binary.tsv"], "binary file"),
    (["--benchmark", "wikisplit", "--data-files", "binary.jsonl"], "line 2: a NUL byte"),
    (["--benchmark", "wikisplit", "--data-files", "fake.parquet"], "not a Parquet file"),
    (["--benchmark", "wikisplit", "--data-files", "cols.jsonl"], "needs columns complex_sentence"),
    (["--benchmark", "wikisplit", "--data-files", "types.jsonl"], "row 1: empty or non-text"),
    (["--benchmark", "wikisplit", "--data-files", "nulls.jsonl"], "row 1: empty or non-text"),
    (["--benchmark", "wikisplit", "--data-files", "empty.jsonl"], "is empty"),
    (["--benchmark", "wikisplit", "--data-files", "blank.jsonl"], "only blank lines"),
    (["--benchmark", "wikisplit", "--data-files", "list.json"], "needs columns"),
    (["--benchmark", "wikisplit", "--data-files", "notjson.jsonl"], "could not read"),
    (["--benchmark", "wikisplit", "--data-files", "truncated-utf8.jsonl"], "ends inside a character"),
    (["--benchmark", "wikisplit", "--data-files", "missing.tsv"], "does not exist"),
    (["--benchmark", "wikisplit", "--data-files", "/etc/passwd"], "must all be one of"),
    (["--benchmark", "wikisplit", "--data-files", "ok.tsv", "--max-data-mb", "0.00001"], "over the 10 bytes limit"),
    (["--benchmark", "wikisplit", "--data-files", "ok.tsv", "--limit", "0"], "limit"),
    (["--benchmark", "gigaword"], "offline"),
    (["--benchmark", "wikisplit", "--data-files", "ok.tsv", "--columns", "broken"], "--columns"),
], ids=["benchmark", "latin1", "binary-tsv", "binary-jsonl", "fake-parquet", "columns", "types", "nulls", "empty",
        "blank", "json-list", "not-json", "cut-utf8", "missing", "etc-passwd", "too-big", "limit-0", "hub-offline",
        "columns-flag"])
def test_evaluation_cli_bad_data_is_one_line(data_dir, tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(data_dir)
    code, out, err = _evaluation(["run", "--model", "copy", "--output", str(tmp_path / "runs"), "--quiet", *args],
                                 capsys)
    assert code == 2 and out == "", err
    last = err.strip().splitlines()[-1]  # datasets may log a line of its own first
    assert last.startswith("error: ") and needle.lower() in last.lower(), err
    assert not list((tmp_path / "runs").glob("*.json"))  # refused before a run record exists


@pytest.mark.parametrize("args, needle", [
    (["--model", "{ckpt}", "--do-sample", "--temperature", "nan"], "temperature"),
    (["--model", "{ckpt}", "--num-beams", "-3"], "num_beams"),
    (["--model", "{ckpt}", "--top-p", "0"], "top_p"),
    (["--model", "{ckpt}", "--max-new-tokens", "1000"], "max_new_tokens"),
    (["--model", "{tmp}/missing"], "is not a checkpoint folder"),
    (["--model", "nobody-here/no-such-model"], "cannot be downloaded"),
    (["--model", "../../etc"], "not a checkpoint folder"),
], ids=["temp-nan", "beams", "top-p", "too-long", "missing", "hub-offline", "dotdot-etc"])
def test_evaluation_cli_bad_model_or_settings_is_one_line(ckpt, data_dir, tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    args = [a.format(ckpt=ckpt[0], tmp=tmp_path) for a in args]
    code, out, err = _evaluation(["run", "--benchmark", "wikisplit", "--data-files", str(data_dir / "ok.tsv"),
                                  "--output", str(tmp_path / "runs"), "--quiet", *args], capsys)
    assert code == 2 and out == "", err
    assert err.strip().splitlines()[-1].startswith("error: ") and needle.lower() in err.lower(), err


def test_failed_evaluations_leave_earlier_runs_untouched(ckpt, data_dir, tmp_path, capsys):
    from evaluation.runs import load_runs

    runs = tmp_path / "runs"
    base = ["run", "--benchmark", "wikisplit", "--data-files", str(data_dir / "ok.tsv"), "--output", str(runs), "--quiet"]
    assert _evaluation([*base, "--model", "copy"], capsys)[0] == 0
    before = _digest(runs)
    for extra in (["--model", str(ckpt[0]), "--num-beams", "0"], ["--model", "copy", "--limit", "-1"],
                  ["--model", str(ckpt[0]), "--do-sample", "--temperature", "inf"]):
        assert _evaluation([*base, *extra], capsys)[0] == 2
    assert _evaluation(["run", "--model", "copy", "--benchmark", "wikisplit", "--data-files",
                        str(data_dir / "binary.tsv"), "--output", str(runs), "--quiet"], capsys)[0] == 2
    assert _digest(runs) == before and len(load_runs(runs)) == 1


# ========================================================================================
# 3. Hostile files
# ========================================================================================
def _safetensors_parts(path: Path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write_safetensors(path: Path, header, body: bytes, header_len: int | None = None, raw_header: bytes | None = None):
    data = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(data) if header_len is None else header_len) + data + body)


def _lie(kind: str):
    def edit(header, body, first, second):
        h = json.loads(json.dumps(header))
        if kind == "offsets-beyond":
            h[first]["data_offsets"] = [0, 10**12]
        elif kind == "offsets-reversed":
            h[first]["data_offsets"] = [8, 4]
        elif kind == "offsets-overlap":
            h[first]["data_offsets"] = h[second]["data_offsets"]
        elif kind == "shape-huge":
            h[first]["shape"] = [10**6, 10**6]
        elif kind == "shape-negative":
            h[first]["shape"] = [-1]
        elif kind == "dtype-mismatch":
            h[first]["dtype"] = "F64"
        elif kind == "dtype-unknown":
            h[first]["dtype"] = "Q99"
        elif kind == "entry-not-object":
            h[first] = "a string"
        return h
    return edit


@pytest.mark.parametrize("kind", ["header-len-huge", "header-len-past-end", "header-len-zero", "four-bytes", "empty",
                                  "header-not-utf8", "header-not-json", "offsets-beyond", "offsets-reversed",
                                  "offsets-overlap", "shape-huge", "shape-negative", "dtype-mismatch",
                                  "dtype-unknown", "entry-not-object"])
def test_safetensors_with_a_lying_header_is_a_checkpoint_error(folder, kind):
    path = folder / "model.safetensors"
    header, body = _safetensors_parts(path)
    first, second = [k for k in header if k != "__metadata__"][:2]
    if kind == "header-len-huge":
        _write_safetensors(path, header, body, header_len=10**15)
    elif kind == "header-len-past-end":
        _write_safetensors(path, header, body, header_len=len(json.dumps(header)) + len(body) + 100)
    elif kind == "header-len-zero":
        _write_safetensors(path, header, body, header_len=0)
    elif kind == "four-bytes":
        path.write_bytes(b"\x01\x02\x03\x04")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "header-not-utf8":
        _write_safetensors(path, None, body, raw_header=b"\xff" * 24)
    elif kind == "header-not-json":
        _write_safetensors(path, None, body, raw_header=b"{not json at all}")
    else:
        _write_safetensors(path, _lie(kind)(header, body, first, second), body)
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt or truncated safetensors file"):
        bertgen.load(folder)


def _shard(folder: Path, index_name: str = "model.safetensors.index.json"):
    """Splits the folder's weights into two safetensors shards with an index; returns the weight map."""
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(state)
    weight_map = {}
    for i, part in enumerate((keys[:len(keys) // 2], keys[len(keys) // 2:]), 1):
        name = f"model-0000{i}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / index_name).write_text(json.dumps({"weight_map": weight_map}))
    return weight_map


@pytest.mark.parametrize("shard, message", [
    ("../../x.safetensors", "points outside"), ("/etc/passwd", "points outside"), ("sub/x.safetensors", "points outside"),
    ("..", "points outside"), ("", "points outside"), ("model-00009-of-00002.safetensors", "is missing"),
], ids=["dotdot", "absolute", "subfolder", "parent", "empty", "missing"])
def test_shard_index_pointing_outside_the_folder_is_refused(folder, shard, message):
    weight_map = _shard(folder)
    weight_map[next(iter(weight_map))] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=message):
        bertgen.load(folder)


@pytest.mark.parametrize("index", ["[1, 2]", '{"weight_map": [1]}', '{"weight_map": {"a": 5}}', '{"no_map": {}}',
                                   "{not json", '"text"'],
                         ids=["list", "map-is-list", "shard-is-int", "no-map", "not-json", "string"])
def test_malformed_shard_index_is_a_checkpoint_error(folder, index):
    _shard(folder)
    (folder / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match="shard index|weight_map"):
        bertgen.load(folder)


def test_hub_cache_layout_with_symlinked_shards_loads(folder, tmp_path):
    # Fixed here (bertgen/checkpoints.py): the hub cache's snapshot files are symlinks into
    # ../../blobs/, which the old resolve()-based check refused as "outside the checkpoint folder".
    _shard(folder)
    blobs, snapshot = tmp_path / "cache" / "blobs", tmp_path / "cache" / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        blob = blobs / hashlib.sha256(f.name.encode()).hexdigest()
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    reference = bertgen.load(folder)
    model = bertgen.load(snapshot)
    for (k, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['BERTGEN_PWNED']}",))


@pytest.mark.parametrize("layout", ["bin-index", "safetensors-index-to-bin", "pickle-named-safetensors"])
def test_pickles_hidden_behind_a_shard_index_never_run(folder, tmp_path, monkeypatch, layout):
    # tests/test_core.py covers a plain pytorch_model.bin; these hide the pickle behind an index.
    marker = tmp_path / "pwned"
    monkeypatch.setenv("BERTGEN_PWNED", str(marker))
    weight_map = _shard(folder)
    if layout == "bin-index":
        for f in folder.glob("model*.safetensors*"):
            f.unlink()
        torch.save({"x": _Exploit()}, folder / "pytorch_model-00001-of-00001.bin")
        (folder / "pytorch_model.bin.index.json").write_text(
            json.dumps({"weight_map": dict.fromkeys(weight_map, "pytorch_model-00001-of-00001.bin")}))
        message = "refused to unpickle"
    elif layout == "safetensors-index-to-bin":
        torch.save({"x": _Exploit()}, folder / "evil.bin")
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(weight_map, "evil.bin")}))
        message = "refused to unpickle"
    else:
        torch.save({"x": _Exploit()}, folder / "model-00001-of-00002.safetensors")
        message = "corrupt or truncated"
    with pytest.raises(CheckpointError, match=message):
        bertgen.load(folder)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object, got list"), ('"text"', "got str"),
    ("null", "got NoneType"), (b"\xff\xfe\x00\x01", "not valid JSON"), ("", "not valid JSON"),
], ids=["not-json", "list", "string", "null", "binary", "empty"])
def test_config_json_that_is_not_an_object(folder, content, message):
    path = folder / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CheckpointError, match=message):
        bertgen.load(folder)


WRONG_TYPES = [
    ("encoder", "hidden_size", "32", "hidden_size must be an integer"),
    ("encoder", "hidden_size", 32.0, "hidden_size must be an integer"),
    ("decoder", "num_hidden_layers", None, "num_hidden_layers must be an integer"),
    ("decoder", "vocab_size", True, "vocab_size must be an integer"),
    ("encoder", "hidden_act", ["gelu"], "hidden_act"),
    ("encoder", "hidden_dropout_prob", "0.1", "hidden_dropout_prob"),
    ("encoder", "layer_norm_eps", float("nan"), "layer_norm_eps"),
    ("encoder", "initializer_range", "x", "initializer_range"),
    ("decoder", "is_decoder", "no", "is_decoder must be true or false"),
    ("decoder", "tie_word_embeddings", "false", "tie_word_embeddings must be true or false"),
    ("decoder", "eos_token_id", True, "eos_token_id"),
    (None, "tie_encoder_decoder", "yes", "tie_encoder_decoder must be true or false"),
    (None, "pad_token_id", True, "pad_token_id"),
    (None, "decoder_start_token_id", 2.0, "decoder_start_token_id"),
    (None, "model_type", ["x"], "model_type must be a string"),
    (None, "encoder", "x", "encoder section must be a JSON object"),
    (None, "decoder", [1], "decoder section must be a JSON object"),
]


@pytest.mark.parametrize("part, key, value, message", WRONG_TYPES, ids=[f"{p or 'top'}.{k}={v!r}" for p, k, v, _ in WRONG_TYPES])
def test_config_json_with_wrong_types(folder, part, key, value, message):
    # Fixed here (bertgen/config.py): "yes"/"no" strings were taken as booleans (any non-empty
    # string is true), an encoder section that was a string raised a bare ValueError.
    config = json.loads((folder / "config.json").read_text())
    (config[part] if part else config)[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        bertgen.load(folder)


ABSURD_SCRIPT = """
import json, resource, shutil, sys
from pathlib import Path
import bertgen
from bertgen.checkpoints import CheckpointError
src, work = Path(sys.argv[1]), Path(sys.argv[2])
bertgen.load(src)  # warm up: imports, allocator, the small real model
cases = {
    "1024-layers": {"num_hidden_layers": 1024},
    "vocab-10M-hidden-2048": {"vocab_size": 10_000_000, "hidden_size": 2048, "num_attention_heads": 16},
    "hidden-8192-64-layers": {"hidden_size": 8192, "intermediate_size": 32768, "num_hidden_layers": 64,
                              "num_attention_heads": 64},
    "positions-1M": {"max_position_embeddings": 1_048_576},
    "over-the-limits": {"vocab_size": 10**12},
}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for name, change in cases.items():
    folder = work / name
    shutil.copytree(src, folder)
    config = json.loads((folder / "config.json").read_text())
    for part in ("encoder", "decoder"):
        config[part].update(change)
    (folder / "config.json").write_text(json.dumps(config))
    try:
        bertgen.load(folder)
        out[name] = "loaded"
    except CheckpointError as err:
        out[name] = "CheckpointError: " + str(err)[:300]
    except BaseException as err:
        out[name] = type(err).__name__ + ": " + str(err)[:300]
out["maxrss_delta_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(out))
"""


def test_absurd_config_sizes_are_refused_before_allocating(ckpt, tmp_path):
    # Fixed here (bertgen/checkpoints.py): a config within the per-field limits but far larger than
    # its weights (e.g. vocab 10M x hidden 2048 = 82 GB) went on to allocate and died with a bare
    # RuntimeError from the allocator; 1024 tiny layers were built (seconds, ~100 MB) before the
    # key check. Now config size vs stored weights and the key check run before any allocation.
    script = tmp_path / "absurd.py"
    script.write_text(ABSURD_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(script), str(ckpt[0]), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    delta = out.pop("maxrss_delta_mb")
    for name, outcome in out.items():
        assert outcome.startswith("CheckpointError: "), (name, outcome)
        assert "refusing to allocate" in outcome or "does not belong to these weights" in outcome \
            or "outside the sane range" in outcome, (name, outcome)
    assert delta < 100, f"peak memory grew by {delta:.0f} MB while refusing absurd configs"
    assert MAX_PARAMETERS >= 10**9  # the per-config cap is for real models; the weights decide the rest


# --- evaluation data files -----------------------------------------------------------------
def test_huge_evaluation_file_is_refused_before_reading(tmp_path):
    from evaluation.data import MAX_DATA_BYTES, DataError, load_examples

    huge = tmp_path / "huge.jsonl"
    with huge.open("wb") as f:  # sparse: st_size says 1 GiB + 1, nothing is written to disk
        f.truncate(MAX_DATA_BYTES + 1)
    with pytest.raises(DataError, match=r"huge.jsonl is 1,024.0 MiB, over the 1,024.0 MiB limit.*max_bytes="):
        load_examples("wikisplit", data_files=huge)


def test_evaluation_file_size_limit_can_be_raised(tmp_path):
    from evaluation.data import DataError, load_examples

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"source": f"row {i} .", "target": f"row {i} ."}) + "\n" for i in range(50)))
    with pytest.raises(DataError, match="over the 100 bytes limit"):
        load_examples("wikisplit", data_files=path, max_bytes=100)
    assert len(load_examples("wikisplit", data_files=path, max_bytes=10**6)) == 50


def test_evaluation_file_errors_name_the_line(tmp_path):
    from evaluation.data import DataError, load_examples

    path = tmp_path / "late.jsonl"
    good = json.dumps({"source": "a b .", "target": "a b ."}) + "\n"
    path.write_bytes(good.encode() * 40_000 + b'{"source": "caf\xe9", "target": "x"}\n')  # past the first MiB
    with pytest.raises(DataError, match="line 40001: not valid UTF-8"):
        load_examples("wikisplit", data_files=path)


# --- training data (bertgen/data.py, owned by its author) ----------------------------------
# Invalid UTF-8, empty files, wrong column counts and missing columns: tests/test_training.py.
def test_training_reader_refuses_binary_and_non_object_rows(tmp_path):
    from bertgen.data import DataError, read_pairs

    (tmp_path / "bin.jsonl").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_pairs(tmp_path / "bin.jsonl")
    with pytest.raises(DataError, match="line 1: expected a JSON object"):
        read_pairs(tmp_path / "list.jsonl")


def test_training_reader_refuses_null_values(tmp_path):
    # was a bug: a null source or target trained on the word 'None'
    from bertgen.data import DataError, pairs_from_dataset, read_pairs

    (tmp_path / "null.jsonl").write_text('{"source": "a b .", "target": null}\n')
    with pytest.raises(DataError, match="line 1, key 'target': expected text, got null"):
        read_pairs(tmp_path / "null.jsonl")
    (tmp_path / "list.jsonl").write_text('{"source": ["a"], "target": "b"}\n')
    with pytest.raises(DataError, match="got list"):
        read_pairs(tmp_path / "list.jsonl")
    (tmp_path / "num.jsonl").write_text('{"source": 1990, "target": "in 1990 ."}\n')
    assert read_pairs(tmp_path / "num.jsonl") == [("1990", "in 1990 .")]
    with pytest.raises(DataError, match="dataset row 1"):
        pairs_from_dataset([{"source": "a", "target": "b"}, {"source": None, "target": "b"}])


# ========================================================================================
# 4. Fuzz (hypothesis)
# ========================================================================================
# tests/test_tokenization.py already checks ids and text against transformers and the exact
# round trip over known characters. Added here: any text never crashes, ids stay in the
# vocabulary, any in-vocabulary ids decode, and invalid Unicode is a clear ValueError.
ANY_CHAR_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=60) | st.lists(
    st.sampled_from(["\x00", "\x1b", "\u200b", "\u202e", "\ufeff", "😀", "東", " ", "\n", "<::::>", "<s>", "a"]),
    max_size=30).map("".join)


@pytest.fixture(scope="module")
def tok(ckpt):
    return load_tokenizer(ckpt[0])


@fuzz(60)
@given(text=ANY_CHAR_TEXT, limit=st.integers(1, 40), add=st.booleans())
def test_fuzz_tokenizer_any_text(tok, text, limit, add):
    ids = tok.encode(text, add_special_tokens=add)
    assert all(isinstance(i, int) and 0 <= i < len(tok) for i in ids)
    assert isinstance(tok.decode(ids), str) and isinstance(tok.decode(ids, skip_special_tokens=False), str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = tok([text, "the river"], max_length=limit, add_special_tokens=add)
    assert batch["input_ids"].shape[1] <= max(limit, 1)
    assert batch["attention_mask"][0].sum() == min(len(ids), limit)


@fuzz(40)
@given(ids=st.lists(st.integers(0, 63), max_size=40))
def test_fuzz_tokenizer_any_ids_decode(tok, ids):
    ids = [i % len(tok) for i in ids]
    assert isinstance(tok.decode(ids), str)
    assert len(tok.convert_ids_to_tokens(ids)) == len(ids)


@fuzz(30)
@given(before=st.text(max_size=10), surrogate=st.characters(categories=("Cs",)), after=st.text(max_size=10))
def test_fuzz_tokenizer_lone_surrogates_are_value_errors(tok, before, surrogate, after):
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode(before + surrogate + after)


# --- GenerationSettings: accepts exactly the valid combinations ------------------------------
JUNK = st.sampled_from([float("nan"), float("inf"), float("-inf"), "1", "", True, False, [1], {"a": 1}, 1.5, -1])


def _maybe_junk(valid):
    return st.one_of(valid, valid, valid, JUNK)


SETTING_VALUES = {
    "max_new_tokens": _maybe_junk(st.none() | st.integers(-2, 40)),
    "max_length": _maybe_junk(st.none() | st.integers(0, 40)),
    "min_length": _maybe_junk(st.integers(-2, 20)),
    "min_new_tokens": _maybe_junk(st.integers(-2, 20)),
    "do_sample": st.one_of(st.booleans(), st.booleans(), st.sampled_from([0, 1, "yes", None])),
    "num_beams": _maybe_junk(st.integers(-1, 8)),
    "length_penalty": _maybe_junk(st.floats(-5, 5) | st.integers(-3, 3)),
    "early_stopping": st.sampled_from([True, False, "never", "always", None, 1]),
    "num_return_sequences": _maybe_junk(st.integers(-1, 6)),
    "no_repeat_ngram_size": _maybe_junk(st.integers(-1, 5)),
    "repetition_penalty": _maybe_junk(st.floats(-2, 5)),
    "temperature": _maybe_junk(st.floats(-2, 10)),
    "top_k": _maybe_junk(st.integers(-2, 100)),
    "top_p": _maybe_junk(st.floats(-0.5, 1.5)),
    "seed": _maybe_junk(st.none() | st.integers(-5, 2**32)),
    "decoder_start_token_id": _maybe_junk(st.none() | st.integers(-2, 100)),
    "eos_token_id": _maybe_junk(st.none() | st.integers(-2, 100) | st.lists(st.integers(-1, 100), max_size=3)),
    "pad_token_id": _maybe_junk(st.none() | st.integers(-2, 100)),
    "required_token_id": _maybe_junk(st.none() | st.integers(-2, 100)),
}


def _is_int(v, low, optional=False):
    return (optional and v is None) or (type(v) is int and v >= low)


def _is_real(v):
    return type(v) in (int, float) and math.isfinite(v)


def expected_valid(kw: dict) -> bool:
    """The documented rules of GenerationSettings, written independently of its code."""
    g = lambda name, default: kw.get(name, default)  # noqa: E731
    eos = g("eos_token_id", None)
    ok = (_is_int(g("max_new_tokens", None), 1, True) and _is_int(g("max_length", None), 2, True)
          and all(_is_int(g(n, 0), 0) for n in ("min_length", "min_new_tokens", "no_repeat_ngram_size"))
          and _is_int(g("top_k", 50), 0) and _is_int(g("num_beams", 1), 1) and _is_int(g("num_return_sequences", 1), 1)
          and _is_int(g("seed", None), 0, True) and _is_int(g("decoder_start_token_id", None), 0, True)
          and _is_int(g("pad_token_id", None), 0, True) and _is_int(g("required_token_id", None), 0, True)
          and (_is_int(eos, 0, True) or (type(eos) is list and eos != [] and all(_is_int(e, 0) for e in eos)))
          and type(g("do_sample", False)) is bool
          and (type(g("early_stopping", False)) is bool or g("early_stopping", False) == "never")
          and all(_is_real(g(n, 1.0)) for n in ("length_penalty", "repetition_penalty", "temperature", "top_p")))
    if not ok:
        return False
    beams, returned, sample = g("num_beams", 1), g("num_return_sequences", 1), g("do_sample", False)
    return (g("repetition_penalty", 1.0) > 0 and (not sample or g("temperature", 1.0) > 0)
            and 0 < g("top_p", 1.0) <= 1 and not (beams == 1 and not sample and returned > 1)
            and not (beams > 1 and returned > beams))


@fuzz(60)
@given(st.fixed_dictionaries({}, optional=SETTING_VALUES))
def test_fuzz_settings_accept_exactly_the_valid_combinations(kw):
    if expected_valid(kw):
        s = GenerationSettings(**kw)
        assert s.new_tokens >= 1
    else:
        with pytest.raises(ValueError):
            GenerationSettings(**kw)


@fuzz(40)
@given(name=st.sampled_from(sorted(SETTING_VALUES)), value=JUNK)
def test_fuzz_invalid_settings_through_the_pipeline_are_value_errors(pipe, name, value):
    assume(not expected_valid({name: value}) and value is not None)
    with pytest.raises(ValueError):
        pipe.run("the river", **{name: value})


@st.composite
def valid_settings(draw):
    sample = draw(st.booleans())
    beams = draw(st.integers(1, 4))
    kw = {"max_new_tokens": draw(st.integers(1, 12)), "do_sample": sample, "num_beams": beams,
          "min_new_tokens": draw(st.integers(0, 8)), "min_length": draw(st.integers(0, 8)),
          "no_repeat_ngram_size": draw(st.integers(0, 3)), "repetition_penalty": draw(st.floats(0.5, 3)),
          "length_penalty": draw(st.floats(-2, 2)), "early_stopping": draw(st.sampled_from([True, False, "never"])),
          "seed": draw(st.integers(0, 2**31))}
    if sample:
        kw.update(temperature=draw(st.floats(0.1, 5)), top_k=draw(st.integers(0, 80)), top_p=draw(st.floats(0.05, 1)))
        kw["num_return_sequences"] = draw(st.integers(1, beams if beams > 1 else 3))
    else:
        kw["num_return_sequences"] = draw(st.integers(1, beams))
    return kw


@fuzz(40)
@given(kw=valid_settings(), texts=st.lists(st.sampled_from(["the river", "東京 😀", "farmers plant rice on its banks",
                                                             "a\x00b", "river " * 40]), min_size=1, max_size=3))
def test_fuzz_valid_settings_generate_within_bounds(pipe, kw, texts):
    # found by this test, xfail'd below (test_beam_sampling_returns_no_placeholder_hypotheses)
    assume(not (kw["do_sample"] and kw["num_beams"] > 1 and kw["max_new_tokens"] == 1))
    results = pipe.run(texts, **kw)
    assert len(results) == len(texts)
    lowest = min(max(kw["min_new_tokens"] + 1, kw["min_length"], 1), kw["max_new_tokens"])
    for r in results:
        assert len(r.texts) == len(r.new_tokens) == len(r.scores) == kw["num_return_sequences"]
        for n, logprobs, score in zip(r.new_tokens, r.token_logprobs, r.scores):
            assert lowest <= n <= kw["max_new_tokens"], (n, kw)
            assert len(logprobs) == n and not math.isnan(score)


# --- generation.py: fixed (regression tests), and one documented limitation -----------------
@pytest.mark.parametrize("kw", [dict(num_beams=10**9), dict(do_sample=True, num_return_sequences=10**9)],
                         ids=["beams", "samples"])
def test_huge_beam_or_sample_counts_are_refused(kw):
    with pytest.raises(ValueError, match="num_beams|num_return_sequences"):
        GenerationSettings(**kw)


def test_seed_beyond_64_bits_is_refused_up_front():
    with pytest.raises(ValueError, match="seed"):
        GenerationSettings(seed=2**64, do_sample=True)


@pytest.mark.parametrize("beams", [1, 2])
def test_tiny_temperature_samples_without_crashing(pipe, beams):
    (r,) = pipe.run("the river", do_sample=True, temperature=1e-300, num_beams=beams, max_new_tokens=3, seed=0)
    assert 1 <= r.new_tokens[0] <= 3


def test_large_length_penalty_is_refused_or_works(pipe):
    try:
        (r,) = pipe.run("the river", num_beams=3, length_penalty=1000.0, max_new_tokens=5)
    except ValueError as err:
        assert "length_penalty" in str(err)
    else:
        assert 1 <= r.new_tokens[0] <= 5


def test_beam_sampling_returns_no_placeholder_hypotheses(pipe):
    """top_k=1 leaves 2 tokens with non-zero probability, but 3 outputs are asked for in 1 step:
    the third is a real 1-token hypothesis scored -inf, never an empty slot (score -1e9)."""
    (r,) = pipe.run("the river", do_sample=True, num_beams=3, num_return_sequences=3, top_k=1, max_new_tokens=1, seed=0)
    assert r.new_tokens == [1, 1, 1], (r.new_tokens, r.scores)
    assert r.scores[0] > -1e8 and r.scores == sorted(r.scores, reverse=True)
    assert all(s > -1e8 or s == -math.inf for s in r.scores), r.scores


# ========================================================================================
# 5. Faults: interrupted work and damaged results
# ========================================================================================
# kill -9 in the middle of an evaluation run, then resume: tests/test_evaluation.py
# (test_killed_run_resumes_to_identical_results); of a training run: tests/test_training.py.
def test_truncated_run_record_still_loads_the_others_and_resumes(data_dir, tmp_path):
    from evaluation.runner import COPY, run_evaluation
    from evaluation.runs import find_run, leaderboard, load_runs

    out = tmp_path / "runs"
    second = data_dir / "second.tsv"
    second.write_text("A b and c d .\tA b . <::::> C d .\nE f and g h .\tE f . <::::> G h .\n", encoding="utf-8")
    keep = run_evaluation(COPY, "wikisplit", data_files=data_dir / "ok.tsv", output_dir=out, show_progress=False)
    cut = run_evaluation(COPY, "wikisplit", data_files=second, output_dir=out, show_progress=False)
    raw = cut.record_path.read_bytes()
    cut.record_path.write_bytes(raw[: len(raw) // 2])  # a record torn half-way (e.g. a copy interrupted)
    predictions = cut.predictions_path.read_bytes()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = load_runs(out)
        board = leaderboard(runs)
        found = find_run(out, keep.run_id[:20])
    assert [r.run_id for r in runs] == [keep.run_id]
    assert any(cut.run_id in str(w.message) and "skipping" in str(w.message) for w in caught)
    assert list(board["run_id"]) == [keep.run_id] and found.run_id == keep.run_id

    with warnings.catch_warnings(record=True) as caught:  # rerunning rebuilds the record ...
        warnings.simplefilter("always")
        again = run_evaluation(COPY, "wikisplit", data_files=second, output_dir=out, show_progress=False)
    assert any("afresh" in str(w.message) for w in caught)
    assert again.run_id == cut.run_id and again.status == "complete" and again.num_done == 2
    assert cut.predictions_path.read_bytes() == predictions  # ... from the kept predictions, none redone
    assert again.metrics == cut.metrics
    assert sorted(r.run_id for r in load_runs(out)) == sorted([keep.run_id, cut.run_id])


def test_an_interrupted_save_leaves_the_old_checkpoint_whole(ckpt, tmp_path, monkeypatch):
    # Fixed here (bertgen/checkpoints.py, config.py): save() wrote config.json first, in place, so
    # dying while writing the weights of a *different* model left a new config beside old weights.
    from bertgen.config import BertGenerationConfig, EncoderDecoderConfig

    folder = Path(shutil.copytree(ckpt[0], tmp_path / "ckpt"))
    before = _digest(folder)
    enc = BertGenerationConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=32)
    other = bertgen.EncoderDecoderModel(EncoderDecoderConfig(encoder=enc, decoder=enc.as_decoder()))

    def dying_save_file(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt  # Ctrl-C, or the process killed, half-way through the weights

    monkeypatch.setattr("bertgen.checkpoints.save_file", dying_save_file)
    with pytest.raises(KeyboardInterrupt):
        bertgen.save(other, folder)
    assert _digest(folder) == before and not list(folder.glob("*.tmp"))
    monkeypatch.undo()
    assert isinstance(bertgen.load(folder), bertgen.EncoderDecoderModel)
    bertgen.save(other, folder)  # and a save that completes replaces it
    assert bertgen.load(folder).config.encoder.num_hidden_layers == 3
