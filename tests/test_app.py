"""The workbench app: pure helpers, handlers as plain functions, and every public endpoint through
gradio_client against the app launched on 127.0.0.1. Tiny random checkpoints in a temporary
models folder stand in for the bundled ones, so nothing depends on trained weights."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import bertgen
import ui
from bertgen import tasks
from bertgen.config import BertGenerationConfig, EncoderDecoderConfig
from bertgen.tokenization import train_sentencepiece
from ui import compare, decoding, inference, models, plots
from ui.settings import Settings

FUSION_TEXT = "The lighthouse was built in 1872 . <::::> It guided ships for a century ."


def make_tiny_checkpoint(folder: Path, task: str, seed: int = 0) -> Path:
    """A 2-layer random bertShare model with its own sentencepiece vocabulary and a task tag."""
    texts = [e for t in tasks.TASKS.values() for e in t.examples] * 3
    tok = train_sentencepiece(texts, 200, folder)
    kw = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=128)
    config = EncoderDecoderConfig(encoder=BertGenerationConfig(**kw), decoder=BertGenerationConfig(**kw),
                                  tie_encoder_decoder=True)
    config.extra["bertgen_task"] = task
    torch.manual_seed(seed)
    model = bertgen.EncoderDecoderModel(config)
    with torch.no_grad():  # no specials: always max_new_tokens visible tokens, never empty text
        model.decoder.lm_head.bias[:5] = -20.0
    bertgen.save(model, folder, tokenizer=tok, generation_config={"num_beams": 2, "max_new_tokens": 8})
    (folder / "README.md").write_text("# tiny\n\nQuality: random weights, for tests only.\n")
    return folder


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("app")
    for name, task in (("tiny-fusion", "sentence-fusion"), ("tiny-split", "sentence-splitting"),
                       ("tiny-any", None)):
        folder = make_tiny_checkpoint(root / "models" / name, task or "sentence-fusion")
        if task is None:  # no task tag: offered for every task
            config = json.loads((folder / "config.json").read_text())
            config.pop("bertgen_task")
            (folder / "config.json").write_text(json.dumps(config))
    (root / "models" / "not-a-checkpoint").mkdir()
    return Settings(models_dir=root / "models", runs_dir=root / "runs", max_input_chars=400,
                    max_new_tokens=16, max_eval_examples=5, cache_mb=64)


def fusion_values(settings, **changes) -> list:
    return decoding.override(decoding.values_for("sentence-fusion", "local:tiny-fusion", settings), **changes)


# ----------------------------------------------------------------------------------------
# Checkpoint choices: never a server path
# ----------------------------------------------------------------------------------------
def test_choices_are_filtered_by_task(settings):
    fusion = dict((v, label) for label, v in models.choices_for("sentence-fusion", settings))
    split = dict((v, label) for label, v in models.choices_for("sentence-splitting", settings))
    assert "local:tiny-fusion" in fusion and "local:tiny-split" not in fusion
    assert "local:tiny-split" in split and "local:tiny-fusion" not in split
    assert "local:tiny-any" in fusion and "local:tiny-any" in split
    assert "google/roberta2roberta_L-24_discofuse" in fusion
    assert "local:not-a-checkpoint" not in fusion  # no config.json
    assert models.checkpoints_for("sentence-fusion", settings)[0].value.startswith(("local:", "wikisplit"))


@pytest.mark.parametrize("value", ["../../etc/passwd", "/etc", "local:../models/tiny-fusion",
                                   "local:/etc", "google/not-in-the-catalog", "", "local:not-a-checkpoint"])
def test_resolve_refuses_anything_not_offered(settings, value):
    with pytest.raises(ValueError):
        models.resolve(value, settings)


def test_any_hub_id_only_when_enabled(settings, tmp_path, monkeypatch):
    assert not models.Settings().allow_any_hub_id
    open_settings = replace(settings, allow_any_hub_id=True)
    assert models.resolve("someone/some-model", open_settings).location == "someone/some-model"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "server" / "folder").mkdir(parents=True)
    for value in ("../etc", "./x", "server/folder", "a/b/c", "..x/y"):
        with pytest.raises(ValueError):
            models.resolve(value, open_settings)


def test_settings_from_env(tmp_path):
    env = {"BERTGEN_MODELS_DIR": str(tmp_path), "BERTGEN_ALLOW_ANY_HUB_ID": "1", "BERTGEN_CACHE_MB": "100",
           "BERTGEN_MAX_INPUT_CHARS": "50"}
    s = Settings.from_env(env)
    assert (s.models_dir, s.allow_any_hub_id, s.cache_mb, s.max_input_chars) == (tmp_path.resolve(), True, 100, 50)
    assert Settings.from_env({}).models_dir is None
    with pytest.raises(ValueError, match="BERTGEN_CACHE_MB"):
        Settings.from_env({"BERTGEN_CACHE_MB": "lots"})


def test_quality_note_reads_the_model_card(tmp_path, monkeypatch):
    folder = tmp_path / "wikisplit-fusion-small"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Card\n\n**Quality:** SARI 50 on WikiSplit.\n")
    monkeypatch.setattr(tasks, "BUNDLED_DIR", tmp_path)
    assert models.quality_note("sentence-fusion") == "wikisplit-fusion-small: Quality: SARI 50 on WikiSplit."
    assert models.quality_note("translation-en-de") == models.FALLBACK_NOTE
    (folder / "README.md").write_text("# Card\n\n## Scores (WikiSplit validation)\n\n| system | BLEU (13a) | SARI |\n"
                                      "|---|---|---|\n| this model (beam 4) | 75.9 | 63.1 |\n| copy | 63.0 | 62.0 |\n"
                                      "\nQuality goal: SARI >= copy + 5.\n")
    assert models.quality_note("sentence-fusion") == ("wikisplit-fusion-small: BLEU 75.9, SARI 63.1; copying the "
                                                      "input: BLEU 63.0, SARI 62.0 (WikiSplit validation)")
    card = (folder / "README.md").read_text()
    (folder / "README.md").write_text(card + "**The goal is NOT reached** (a demo): SARI +1.1 vs copy (goal +5).\n")
    assert models.quality_note("sentence-fusion").endswith("62.0 (WikiSplit validation). The goal is NOT reached.")


# ----------------------------------------------------------------------------------------
# The model cache
# ----------------------------------------------------------------------------------------
def test_cache_reuses_and_evicts_least_recently_used(settings):
    fusion, split = models.resolve("local:tiny-fusion", settings), models.resolve("local:tiny-split", settings)
    cache = models.ModelCache(limit_bytes=10**9)
    a = cache.get(fusion, "cpu", "float32")
    assert cache.get(fusion, "cpu", "float32") is a
    cache.limit_bytes = a.bytes + a.bytes // 2  # room for one
    cache.get(split, "cpu", "float32")
    assert [i.ckpt.value for i in cache.items()] == ["local:tiny-split"]
    assert cache.unload("local:tiny-split") == 1 and cache.items() == []


def test_dtype_and_device_choice():
    assert models.pick_dtype("auto", "cpu") == "float32"
    assert models.pick_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="dtype"):
        models.pick_dtype("float8", "cpu")
    with pytest.raises(ValueError, match="CPU only"):
        models.pick_dtype("int8", "cuda")


def test_int8_serves_and_is_counted(settings):
    fusion = models.resolve("local:tiny-fusion", settings)
    cache = models.ModelCache(limit_bytes=10**9)
    full, small = cache.get(fusion, "cpu", "float32"), cache.get(fusion, "cpu", "int8")
    assert small is not full and small.dtype == "int8" and len(cache.items()) == 2
    assert 0 < small.bytes < full.bytes  # packed int8 weights are counted, at a quarter of the size
    (result,) = small.pipe.run(["the river flows ."], max_new_tokens=4)
    assert result.texts[0] is not None


def test_bf16_weights_serve_at_about_half_the_bytes(settings):
    from bertgen.kernels import native_kernels
    fusion = models.resolve("local:tiny-fusion", settings)
    cache = models.ModelCache(limit_bytes=10**9)
    if native_kernels() is None:  # the app says why rather than failing somewhere inside
        with pytest.raises(ValueError, match="native CPU kernels"):
            cache.get(fusion, "cpu", "bf16-weights")
        return
    full, half = cache.get(fusion, "cpu", "float32"), cache.get(fusion, "cpu", "bf16-weights")
    assert half is not full and half.dtype == "bf16-weights" and len(cache.items()) == 2
    # panels in bf16; LayerNorms, biases, position and encoder embeddings stay fp32
    assert 0.45 * full.bytes < half.bytes < 0.7 * full.bytes
    text = "the river flows . it is long ."
    (result,) = half.pipe.run([text], max_new_tokens=8)
    assert result.texts[0] and len(result.new_tokens) == 1
    with pytest.raises(ValueError, match="CPU only"):
        models.pick_dtype("bf16-weights", "cuda")


def test_packed_weights_are_counted(settings):
    from bertgen.kernels import PackedLinear, native_kernels, packable
    fusion = models.resolve("local:tiny-fusion", settings)
    item = models.ModelCache(limit_bytes=10**9).get(fusion, "cpu", "float32")
    plain = bertgen.load(fusion.location)
    assert any(isinstance(m, PackedLinear) for m in item.pipe.model.modules()) == packable(torch.ones(1))
    # the 256-wide head shares its panels with the lookup, or (without the panel kernel) gets a packed copy
    head = plain.decoder.lm_head.decoder.weight
    copy = head.numel() * head.element_size() if packable(head) and native_kernels() is None else 0
    assert item.bytes == models.model_bytes(plain) + copy  # packed (opaque) weights counted like plain ones
    assert item.pipe.model.num_parameters() == plain.num_parameters()


# ----------------------------------------------------------------------------------------
# Decoding values, input checks
# ----------------------------------------------------------------------------------------
def test_decoding_defaults_come_from_the_checkpoint(settings):
    values = fusion_values(settings)
    assert values[:2] == ["beam", 2] and values[5] == 8  # generation_config.json over the task's 4 beams


@pytest.mark.parametrize("change, message", [
    (dict(num_beams=0), "Beams"), (dict(max_new_tokens=10_000), "limited"),
    (dict(strategy="sampling", temperature=0.0), "temperature"), (dict(top_p=0.0), "top_p"),
    (dict(num_return_sequences=3), "num_return_sequences"), (dict(strategy="psychic"), "Decoding"),
    (dict(min_new_tokens=1.5), "whole number"), (dict(top_k=None), "Top-k must be a number"),
    (dict(length_penalty="long"), "Length penalty must be a number"),
    (dict(required_token="yes"), "Required token must be true or false"),
])
def test_bad_decoding_values_are_sentences(settings, change, message):
    model = models.cache(settings).get(models.resolve("local:tiny-fusion", settings), "cpu").pipe.model
    with pytest.raises(ValueError, match=message):
        decoding.make_settings(model, "sentence-fusion", fusion_values(settings, **change), settings.max_new_tokens)


def test_required_token_box_follows_the_checkpoint_and_switches_it_off(tmp_path):
    folder = make_tiny_checkpoint(tmp_path / "requires", "sentence-splitting")
    bertgen.checkpoints.save_generation_config(bertgen.config.load_config(folder), folder,
                                               {"num_beams": 2, "max_new_tokens": 8, "required_token_id": 5})
    model = bertgen.checkpoints.load(folder)
    values = decoding.control_values(tasks.decoding_defaults("sentence-splitting", folder), 16)
    assert values[-1] is True  # prefilled on: the checkpoint requires a token
    on = decoding.make_settings(model, "sentence-splitting", values, 16)
    off = decoding.make_settings(model, "sentence-splitting", decoding.override(values, required_token=False), 16)
    assert on.required_token_id == 5 and off.required_token_id is None
    assert off.num_beams == on.num_beams == 2


def test_input_checks(settings):
    with pytest.raises(ValueError, match="input"):
        inference.check_text("   ", settings)
    with pytest.raises(ValueError, match="at most 400"):
        inference.check_text("word " * 200, settings)
    with pytest.raises(ValueError, match="Unknown task"):
        inference.check_task("poetry")


def test_job_streams_then_returns_the_result(settings):
    job = inference.prepare("sentence-fusion", "local:tiny-fusion", FUSION_TEXT, fusion_values(settings), settings)
    partial = list(job.stream())
    out = job.run()
    assert partial and out.text and out.new_tokens == 8
    assert out.cross_attention.shape[2:] == (len(out.output_tokens), len(out.input_tokens))
    assert out.encoder_attention.shape[2:] == (len(out.input_tokens),) * 2
    assert "tokens/s" in out.stats() and out.truncation_notice() == ""


def test_long_input_is_truncated_with_a_notice(settings):
    text = "lighthouse coast " * 22  # under the character limit, over the 128 positions
    job = inference.prepare("sentence-fusion", "local:tiny-fusion", text, fusion_values(settings), settings)
    out = job.run()
    assert out.truncated > 0 and len(out.input_tokens) == 128
    assert "cut" in out.truncation_notice()


# ----------------------------------------------------------------------------------------
# Plots and diffs (pure functions)
# ----------------------------------------------------------------------------------------
def test_heatmap_keeps_repeated_tokens_apart():
    fig = plots.heatmap(np.eye(3), ["the", "cat", "the"], ["▁the", "the", "mat"])
    assert list(fig.layout.yaxis.tickvals) == [0, 1, 2] and list(fig.layout.yaxis.ticktext) == ["the", "cat", "the"]
    assert list(fig.layout.xaxis.ticktext) == ["the", "the", "mat"]
    assert list(fig.data[0].x) == [0, 1, 2]
    fig = plots.heatmap(np.eye(2), ["a", "</s>"], ["<::::>", "b"])  # plotly would read these as HTML
    assert list(fig.layout.yaxis.ticktext) == ["a", "&lt;/s&gt;"] and fig.layout.xaxis.ticktext[0] == "&lt;::::&gt;"
    with pytest.raises(ValueError):
        plots.heatmap(np.eye(2), ["a"], ["b", "c"])


def test_select_layer_head_and_averages():
    w = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    assert np.allclose(plots.select(w, 1, 2), w[1, 2])
    assert np.allclose(plots.select(w, "average", 0), w[:, 0].mean(0))
    assert np.allclose(plots.select(w), w.mean((0, 1)))
    with pytest.raises(ValueError, match="layer"):
        plots.select(w, 5, 0)


def test_highlight_scales_to_unit_range():
    spans = plots.highlight(["▁a", "b", "c"], [0.1, 0.4, 0.2])
    assert [s for _, s in spans] == [0.0, 1.0, 0.333]
    assert spans[0][0] == "a "


def test_attention_figures_for_every_kind(settings):
    out = inference.prepare("sentence-fusion", "local:tiny-fusion", FUSION_TEXT, fusion_values(settings), settings).run()
    for kind in plots.KINDS:
        fig = plots.attention_figure(out, kind, 0, 1)
        assert fig.data[0].type == "heatmap"
    spans = plots.token_highlight(out, 0)
    assert len(spans) == len(out.input_tokens) and max(s for _, s in spans) == 1.0


def test_word_diff():
    assert compare.word_diff("a b c", "a x c") == [("a ", None), ("b ", "-"), ("x ", "+"), ("c ", None)]
    assert compare.word_diff("same", "same") == [("same ", None)]


# ----------------------------------------------------------------------------------------
# Handlers as plain functions (the very functions the app registered)
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(settings, tmp_path_factory):
    """The app, built with its own GRADIO_TEMP_DIR (Gradio reads it when the Blocks are made)."""
    old = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    yield ui.build_app(settings)
    if old is None:
        os.environ.pop("GRADIO_TEMP_DIR")
    else:
        os.environ["GRADIO_TEMP_DIR"] = old


def handler(demo, api_name):
    return next(f.fn for f in demo.fns.values() if f.api_name == api_name)


def test_generate_handler_streams_and_returns_state(demo, settings):
    steps = list(handler(demo, "generate")("sentence-fusion", "local:tiny-fusion", FUSION_TEXT,
                                           *fusion_values(settings), progress=None))
    text, details, stats, seen, tokens, state = steps[-1]
    assert len(steps) >= 2 and text == state.text and "tokens/s" in stats and "tokens" in seen
    assert tokens.split() == state.input_tokens


def test_generate_handler_turns_errors_into_messages(demo, settings):
    with pytest.raises(gr.Error, match="input"):
        list(handler(demo, "generate")("sentence-fusion", "local:tiny-fusion", "", *fusion_values(settings)))
    with pytest.raises(gr.Error, match="not one of the checkpoints"):
        list(handler(demo, "generate")("sentence-fusion", "../../etc/passwd", "x", *fusion_values(settings)))


def test_split_output_shows_sentences():
    out = inference.Output("c", "sentence-splitting", "A b . <::::> C d .", ["A b . <::::> C d ."], [], [], 0,
                           1.0, 3, None)
    assert out.sentences == ["A b .", "C d ."]
    from ui.generate import details_markdown
    assert "1. A b ." in details_markdown(out) and "2. C d ." in details_markdown(out)


# ----------------------------------------------------------------------------------------
# Every public endpoint through gradio_client
# ----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(demo, tmp_path_factory):
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(), quiet=True,
                **{k: v for k, v in ui.launch_kwargs(Settings()).items() if k in ("ssr_mode", "max_file_size")})
    old_tempdir = tempfile.tempdir  # gradio_client leaves a folder in the temp dir per download
    tempfile.tempdir = str(tmp_path_factory.mktemp("downloads"))
    try:
        yield Client(demo.local_url, verbose=False, download_files=tempfile.tempdir)
    finally:
        tempfile.tempdir = old_tempdir
        demo.close()


def generate(client, settings, text=FUSION_TEXT, checkpoint="local:tiny-fusion", **changes):
    return client.predict("sentence-fusion", checkpoint, text, *fusion_values(settings, **changes),
                          api_name="/generate")


def test_api_lists_the_named_endpoints(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/generate", "/attention", "/compare", "/evaluate", "/load_model", "/unload_model"} <= names


def test_api_generate(client, settings):
    text, details, stats, seen, tokens = generate(client, settings)
    assert text and "tokens/s" in stats and len(tokens.split()) > 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(text=""), "input"),
    (dict(text="word " * 500), "at most 400"),
    (dict(num_beams=0), "less than minimum value 1"),  # Gradio checks slider/number bounds itself
    (dict(max_new_tokens=100_000), "limited to 16"),
    (dict(strategy="sampling", temperature=0.05, top_p=1.0, top_k=-3), "Top-k must be at least 0"),
    (dict(checkpoint="../../etc/passwd"), "not one of the checkpoints this app offers"),
])
def test_api_bad_inputs_are_clear_errors_and_the_app_still_serves(client, settings, kwargs, message):
    with pytest.raises(AppError, match=message) as err:
        generate(client, settings, **kwargs)
    assert "Traceback" not in str(err.value)
    assert generate(client, settings)[0]


def test_api_serves_every_task_whatever_task_the_page_shows(client, settings):
    # the checkpoint dropdowns hold the fusion choices at start; an API call for splitting names
    # a split checkpoint (Gradio's own choice check used to refuse it)
    values = decoding.values_for("sentence-splitting", "local:tiny-split", settings)
    text = client.predict("sentence-splitting", "local:tiny-split", "A long sentence to split .", *values,
                          api_name="/generate")[0]
    assert text
    slots = ["local:tiny-split", "greedy", 1, 1.0, 1.0] * 4
    assert client.predict("sentence-splitting", "A long sentence .", "", 2, *slots, api_name="/compare")[0]


def test_api_attention(client, settings):
    out = client.predict(FUSION_TEXT, "local:tiny-fusion", "sentence-fusion", "cross", 1, -1, api_name="/attention")
    assert np.array(out["weights"]).shape == (len(out["rows"]), len(out["columns"]))
    with pytest.raises(AppError, match="not one of the checkpoints"):
        client.predict(FUSION_TEXT, "/etc", "sentence-fusion", "cross", -1, -1, api_name="/attention")


def test_api_compare(client, settings):
    slots = ["local:tiny-fusion", "beam", 2, 1.0, 1.0, "local:tiny-any", "greedy", 1, 1.0, 1.0] + \
            ["local:tiny-fusion", "beam", 2, 1.0, 1.0] * 2
    result = client.predict("sentence-fusion", FUSION_TEXT, "The lighthouse guided ships .", 2, *slots,
                            api_name="/compare")
    table = result[-1]
    assert [row[1] for row in table["data"]] == ["local:tiny-fusion", "local:tiny-any"]
    assert "BLEU" in table["headers"] and "SARI" in table["headers"]
    assert result[0] and result[4]  # both outputs


def test_api_evaluate_on_an_uploaded_slice(client, settings, tmp_path):
    data = tmp_path / "slice.jsonl"
    data.write_text("".join(json.dumps({"source": f"A {i} . <::::> B {i} .", "target": f"A {i} and B {i} ."}) + "\n"
                            for i in range(4)))
    status, table, _, _, csv, board = client.predict(
        "wikisplit-fusion", ["local:tiny-fusion", "local:tiny-any"], handle_file(str(data)), 3, "greedy", 1, 6,
        api_name="/evaluate")
    assert "Evaluated 2" in status
    assert table["data"][0][table["headers"].index("examples")] == 3
    assert Path(csv).read_text().startswith("model,")
    assert board["data"]
    with pytest.raises(AppError, match="at most 5"):
        client.predict("wikisplit-fusion", ["local:tiny-fusion"], handle_file(str(data)), 50, "greedy", 1, 6,
                       api_name="/evaluate")


def test_api_load_and_unload(client):
    message, info, table = client.predict("local:tiny-split", "float32", api_name="/load_model")
    assert "Loaded local:tiny-split" in message and "local:tiny-split" in json.dumps(table)
    message, _, table = client.predict("local:tiny-split", api_name="/unload_model")
    assert "Unloaded" in message and "local:tiny-split" not in json.dumps(table)
    message, _, table = client.predict("local:tiny-split", "int8", api_name="/load_model")
    assert "as int8" in message and "int8" in json.dumps(table)
    client.predict("local:tiny-split", api_name="/unload_model")
    from bertgen.kernels import native_kernels
    if native_kernels() is not None:
        message, _, table = client.predict("local:tiny-split", "bf16-weights", api_name="/load_model")
        assert "as bf16-weights" in message and "bf16-weights" in json.dumps(table)
        client.predict("local:tiny-split", api_name="/unload_model")


def test_visible_text_keeps_the_sentence_separator(settings):
    tok = models.cache(settings).get(models.resolve("local:tiny-split", settings), "cpu").pipe.tokenizer
    tokens = tok.convert_ids_to_tokens(tok.encode("The cat sat . <::::> It was happy .") + [tok.eos_token_id])
    assert inference.visible_text(tok, tokens) == "The cat sat . <::::> It was happy ."


def test_offline_catalog_checkpoint_is_a_clear_message(demo, settings, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(gr.Error, match="cannot be downloaded|offline"):
        list(handler(demo, "generate")("sentence-fusion", "google/roberta2roberta_L-24_discofuse", FUSION_TEXT,
                                       *fusion_values(settings)))


def test_evaluate_handler_explains_missing_data(demo, settings):
    evaluate = handler(demo, "evaluate")
    quiet = lambda *args, **kwargs: None  # noqa: E731 - a progress bar that shows nothing
    with pytest.raises(gr.Error, match="(?i)offline|hub|download"):
        evaluate("discofuse", ["local:tiny-fusion"], None, 2, "greedy", 1, 4, request=None, progress=quiet)
    with pytest.raises(gr.Error, match="at least one checkpoint"):
        evaluate("discofuse", [], None, 2, "greedy", 1, 4, request=None, progress=quiet)
    with pytest.raises(gr.Error, match="Unknown benchmark"):
        evaluate("../../etc/passwd", ["local:tiny-fusion"], None, 2, "greedy", 1, 4, request=None, progress=quiet)


def test_preload_loads_the_named_checkpoints(settings):
    models.preload(replace(settings, preload=("local:tiny-split",)))
    assert "local:tiny-split" in [item.ckpt.value for item in models.cache(settings).items()]
    assert Settings.from_env({"BERTGEN_PRELOAD": " a, b ,"}).preload == ("a", "b")


def test_start_up_builds_the_cpu_kernel_in_the_background(settings, monkeypatch):
    """A CPU app builds bertgen's native kernel while the page loads, not in the first request;
    a GPU app has no use for it."""
    import threading
    built = threading.Event()
    monkeypatch.setattr(models, "native_kernels", built.set)
    models.preload(replace(settings, device="cpu", preload=()))
    assert built.wait(10)
    built.clear()
    models.preload(replace(settings, device="cuda", preload=()))
    assert not built.wait(0.5)


def test_closing_a_stream_stops_its_decoding_thread(settings):
    job = inference.prepare("sentence-fusion", "local:tiny-fusion", FUSION_TEXT,
                            fusion_values(settings, strategy="greedy", max_new_tokens=16), settings)
    stream = job.stream()
    next(stream)
    stream.close()  # what a cancelled (Stop) event does to the handler's generator
    for thread in [t for t in threading.enumerate() if t.name == "bertgen-stream"]:
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_attention_figure_takes_a_pipeline_result_directly():
    """Notebooks pass a bertgen Result (output tokens per returned sequence) straight in."""
    import torch
    from types import SimpleNamespace
    from ui.plots import attention_figure

    result = SimpleNamespace(cross_attention=torch.rand(2, 2, 3, 4), input_tokens=["a", "b", "a", "c"],
                             output_tokens=[["x", "y", "x"], ["z"]])
    fig = attention_figure(result)
    heat = fig.data[0]
    assert list(heat.z.shape) == [3, 4]
    assert "y" in [str(t) for t in fig.layout.yaxis.ticktext]
