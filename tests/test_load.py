"""The app layer under load and abuse (docs/RELIABILITY.md, "App layer"): concurrent gradio_client
users, a full queue, switching models under a small cache bound, bad input through the endpoints
in hosted mode (any hub id allowed), hostile uploads, and a damaged results folder.

Runs against the app launched in this process on 127.0.0.1, with the bundled
`wikisplit-fusion-small` / `-split-small` checkpoints when present, else tiny random ones. The full-size
load run is `python benchmarks/load_app.py --users 16 --requests 5`. Nothing here asserts time."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

import ui
from bertgen import tasks
from ui import models

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import load_app  # noqa: E402

from conftest import make_tiny_spm_checkpoint  # noqa: E402

BUNDLED = all(tasks.checkpoint_info(n) is not None and tasks.checkpoint_info(n).available_offline()
              for n in ("wikisplit-fusion-small", "wikisplit-split-small"))
GOOD_TEXT = load_app.TEXTS[0]
MAX_NEW = 6


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    if not BUNDLED:
        for name, seed in (("tiny-a", 0), ("tiny-b", 1)):
            make_tiny_spm_checkpoint(root / "models" / name, seed=seed)
    else:
        (root / "models").mkdir()
    old = os.environ.get("GRADIO_TEMP_DIR")  # Gradio reads it while serving (which uploads are ours)
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    yield root
    if old is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = old


@pytest.fixture(scope="module")
def names(work):
    return ("wikisplit-fusion-small", "wikisplit-split-small") if BUNDLED else ("local:tiny-a", "local:tiny-b")


@pytest.fixture(scope="module")
def fresh_cache():
    """The model cache is process-wide: start these tests with one bound by their own settings."""
    old = models._CACHE
    models._CACHE = None
    yield
    models._CACHE = old


def _launch(work, sub, **changes):
    settings = ui.Settings(models_dir=work / "models", runs_dir=work / sub / "runs", max_input_chars=400,
                           max_new_tokens=16, max_eval_examples=5, **changes)
    return settings, load_app.launch(settings)


@pytest.fixture(scope="module")
def app(work, fresh_cache, tmp_path_factory):
    """Hosted mode: any owner/name hub id may be typed; uploads capped at 64 KB; the cache bound
    fits one bundled model (19 MB in float32), so switching evicts."""
    settings, demo = _launch(work, "hosted", allow_any_hub_id=True, max_file_size="64kb",
                             cache_mb=25 if BUNDLED else 1)
    old_tempdir = tempfile.tempdir  # gradio_client downloads land in the temp dir
    tempfile.tempdir = str(tmp_path_factory.mktemp("downloads"))
    try:
        yield settings, demo, Client(demo.local_url, verbose=False, download_files=tempfile.tempdir)
    finally:
        tempfile.tempdir = old_tempdir
        demo.close()


FIELDS = ["strategy", "num_beams", "length_penalty", "no_repeat_ngram_size", "min_new_tokens", "max_new_tokens",
          "temperature", "top_k", "top_p", "seed", "num_return_sequences"]


def generate(client, checkpoint, text=GOOD_TEXT, task="sentence-fusion", **changes):
    values = load_app.generate_values(MAX_NEW)
    for name, value in changes.items():
        values[FIELDS.index(name)] = value
    if any(isinstance(v, float) and not math.isfinite(v) for v in values) or re.search("[\ud800-\udfff]", text):
        return raw_generate(client.src, [task, checkpoint, text, *values])
    return client.predict(task, checkpoint, text, *values, api_name="/generate")


def raw_generate(url: str, data: list):
    """gradio_client refuses to send NaN/inf (not JSON); a raw HTTP client can (json.dumps writes
    NaN, the server's json.loads reads it). Raises AppError with the server's message."""
    from gradio_client.exceptions import AppError
    url = url.rstrip("/") + "/gradio_api/call/generate"
    event = httpx.post(url, content=json.dumps({"data": data}), headers={"content-type": "application/json"},
                       timeout=30).json()["event_id"]
    with httpx.stream("GET", f"{url}/{event}", timeout=60) as response:
        body = response.read().decode()
    kind = re.findall(r"^event: (\w+)", body, re.M)[-1]
    payload = json.loads(body.rsplit("data:", 1)[1])
    if kind == "error":
        raise AppError(str(payload.get("error") if isinstance(payload, dict) else payload))
    return payload


def still_serves(client, names):
    out = generate(client, names[0])
    assert "tokens/s" in out[2]


# ----------------------------------------------------------------------------------------
# Load
# ----------------------------------------------------------------------------------------
def test_concurrent_users_all_complete(app, names):
    settings, demo, client = app
    generate(client, names[0])  # load the model first: measure serving, not loading
    result = load_app.run_load(demo.local_url, names[0], users=8, requests=2, max_new_tokens=MAX_NEW,
                               deadline_s=60)
    print("\n" + result.markdown())
    assert result.outcomes == {"ok": 16}, result.outcomes
    assert result.served_after
    assert result.rss_after_mb - result.rss_before_mb < 300  # no per-request growth to speak of


def test_a_full_queue_is_a_clear_busy_message(work, names, fresh_cache):
    settings, demo = _launch(work, "small-queue", queue_size=2, cache_mb=64)
    try:
        Client(demo.local_url, verbose=False).predict("sentence-fusion", names[0], GOOD_TEXT,
                                                      *load_app.generate_values(MAX_NEW), api_name="/generate")
        result = load_app.run_load(demo.local_url, names[0], users=8, requests=2, max_new_tokens=MAX_NEW,
                                   queue_size=2, deadline_s=60)
        print("\n" + result.markdown())
        assert set(result.outcomes) <= {"ok", "busy"}, result.outcomes
        assert result.total == 16 and result.outcomes.get("ok", 0) >= 2
        assert result.outcomes.get("busy", 0) >= 1  # 8 users at once, room for 2
        assert result.served_after
    finally:
        demo.close()


def test_switching_models_under_load_stays_under_the_cache_bound(app, names):
    settings, demo, client = app
    cache = models.cache(settings)
    limit = cache.limit_bytes
    if not BUNDLED:  # tiny models: a bound that fits one of them
        one = cache.get(models.resolve(names[0], settings), settings.device, settings.dtype).bytes
        cache.limit_bytes = limit = one + one // 2
    seen, stop = [], threading.Event()

    def watch():
        for _ in range(20_000):  # bounded; ~0.02 s apart
            seen.append((sum(i.bytes for i in cache.items()), len(cache.items())))
            if stop.wait(0.02):
                break

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = load_app.run_load(demo.local_url, names[0], users=6, requests=3, max_new_tokens=MAX_NEW,
                                   checkpoints=list(names), deadline_s=60)
        message, info, _ = client.predict(names[1], "float16", api_name="/load_model")  # a third key
    finally:
        stop.set()
        watcher.join(5)
    print("\n" + result.markdown())
    assert result.outcomes == {"ok": 18}, result.outcomes
    assert result.served_after and "Loaded" in message
    assert max(b for b, _ in seen) <= limit and max(n for _, n in seen) == 1
    reported = re.search(r"model cache ([\d,.]+) MB of ([\d,]+) MB", info)
    assert reported and float(reported.group(1).replace(",", "")) <= float(reported.group(2).replace(",", ""))


# ----------------------------------------------------------------------------------------
# Bad input through the endpoints (what tests/test_app.py does not already send)
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "A\x00B . <::::> C\x1b[31m D \x7f\x85 .", "東京 は 大きい 😀👍🏽 . <::::> مرحبا \u202eשלום\u202c .",
    "e\u0301\u0301\u0301 \ufeff . <::::> \U0001d400 .",
])
def test_odd_text_is_answered(app, names, text):
    out = generate(app[2], names[0], text=text)
    assert "tokens/s" in out[2]


@pytest.mark.parametrize("kwargs", [dict(min_new_tokens=10**12), dict(top_k=10**12, strategy="sampling", seed=7),
                                    dict(seed=2**63, strategy="sampling"), dict(no_repeat_ngram_size=6)])
def test_extreme_but_valid_values_are_answered(app, names, kwargs):
    out = generate(app[2], names[0], **kwargs)
    assert f"{MAX_NEW} new tokens" in out[2]


@pytest.mark.parametrize("kwargs, message", [
    (dict(text="x" * 2**20), r"(?i)at most 400|max.*length|too long"),
    (dict(text="word\ud800 ."), r"(?i)surrogate|utf-8|unicode|encod"),
    (dict(task="poetry"), "not in the list of choices|Unknown task"),
    (dict(max_new_tokens=float("nan")), r"(?i)finite|number|nan"),
    (dict(max_new_tokens=-5), "at least 1"),
    (dict(max_new_tokens="many"), r"(?i)number"),
    (dict(top_k=float("inf")), r"(?i)finite|number|inf"),
    (dict(seed=2**64, strategy="sampling"), r"(?i)seed"),
    (dict(seed=-2), "Seed must be at least -1"),
    (dict(num_return_sequences=10**9), r"(?i)num_return_sequences|outputs"),
    (dict(num_beams=10**9), r"(?i)maximum|beams"),
    (dict(temperature=1e-300, strategy="sampling"), r"(?i)minimum|temperature"),
    (dict(length_penalty=1000.0), r"(?i)maximum|length"),
    (dict(length_penalty=float("nan")), r"(?i)finite|number|nan|minimum|maximum"),
    (dict(strategy=None), r"(?i)decoding|choices"),
])
def test_bad_values_are_clear_errors_and_the_app_still_serves(app, names, kwargs, message):
    from gradio_client.exceptions import AppError
    with pytest.raises((AppError, ValueError), match=message) as err:
        generate(app[2], names[0], **kwargs)
    assert "Traceback" not in str(err.value) and "Something went wrong" not in str(err.value)
    still_serves(app[2], names)


@pytest.mark.parametrize("checkpoint", ["../../etc", "/etc", "/etc/passwd", "..", "./checkpoints",
                                        "checkpoints/wikisplit-fusion-small", "local:../../etc", "a/../../etc",
                                        "/tmp/../etc/x"])
def test_hosted_mode_refuses_server_paths(app, names, checkpoint):
    from gradio_client.exceptions import AppError
    settings, demo, client = app
    with pytest.raises(AppError, match="not one of the checkpoints|no local checkpoint") as err:
        generate(client, checkpoint)
    assert "Traceback" not in str(err.value)
    with pytest.raises(AppError, match="not one of the checkpoints|no local checkpoint"):
        client.predict(checkpoint, "auto", api_name="/load_model")
    still_serves(client, names)


# ----------------------------------------------------------------------------------------
# Uploads to the Evaluate tab
# ----------------------------------------------------------------------------------------
def evaluate(client, names, upload):
    return client.predict("wikisplit-fusion", [names[0]], upload, 2, "greedy", 1, 4, api_name="/evaluate")


@pytest.mark.parametrize("name, content, message", [
    ("huge.jsonl", b'{"source": "a", "target": "b"}\n' * 4000, r"(?i)too large|size|exceed"),
    ("binary.jsonl", bytes(range(256)) * 8, r"(?i)binary|utf-8|not valid|json"),
    ("columns.jsonl", b'{"question": "a", "answer": "b"}\n' * 3, r"(?i)column|source|target"),
    ("columns.csv", b"x,y\n1,2\n3,4\n", r"(?i)column|source|target"),
    ("program.exe", b"MZ\x90\x00" * 10, r"(?i)upload a|file type|invalid file|not allowed"),
    ("empty.tsv", b"", r"(?i)empty|no rows"),
])
def test_bad_uploads_are_clear_errors_and_the_app_still_serves(app, names, tmp_path, name, content, message):
    from gradio_client.exceptions import AppError
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises((AppError, ValueError, OSError), match=message) as err:
        evaluate(app[2], names, handle_file(str(path)))
    assert "Traceback" not in str(err.value) and "Something went wrong" not in str(err.value)
    still_serves(app[2], names)


def test_torn_run_file_leaves_the_leaderboard_working(app, names, tmp_path):
    settings, demo, client = app
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"source": f"A {i} . <::::> B {i} .", "target": f"A {i} and B {i} ."}) + "\n"
                            for i in range(3)))
    status, _, _, _, _, board = evaluate(client, names, handle_file(str(good)))
    assert "Evaluated 1" in status and board["data"]
    runs = Path(settings.runs_dir)
    record = next(p for p in runs.glob("*.json"))
    text = record.read_text()
    (runs / "torn.json").write_text(text[: len(text) // 2])
    (runs / "binary.json").write_bytes(b"\x00\xff" * 50)
    (runs / "list.json").write_text("[1, 2]")
    (runs / "torn.predictions.jsonl").write_text('{"index": 0, "sou')
    rows = len(board["data"])
    from ui import evaluate as evaluate_tab
    assert len(evaluate_tab.past_runs(settings)) == rows  # what the tab shows when it opens
    status, _, _, _, _, board = evaluate(client, names, handle_file(str(good)))
    assert "Evaluated 1" in status and len(board["data"]) >= rows
    ui.build_app(settings)  # the leaderboard's first value is read at build time: no error either
