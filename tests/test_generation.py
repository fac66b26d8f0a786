"""bertgen.generation / bertgen.pipeline / `python -m bertgen generate` against transformers 5.

Tiny random models are built with transformers, saved, and loaded with bertgen; the same
settings must give the same tokens (greedy, beam search with every processor we implement)
and the same scores. Random models either stop at once or never, so the EOS id is chosen
after the fact: a token that greedy decoding produces in some rows, at different positions.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bertgen
from bertgen import kernels
from bertgen.generation import GenerationSettings, generate, resolve_settings, stream
from bertgen.modeling import Layer
from bertgen.pipeline import pipeline, prepare_model

ROOT = Path(__file__).resolve().parents[1]
UNK, PAD, BOS, MASK = 0, 1, 2, 3  # BOS ([CLS]) is the decoder start token; EOS is chosen below
VOCAB = 100
SIZES = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)
LENGTHS = (12, 9, 7, 5, 3, 10)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine OpenMP waits hurt."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ragged_batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, VOCAB, (len(LENGTHS), max(LENGTHS)), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(LENGTHS):
        mask[row, :n] = 1
    return ids.masked_fill(mask == 0, PAD), mask


def _pick_eos(model, ids, mask) -> int:
    """A token greedy decoding emits in some rows but not all, first at varied positions."""
    model.generation_config.eos_token_id = None
    out = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)[:, 1:]
    best, best_score = None, -1
    for token in range(4, VOCAB):
        firsts = [row.tolist().index(token) for row in out if token in row.tolist()]
        if 0 < len(firsts) < len(out):
            score = len(set(firsts))
            if score > best_score:
                best, best_score = token, score
    assert best is not None, "no usable EOS token in this random model"
    return best


def build_pair(folder: Path, tied: bool, seed: int = 1):
    """(transformers model, bertgen model, eos id), with identical weights."""
    import transformers as T

    torch.manual_seed(seed)
    kw = dict(SIZES, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=MASK)
    enc = T.BertGenerationEncoder(T.BertGenerationConfig(**kw))
    dec = T.BertGenerationDecoder(T.BertGenerationConfig(**kw, is_decoder=True, add_cross_attention=True))
    hf = T.EncoderDecoderModel(encoder=enc, decoder=dec).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
        if tied:  # what a tied checkpoint means: the encoder holds the decoder's values
            state = hf.state_dict()
            for key, tensor in state.items():
                if key.startswith("encoder."):
                    tensor.copy_(state["decoder.bert." + key[len("encoder."):]])
    hf.config.decoder_start_token_id, hf.config.pad_token_id = BOS, PAD
    hf.generation_config.decoder_start_token_id, hf.generation_config.pad_token_id = BOS, PAD
    eos = _pick_eos(hf, *ragged_batch())
    hf.config.eos_token_id = hf.generation_config.eos_token_id = eos
    hf.config.tie_encoder_decoder = tied
    hf.save_pretrained(folder)
    write_tokenizer(folder, eos)
    return hf, bertgen.load(folder), eos


def write_tokenizer(folder: Path, eos: int, **config) -> None:
    """A WordPiece vocabulary whose special ids match the model: words are `w4` ... `w99`."""
    vocab = [f"w{i}" for i in range(VOCAB)]
    for i, tok in ((UNK, "[UNK]"), (PAD, "[PAD]"), (BOS, "[CLS]"), (MASK, "[MASK]"), (eos, "[SEP]")):
        vocab[i] = tok
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 16, **config}))


@pytest.fixture(scope="module", params=["untied", "tied"])
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf, bg, eos = build_pair(folder, tied=request.param == "tied")
    return hf, bg, eos, folder


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    hf, bg, eos = build_pair(folder, tied=False)
    return hf, bg, eos, folder


def hf_generate(hf, ids, mask, **kw):
    return hf.generate(ids, attention_mask=mask, do_sample=False, return_dict_in_generate=True,
                       output_scores=True, **kw)


# ----------------------------------------------------------------------------------------
# Parity with transformers
# ----------------------------------------------------------------------------------------
def test_greedy_matches_transformers(pair):
    hf, bg, eos, _ = pair
    ids, mask = ragged_batch()
    ref = hf_generate(hf, ids, mask, max_new_tokens=16)
    out = generate(bg, ids, mask, resolve_settings(bg, max_new_tokens=16))
    assert torch.equal(out.sequences, ref.sequences)
    ended = out.lengths < 16
    assert ended.any() and not ended.all(), "want some sequences to end early and some not"
    assert (out.sequences[out.lengths < 16, 1:] == eos).any(1).all()
    # per-token log-probabilities: log-softmax of the processed scores at the chosen token
    ref_lp = torch.stack([torch.log_softmax(s, -1).gather(1, ref.sequences[:, t + 1:t + 2])[:, 0]
                          for t, s in enumerate(ref.scores)], 1)
    for i, n in enumerate(out.lengths.tolist()):
        torch.testing.assert_close(out.token_logprobs[i, :n], ref_lp[i, :n], atol=1e-4, rtol=0)
        assert out.sequence_scores[i].item() == pytest.approx(ref_lp[i, :n].sum().item(), abs=1e-4)


BEAM_CASES = {
    "beam4": dict(num_beams=4),
    "lp2-nrs3": dict(num_beams=4, num_return_sequences=3, length_penalty=2.0),
    "lp-neg-never": dict(num_beams=3, early_stopping="never", length_penalty=-0.5),
    "never-lp": dict(num_beams=3, early_stopping="never", length_penalty=1.5),
    "early-true": dict(num_beams=3, early_stopping=True, num_return_sequences=2),
    "ngram2": dict(num_beams=2, no_repeat_ngram_size=2),
    "min-length": dict(num_beams=3, min_length=8),
    "min-new": dict(num_beams=2, min_new_tokens=6),
    "repetition": dict(num_beams=4, repetition_penalty=1.5, length_penalty=0.6),
    "all": dict(num_beams=5, num_return_sequences=5, length_penalty=0.8, early_stopping=True,
                no_repeat_ngram_size=3, min_length=4, repetition_penalty=1.3),
}


@pytest.mark.parametrize("case", list(BEAM_CASES))
def test_beam_search_matches_transformers(pair, case):
    hf, bg, eos, _ = pair
    ids, mask = ragged_batch()
    kw = dict(max_new_tokens=14, **BEAM_CASES[case])
    ref = hf_generate(hf, ids, mask, **kw)
    out = generate(bg, ids, mask, resolve_settings(bg, **kw))
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(out.sequence_scores, ref.sequences_scores, atol=1e-4, rtol=0)
    lp = kw.get("length_penalty", 1.0)  # the score is the sum of token log-probs / length ** lp
    torch.testing.assert_close(out.token_logprobs.sum(1) / out.lengths.float() ** lp, out.sequence_scores,
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("kw", [dict(repetition_penalty=1.8), dict(no_repeat_ngram_size=1),
                                dict(min_new_tokens=5), dict(min_length=9)])
def test_greedy_processors_match_transformers(untied, kw):
    hf, bg, _, _ = untied
    ids, mask = ragged_batch()
    ref = hf_generate(hf, ids, mask, max_new_tokens=12, **kw)
    out = generate(bg, ids, mask, resolve_settings(bg, max_new_tokens=12, **kw))
    assert torch.equal(out.sequences, ref.sequences)


class _RequireToken:
    """The oracle for `required_token_id`: a transformers LogitsProcessor (HF appends custom
    processors after its own) that bans EOS in rows which have not generated `token` yet."""

    def __init__(self, token: int, eos: int):
        self.token, self.eos = token, eos

    def __call__(self, input_ids, scores):
        lacking = ~(input_ids == self.token).any(dim=1)
        scores[lacking, self.eos] = -math.inf
        return scores


def _required_token(free, eos) -> int:
    """A token that the free outputs which end hold in some rows but not in others."""
    ended = [row[1:n + 1].tolist() for row, n in zip(free.sequences, free.lengths.tolist()) if row[n] == eos]
    assert ended, "want outputs that end"
    counts = {t: sum(t in row for row in ended) for t in range(4, VOCAB) if t != eos}
    return min(counts, key=lambda t: (counts[t] == 0, counts[t] == len(ended), -counts[t]))


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3), dict(num_beams=4, num_return_sequences=2, length_penalty=1.5),
                                dict(num_beams=2, min_new_tokens=3, repetition_penalty=1.3)])
def test_required_token_matches_a_transformers_logits_processor(pair, kw):
    from transformers import LogitsProcessorList

    hf, bg, eos, _ = pair
    ids, mask = ragged_batch()
    free = generate(bg, ids, mask, resolve_settings(bg, max_new_tokens=16, **kw))
    token = _required_token(free, eos)
    ref = hf.generate(ids, attention_mask=mask, do_sample=False, return_dict_in_generate=True, output_scores=True,
                      max_new_tokens=16, logits_processor=LogitsProcessorList([_RequireToken(token, eos)]), **kw)
    out = generate(bg, ids, mask, resolve_settings(bg, max_new_tokens=16, required_token_id=token, **kw))
    assert torch.equal(out.sequences, ref.sequences)
    if "num_beams" in kw:
        torch.testing.assert_close(out.sequence_scores, ref.sequences_scores, atol=1e-4, rtol=0)
    assert not torch.equal(free.sequences, out.sequences), "the constraint should change some outputs"
    for row, n in zip(out.sequences[:, 1:], out.lengths.tolist()):
        if row[n - 1] == eos:  # every output that ended holds the required token before its EOS
            assert token in row[:n - 1].tolist()


@pytest.mark.parametrize("group", [1, 3])
def test_fast_decode_step_equals_the_model(pair, group):
    """generation.decode_step (the inference kernel) against EncoderDecoderModel.decode_step."""
    from bertgen.generation import decode_step

    _, bg, _, _ = pair
    ids, mask = ragged_batch()
    rows = len(ids) * group
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        enc = bg.encode(ids, mask).last_hidden_state
        cross = bg.cross_cache(enc, mask, group=group)
        ours, ref = bg.new_cache(rows, 5), bg.new_cache(rows, 5)
        for _ in range(5):
            tokens = torch.randint(0, VOCAB, (rows, 1), generator=g)
            got, self_probs, cross_probs = decode_step(bg, tokens, ours, cross, need_weights=True)
            want, out = bg.decode_step(tokens, ref, cross, output_attentions=True)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(torch.stack(cross_probs), torch.stack(out.cross_attentions)[:, :, :, 0])
            torch.testing.assert_close(torch.stack(self_probs), torch.stack(out.attentions)[:, :, :, 0])


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3)])
def test_batch_equals_one_by_one(untied, kw):
    """Padding and dropping finished inputs from the batch change nothing."""
    _, bg, _, _ = untied
    ids, mask = ragged_batch()
    settings = resolve_settings(bg, max_new_tokens=12, **kw)
    batch = generate(bg, ids, mask, settings)
    for i, n in enumerate(LENGTHS):
        alone = generate(bg, ids[i:i + 1, :n], None, settings)
        m = int(alone.lengths[0])
        assert int(batch.lengths[i]) == m
        assert torch.equal(batch.sequences[i, :m + 1], alone.sequences[0, :m + 1])


# ----------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------
def test_sampling_is_reproducible_with_a_seed(untied):
    _, bg, _, _ = untied
    ids, mask = ragged_batch()
    kw = dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, num_return_sequences=3, max_new_tokens=10)
    a = generate(bg, ids, mask, resolve_settings(bg, seed=7, **kw))
    b = generate(bg, ids, mask, resolve_settings(bg, seed=7, **kw))
    c = generate(bg, ids, mask, resolve_settings(bg, seed=8, **kw))
    assert a.sequences.shape[0] == len(LENGTHS) * 3
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.sequence_scores, b.sequence_scores)
    assert not torch.equal(a.sequences, c.sequences)
    beam = dict(do_sample=True, num_beams=3, max_new_tokens=8, seed=3)
    assert torch.equal(generate(bg, ids, mask, resolve_settings(bg, **beam)).sequences,
                       generate(bg, ids, mask, resolve_settings(bg, **beam)).sequences)


def test_sampling_with_top_k_1_is_greedy(untied):
    _, bg, _, _ = untied
    ids, mask = ragged_batch()
    greedy = generate(bg, ids, mask, resolve_settings(bg, max_new_tokens=10))
    sampled = generate(bg, ids, mask, resolve_settings(bg, max_new_tokens=10, do_sample=True, top_k=1, seed=0))
    assert torch.equal(greedy.sequences, sampled.sequences)


# ----------------------------------------------------------------------------------------
# Attention aligned to the returned hypothesis
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(), dict(num_beams=4, num_return_sequences=2, length_penalty=0.7),
                                dict(do_sample=True, num_return_sequences=2, seed=1)])
def test_attention_follows_the_final_hypothesis(pair, kw):
    _, bg, _, _ = pair
    ids, mask = ragged_batch()
    out = generate(bg, ids, mask, resolve_settings(bg, max_new_tokens=12, **kw), output_attentions=True)
    per = out.num_return_sequences
    for i, seq in enumerate(out.sequences):
        b, n = i // per, int(out.lengths[i])
        src = ids[b:b + 1, :LENGTHS[b]]
        dec = seq[None, :n]  # start token + all generated tokens but the last
        with torch.inference_mode():
            ref = bg(src, decoder_input_ids=dec, output_attentions=True)
        cross = torch.cat(ref.cross_attentions)  # [layers, heads, n, src]
        assert out.cross_attentions[i].shape == (2, 4, n, LENGTHS[b])
        torch.testing.assert_close(out.cross_attentions[i], cross, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.decoder_attentions[i], torch.cat(ref.decoder_attentions), atol=1e-5, rtol=0)
        if i % per == 0:
            torch.testing.assert_close(out.encoder_attentions[b], torch.cat(ref.encoder_attentions),
                                       atol=1e-5, rtol=0)


def test_cross_attention_only(untied):
    _, bg, _, _ = untied
    ids, mask = ragged_batch()
    out = generate(bg, ids, mask, resolve_settings(bg, max_new_tokens=5, num_beams=2), output_cross_attentions=True)
    assert len(out.cross_attentions) == len(LENGTHS)
    assert out.encoder_attentions is None and out.decoder_attentions is None


# ----------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    (dict(num_beams=0), "num_beams"),
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_return_sequences=2), "greedy"),
    (dict(length_penalty=float("nan")), "length_penalty"),
    (dict(max_new_tokens="3"), "max_new_tokens"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=True), "max_new_tokens"),
    (dict(top_k=-1), "top_k"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(do_sample="yes"), "do_sample"),
    (dict(seed=-1), "seed"),
    (dict(max_length=1), "max_length"),
    (dict(num_beams=10**9), "num_beams"),
    (dict(do_sample=True, num_return_sequences=10**9), "num_return_sequences"),
    (dict(seed=2**64), "seed"),
    (dict(required_token_id=-1), "required_token_id"),
    (dict(required_token_id="<::::>"), "required_token_id"),
    (dict(cache_dtype="int8"), "cache_dtype must be one of float32, bfloat16, float16"),
])
def test_invalid_settings_raise(kw, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**kw)


def test_extreme_but_valid_settings_decode(untied):
    _, bg, _, _ = untied
    ids, mask = ragged_batch()
    for kw in (dict(do_sample=True, temperature=1e-300, seed=0), dict(do_sample=True, num_beams=2, temperature=1e-300),
               dict(num_beams=3, length_penalty=1000.0), dict(num_beams=3, length_penalty=-1000.0)):
        out = generate(bg, ids, mask, resolve_settings(bg, max_new_tokens=5, **kw))
        assert ((out.lengths >= 1) & (out.lengths <= 5)).all(), kw
    tiny = generate(bg, ids, mask, resolve_settings(bg, max_new_tokens=5, do_sample=True, temperature=1e-300, seed=0))
    assert torch.equal(tiny.sequences, generate(bg, ids, mask, resolve_settings(bg, max_new_tokens=5)).sequences)


def test_settings_checked_against_the_model(untied):
    _, bg, _, _ = untied
    with pytest.raises(ValueError, match="decoder positions"):
        resolve_settings(bg, max_new_tokens=64)  # 64 positions, the start token takes one
    assert resolve_settings(bg, max_new_tokens=63).new_tokens == 63
    with pytest.raises(ValueError, match="unknown setting: beams"):
        resolve_settings(bg, beams=3)
    with pytest.raises(ValueError, match="vocabulary"):
        resolve_settings(bg, eos_token_id=VOCAB)
    with pytest.raises(ValueError, match="required_token_id=100 is not below the vocabulary"):
        resolve_settings(bg, required_token_id=VOCAB)


def test_settings_layers(untied, tmp_path):
    _, bg, eos, folder = untied
    gen_config = json.loads((folder / "generation_config.json").read_text())
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {**gen_config, "num_beams": 3, "max_length": 20, "use_cache": True, "_from_model_config": True}))
    model = bertgen.load(folder)
    model.source_dir = tmp_path
    s = resolve_settings(model)  # the checkpoint's defaults; unknown keys ignored
    assert (s.num_beams, s.new_tokens, s.eos_token_id, s.decoder_start_token_id) == (3, 19, eos, BOS)
    s = resolve_settings(model, {"max_new_tokens": 5, "length_penalty": 0.5})  # the task's
    assert (s.num_beams, s.new_tokens, s.length_penalty) == (3, 5, 0.5)
    s = resolve_settings(model, {"max_new_tokens": 5}, max_length=8, num_beams=None)  # the caller's
    assert (s.num_beams, s.new_tokens) == (3, 7)
    assert s.replace(num_beams=1).num_beams == 1
    assert GenerationSettings().new_tokens == 64
    with pytest.raises(ValueError, match="unknown task setting"):
        resolve_settings(model, {"beam_size": 2})


def test_stream_grows_to_the_final_text(untied):
    _, bg, _, _ = untied
    ids, _ = ragged_batch()

    class Words:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(f"w{i}" for i in ids)

    for kw in (dict(), dict(num_beams=3)):
        settings = resolve_settings(bg, max_new_tokens=10, **kw)
        texts = list(stream(bg, ids[0], None, settings, Words()))
        final = generate(bg, ids[:1], None, settings)
        assert texts[-1] == Words().decode(final.sequences[0, 1:1 + int(final.lengths[0])].tolist())
        if not kw:
            assert all(b.startswith(a) for a, b in zip(texts, texts[1:])) and len(texts) > 1


# ----------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------
def words(row, n):
    return " ".join(f"w{i}" for i in row[:n].tolist())


def test_pipeline_shapes_order_and_results(untied):
    _, _, eos, folder = untied
    pipe = pipeline("text2text-generation", model=folder, device="cpu", batch_size=2)
    ids, _ = ragged_batch()
    texts = [words(row, n) for row, n in zip(ids, LENGTHS)]
    one = pipe(texts[0], max_new_tokens=8)
    assert isinstance(one, list) and set(one[0]) == {"generated_text"}
    many = pipe(texts, max_new_tokens=8)
    assert [m["generated_text"] for m in many] == [pipe(t, max_new_tokens=8)[0]["generated_text"] for t in texts]
    nested = pipe(texts[:2], num_beams=3, num_return_sequences=2, max_new_tokens=8)
    assert len(nested) == 2 and all(len(n) == 2 for n in nested)

    results = pipe.run(texts, num_beams=2, max_new_tokens=8, attentions=True)
    for text, r, n in zip(texts, results, LENGTHS):
        assert r.input_tokens == text.split() and not r.truncated
        assert len(r.output_tokens[0]) == r.new_tokens[0] == len(r.token_logprobs[0])
        assert r.cross_attention.shape == (2, 4, r.new_tokens[0], n)
        assert r.encoder_attentions.shape == (2, 4, n, n)
        assert r.seconds > 0 and math.isfinite(r.score)
    assert results[0].text == pipe.run(texts[0], num_beams=2, max_new_tokens=8)[0].text


def test_pipeline_inputs_truncation_and_special_tokens(untied, tmp_path):
    hf, _, eos, folder = untied
    pipe = pipeline(model=bertgen.load(folder), batch_size=4)
    with pytest.raises(ValueError, match="empty"):
        pipe(["w5 w6", "   "])
    for bad, name in ((b"w5 w6", "bytes"), (None, "NoneType"), (5, "int")):
        with pytest.raises(ValueError, match=name):
            pipe.run(bad)
    assert pipe.run([]) == []
    long = " ".join(f"w{i}" for i in range(10, 40))  # 30 tokens, the tokenizer keeps 16
    r = pipe.run(long, max_new_tokens=4)[0]
    assert r.truncated and r.tokens_cut == 14 and len(r.input_tokens) == 16
    with pytest.raises(ValueError, match="unsupported task"):
        pipeline("summarization", model=folder)

    hf.save_pretrained(tmp_path)
    write_tokenizer(tmp_path, eos, add_special_tokens=True)  # the wikisplit convention
    r = pipeline(model=tmp_path).run("w5 w6", max_new_tokens=3)[0]
    assert r.input_tokens == ["[CLS]", "w5", "w6", "[SEP]"]
    r = pipeline(model=tmp_path, add_special_tokens=False).run("w5 w6", max_new_tokens=3)[0]
    assert r.input_tokens == ["w5", "w6"]


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3, num_return_sequences=2)])
def test_half_precision_cache(untied, kw, monkeypatch):
    """cache_dtype stores both caches in bf16 (half the memory); the scores stay close to fp32,
    and "float32" on an fp32 model is the default exactly."""
    _, bg, _, _ = untied
    ids, mask = ragged_batch()
    seen = []
    for name in ("new_cache", "cross_cache"):
        real = getattr(bg, name)
        monkeypatch.setattr(bg, name, lambda *a, _real=real, **k: seen.append(_real(*a, **k)) or seen[-1])
    full = generate(bg, ids, mask, resolve_settings(bg, max_new_tokens=8, **kw))
    assert generate(bg, ids, mask, resolve_settings(bg, max_new_tokens=8, cache_dtype="float32", **kw)).sequences.equal(
        full.sequences)
    seen.clear()
    half = generate(bg, ids, mask, resolve_settings(bg, max_new_tokens=8, cache_dtype="bfloat16", **kw))
    self_cache, cross = seen
    assert {t.dtype for t in self_cache.keys + self_cache.values + cross.keys + cross.values} == {torch.bfloat16}
    assert half.sequences.equal(full.sequences)
    assert torch.allclose(half.sequence_scores, full.sequence_scores, atol=2e-2)
    assert not torch.equal(half.sequence_scores, full.sequence_scores)  # it did compute from bf16 values


def test_prepare_model_packs_for_cpu_and_decodes_the_same(pair, tmp_path):
    from bertgen.kernels import PackedLinear, PanelEmbedding, native_kernels, packable, packed_copies
    hf, bg, eos, folder = pair
    model = prepare_model(bertgen.load(folder), device="cpu")
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    self_attention = {id(m.attention.self) for m in model.modules() if isinstance(m, Layer)}
    assert all(layer.attention.self.fused and not layer.crossattention.self.fused
               for layer in model.decoder.bert.encoder.layer)  # query/key/value: one matrix
    shared = packable(torch.ones(1)) and native_kernels() is not None  # the head's panels serve the lookup
    assert len(packed) == (0 if not packable(torch.ones(1)) else  # qkv once; the LM head if shared
                           sum(type(m) is torch.nn.Linear for m in bg.modules()) - (not shared) - 2 * len(self_attention))
    assert model.num_parameters() == bg.num_parameters()  # the Models tab shows this
    head, lookup = model.decoder.lm_head.decoder, model.decoder.bert.embeddings.word_embeddings
    if shared:  # one set of panels, no plain copy and no packed copy
        assert isinstance(lookup, PanelEmbedding) and lookup.packed is head.packed
        assert model.decoder.lm_head.packed_copy is None and not packed_copies(model)
    else:  # the tied weight stays plain for the lookup; a narrow head also gets a packed copy
        assert type(head) is torch.nn.Linear and head.weight is lookup.weight
        assert (model.decoder.lm_head.packed_copy is not None) == packable(torch.ones(1))
    if bg.config.tie_encoder_decoder:
        assert model.decoder.bert.encoder.layer[1].attention is model.encoder.encoder.layer[1].attention
    ids, mask = ragged_batch()
    with torch.inference_mode():
        for kw in (dict(), dict(num_beams=4, num_return_sequences=2, length_penalty=1.5)):
            settings = resolve_settings(bg, max_new_tokens=12, **kw)
            out, ref = generate(model, ids, mask, settings), generate(bg, ids, mask, settings)
            assert torch.equal(out.sequences, ref.sequences)
            torch.testing.assert_close(out.sequence_scores, ref.sequence_scores, atol=1e-5, rtol=0)
    bertgen.save(model, tmp_path / "saved")  # a packed model saves plain weights
    reloaded = bertgen.load(tmp_path / "saved").state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in bg.state_dict().items())
    unpacked = prepare_model(bertgen.load(folder), device="cpu", pack=False)
    assert not any(isinstance(m, PackedLinear) for m in unpacked.modules())
    assert unpacked.decoder.lm_head.packed_copy is None
    # preparing a prepared model again (a second pipeline over the same object) works
    again = pipeline(model=model)
    assert again.model is model and len([m for m in model.modules() if isinstance(m, PackedLinear)]) == len(packed)
    with torch.inference_mode():
        assert torch.equal(generate(model, ids, mask, settings).sequences, ref.sequences)
    prepare_model(model, quantize="int8")  # and so does quantizing it
    assert not any(isinstance(m, (PackedLinear, PanelEmbedding)) for m in model.modules()) and not packed_copies(model)
    assert type(model.decoder.bert.embeddings.word_embeddings) is torch.nn.Embedding  # plain again


def test_shared_prefix_cache_keeps_each_prefix_once(untied):
    """The native step's cache: beams that continue one hypothesis name the same slots (a
    reorder moves no keys), and each new position takes the lowest slots no row names."""
    from bertgen.generation import SharedPrefixCache
    config = untied[1].config.decoder
    cache = SharedPrefixCache(config, 4, 4, torch.float32, "cpu")
    assert cache.keys[0].shape == (config.num_attention_heads, 16, config.head_dim)
    cache.claim()
    assert cache.slots[:, 0].tolist() == [0, 1, 2, 3] and cache.slots[0].tolist() == [0, 4, 8, 12]  # s * rows + r
    cache.advance(1)
    cache.reorder(torch.arange(4))  # no beam moved: the table stays
    cache.claim()
    assert cache.slots[:, 1].tolist() == [4, 5, 6, 7]
    cache.advance(1)
    keys = cache.keys[0].normal_().clone()
    cache.reorder(torch.tensor([0, 0, 1, 1]))  # rows 0 and 1 continue old row 0, rows 2 and 3 old row 1
    assert torch.equal(cache.keys[0], keys)
    cache.claim()  # slots 2, 3, 6 and 7 are named by no row any more
    assert cache.slots[:, :3].tolist() == [[0, 4, 2], [0, 4, 3], [1, 5, 6], [1, 5, 7]]
    cache.advance(1)
    cache.select(torch.tensor([2, 3]))  # rows 0 and 1 leave the batch: slots 0, 2, 3 and 4 free
    cache.claim()
    assert cache.slots.tolist() == [[1, 5, 6, 0], [1, 5, 7, 2]]


@pytest.mark.skipif(kernels.native_kernels() is None, reason="the native kernel needs an AVX-512 or AVX2 CPU and a C++ toolchain")
def test_native_decoder_step_equals_the_python_step(pair, monkeypatch):
    """The decoder stack in one native call (`native_decoder`) against the layer-by-layer step
    on the same prepared model: ragged inputs (a cross mask), beams and samples sharing their
    input's cross cache, attention capture."""
    from bertgen import generation
    hf, bg, eos, folder = pair
    model = prepare_model(bertgen.load(folder), device="cpu")
    assert generation.native_decoder(model) is not None and generation.native_decoder(bg) is None  # bg: plain
    ids, mask = ragged_batch()
    for kw in (dict(), dict(num_beams=3, num_return_sequences=2), dict(do_sample=True, num_return_sequences=2, seed=5),
               dict(num_beams=2, cache_dtype="bfloat16"), dict(cache_dtype="float16")):
        settings = resolve_settings(bg, max_new_tokens=10, **kw)
        fast = generate(model, ids, mask, settings, output_attentions=True)
        with monkeypatch.context() as patch:
            patch.setattr(generation, "native_decoder", lambda model: None)
            slow = generate(model, ids, mask, settings, output_attentions=True)
        assert torch.equal(fast.sequences, slow.sequences)
        torch.testing.assert_close(fast.sequence_scores, slow.sequence_scores, atol=1e-5, rtol=0)
        # A half-precision cache rounds each key and value to 8-11 bits: where the two steps'
        # fp32 sums differ in their last bit (LayerNorm and attention sum in other orders),
        # the rounding can fall either way and move a probability by ~1e-5.
        atol = 1e-5 if "cache_dtype" not in kw else 1e-4
        for a, b in zip(fast.cross_attentions + fast.decoder_attentions, slow.cross_attentions + slow.decoder_attentions):
            torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda m: f"{kw}: {m}")
    native = kernels.native_kernels()
    with pytest.raises(RuntimeError, match="a layer needs 18 tensors, got 2"):
        native.DecoderStep([[torch.ones(1), torch.ones(1)]], 32, 64, 4, 1, 1e-12)
    step, x = generation.native_decoder(model), torch.zeros(2, 32)
    cache = generation.new_cache(model, 2, 4, None, step)
    cross = model.cross_cache(torch.zeros(1, 3, 32), None, group=2)
    with pytest.raises(RuntimeError, match="self-attention cache full"):
        step(x, cache.keys, cache.values, cache.slots, 4, cross.keys, cross.values, None, 2, False)
    with pytest.raises(RuntimeError, match="rows are not groups of 3"):
        step(x, cache.keys, cache.values, cache.slots, 0, cross.keys, cross.values, None, 3, False)
    with pytest.raises(RuntimeError, match="slot 8 of row 1 is outside the pool of 8"):
        step(x, cache.keys, cache.values, cache.slots + 1, 3, cross.keys, cross.values, None, 2, False)


@pytest.mark.skipif(kernels.native_kernels() is None, reason="the native kernel needs an AVX-512 or AVX2 CPU and a C++ toolchain")
def test_bf16_weights_decode_as_the_fp32_model_with_its_weights_rounded(pair, tmp_path):
    """quantize="bf16-weights": the linear weights and the tied head / lookup in bf16 panels,
    widened as read, all arithmetic fp32: the very bits of an fp32 model whose weights were
    rounded to bf16 beforehand, through the native decoder step, at half the bytes."""
    from bertgen import generation
    from bertgen.kernels import PackedLinear, PanelEmbedding
    _, bg, _, folder = pair
    model = prepare_model(bertgen.load(folder), quantize="bf16-weights")
    rounded = bertgen.load(folder)
    with torch.no_grad():  # every linear weight, the LM head's included (tied to the lookup)
        for module in rounded.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(module.weight.bfloat16().float())
    reference = prepare_model(rounded, device="cpu")
    linears = [m for m in model.modules() if isinstance(m, PackedLinear)]
    assert linears and all(m.packed.storage == torch.bfloat16 and m.packed.dtype == torch.float32 for m in linears)
    assert isinstance(model.decoder.lm_head.decoder, PackedLinear)  # tied to the lookup or on its own
    assert generation.native_decoder(model) is not None and model.quantization == "bf16-weights"
    ids, mask = ragged_batch()
    with torch.inference_mode():
        for kw in (dict(), dict(num_beams=3, num_return_sequences=2, length_penalty=1.5)):
            settings = resolve_settings(bg, max_new_tokens=10, **kw)
            out = generate(model, ids, mask, settings, output_attentions=True)
            ref = generate(reference, ids, mask, settings, output_attentions=True)
            assert torch.equal(out.sequences, ref.sequences) and torch.equal(out.sequence_scores, ref.sequence_scores)
            assert all(torch.equal(a, b) for a, b in zip(out.cross_attentions, ref.cross_attentions))
    bertgen.save(model, tmp_path / "saved")  # saves as fp32: the rounded values
    saved = bertgen.load(tmp_path / "saved").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in rounded.state_dict().items())
    kernels.unpack_linears(model)  # trainable and movable again, in fp32
    assert not any(isinstance(m, (PackedLinear, PanelEmbedding)) for m in model.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="CPU only"):
        prepare_model(bertgen.load(folder), device="cuda", quantize="bf16-weights")
    with pytest.raises(ValueError, match="leave dtype unset"):
        prepare_model(bertgen.load(folder), dtype="bfloat16", quantize="bf16-weights")
    with pytest.raises(ValueError, match="cannot leave them unpacked"):
        prepare_model(bertgen.load(folder), quantize="bf16-weights", pack=False)


def test_bf16_weights_without_the_native_kernels_say_so(untied, monkeypatch):
    _, _, _, folder = untied
    model = bertgen.load(folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(kernels, "native_kernels", lambda: None)
    with pytest.raises(ValueError, match="native CPU kernels.*float32 or int8"):
        prepare_model(model, quantize="bf16-weights")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing changed


def test_int8_quantization_keeps_tied_embeddings(untied):
    _, bg, _, folder = untied
    model = bertgen.load(folder)
    embeddings = model.decoder.bert.embeddings.word_embeddings.weight.detach().clone()
    pipe = pipeline(model=model, quantize="int8")
    from torch.ao.nn.quantized.dynamic import Linear as QLinear
    assert isinstance(model.decoder.bert.encoder.layer[0].attention.self.query, QLinear)
    assert isinstance(model.decoder.lm_head.proj, QLinear)
    assert torch.equal(model.decoder.bert.embeddings.word_embeddings.weight, embeddings)
    ids, mask = ragged_batch()
    settings = resolve_settings(bg, max_new_tokens=6)
    with torch.inference_mode():
        cross = model.cross_cache(model.encode(ids, mask).last_hidden_state, mask)
        ref_cross = bg.cross_cache(bg.encode(ids, mask).last_hidden_state, mask)
        start = torch.full((len(ids), 1), BOS)
        q, _ = model.decode_step(start, model.new_cache(len(ids), 1), cross)
        f, _ = bg.decode_step(start, bg.new_cache(len(ids), 1), ref_cross)
    assert torch.corrcoef(torch.stack([q.flatten(), f.flatten()]))[0, 1] > 0.99
    assert len(pipe.run(["w5 w6 w7"], settings=settings)[0].new_tokens) == 1
    with pytest.raises(ValueError, match="CPU"):
        prepare_model(bertgen.load(folder), device="cuda", quantize="int8")
    with pytest.raises(ValueError, match="quantize"):
        prepare_model(bertgen.load(folder), quantize="3bit")


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------
def run_cli(*args, stdin: str | None = None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bertgen", *args], input=stdin, capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


def test_cli_generate(untied):
    _, _, _, folder = untied
    pipe = pipeline(model=folder, device="cpu")
    lines = ["w5 w6 w7", "w9 w20", "w30 w31 w32 w33"]
    done = run_cli("generate", "--model", str(folder), "--num-beams", "2", "--max-new-tokens", "6",
                   "--json", "--batch-size", "2", stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["input"] for r in records] == lines
    assert [r["text"] for r in records] == [r.text for r in pipe.run(lines, num_beams=2, max_new_tokens=6)]
    assert {"text", "score", "seconds", "new_tokens", "truncated"} <= set(records[0])


@pytest.mark.skipif(kernels.native_kernels() is None, reason="the native kernel needs an AVX-512 or AVX2 CPU and a C++ toolchain")
def test_cli_generate_with_bf16_weights(untied):
    _, _, _, folder = untied
    pipe = pipeline(model=folder, quantize="bf16-weights")
    done = run_cli("generate", "--model", str(folder), "--quantize", "bf16-weights", "--max-new-tokens", "6",
                   "--json", "w5 w6 w7")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["text"] == pipe.run(["w5 w6 w7"], max_new_tokens=6)[0].text


def test_cli_errors_are_one_line(untied, capsys):
    _, _, _, folder = untied
    from bertgen.__main__ import main

    assert main(["generate", "--model", str(folder), "--max-new-tokens", "4", "w5 w6"]) == 0
    assert capsys.readouterr().out.count("\n") == 1
    assert main(["generate", "--model", str(folder), "--num-beams", "0", "w5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_beams" in err
    for stdin, message in ((b"w5\ncaf\xe9\n", "line 2 is not valid UTF-8"), (b"w5\n\nw6\n", "line 2 is empty")):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
            assert main(["generate", "--model", str(folder), "--max-new-tokens", "2"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    with pytest.MonkeyPatch.context() as mp:  # one output line per input line, whatever is inside
        mp.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("w5\u2028w6\x85\nw7\r\n".encode()), encoding="utf-8"))
        assert main(["generate", "--model", str(folder), "--max-new-tokens", "2", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["input"] for line in lines] == ["w5\u2028w6\x85", "w7"]
    done = run_cli("generate", "--model", str(folder / "missing"), "w5")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--model", str(folder), "--num-beams", "two"])
    assert exit_info.value.code == 2


def test_cli_convert(untied, tmp_path, capsys):
    _, bg, _, folder = untied
    from bertgen.__main__ import main

    assert main(["convert", str(folder), str(tmp_path / "copy"), "--omit-tied"]) == 0
    copy = bertgen.load(tmp_path / "copy")
    for (name, a), (_, b) in zip(bg.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), name
    assert (tmp_path / "copy" / "vocab.txt").is_file()
    assert json.loads((tmp_path / "copy" / "generation_config.json").read_text())["eos_token_id"] == bg.config.eos_token_id
