"""Tokenizers for bertgen checkpoints, with no `transformers` needed at run time.

Why this module: the checkpoints we load ship one of four vocabularies: a sentencepiece
`spiece.model` (the google BertGeneration checkpoints), a `tokenizers` file `tokenizer.json`,
a WordPiece `vocab.txt` (BERT, the WMT bert2bert checkpoints) or byte-level BPE
`vocab.json` + `merges.txt` (RoBERTa). `load_tokenizer(folder)` reads any of them behind one
small interface (`BaseTokenizer`) and gives the same ids and decoded text as the matching
transformers tokenizer (the tests check this), and `save_pretrained` writes folders that
`transformers.AutoTokenizer` loads back with the same ids. `train_sentencepiece` makes new
vocabularies (google's id convention) for test fixtures and randomly initialised models.

Conventions shared by every backend:
- No special tokens are added unless asked for: per call (`add_special_tokens=True`) or per
  tokenizer (constructor flag, saved as `bertgen_add_special_tokens` in tokenizer_config.json).
  Asked for, sentencepiece gives `<s> text </s>` (the wikisplit checkpoint needs it);
  WordPiece gives `[CLS] text [SEP]` and BPE `<s> text </s>`, as transformers does.
- Special-token strings inside text (`<::::>`, `<s>`, `[SEP]`, ...) become their single id,
  as in transformers (there they are added tokens, split out before the subword model runs).
- `encode("")` is `[]`. A `__call__` batch is padded to at least one position, so empty
  texts give a row of padding with attention_mask 0 (transformers does the same for an
  empty text inside a batch), never a (B, 0) tensor that models cannot take.
- `decode` skips special tokens by default and otherwise reproduces transformers' text.
"""

from __future__ import annotations

import abc
import io
import json
import os
import re
import warnings
from pathlib import Path

import sentencepiece as spm
import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors

__all__ = ["BaseTokenizer", "BertGenerationTokenizer", "FastTokenizer", "load_tokenizer",
           "train_sentencepiece", "clean_up_tokenization"]

# transformers' order; it decides the ids of special tokens missing from a vocabulary.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")
DEFAULT_MODEL_MAX_LENGTH = 512  # the BertGeneration position embeddings
SPIECE_UNDERLINE = "\u2581"
OUR_CONFIG_KEY = "bertgen_add_special_tokens"

BERT_SPECIALS = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                     mask_token="[MASK]")
ROBERTA_SPECIALS = dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def clean_up_tokenization(text: str) -> str:
    """transformers' optional clean-up of spaces before punctuation and contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                          (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                          (" 're", "'re")):
        text = text.replace(before, after)
    return text


def _check_text(text, where: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{where} must be a str, got {type(text).__name__}: {text!r:.80}")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # the backends would fail with an opaque C++ cast error
            raise ValueError(
                f"{where} holds a lone surrogate (U+{ord(text[err.start]):04X} at character {err.start}), "
                "which is not valid Unicode; it usually comes from bytes that were not valid UTF-8. "
                "Fix the input's encoding, or decode it with errors='replace'") from None
    return text


def _id_list(ids) -> list[int]:
    """A flat list of ints from a list, tuple, tensor or array of ids."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    ids = list(ids)
    if any(not isinstance(i, int) for i in ids):
        raise TypeError("decode takes one sequence of int ids; use batch_decode for a batch")
    return ids


class BaseTokenizer(abc.ABC):
    """The interface bertgen uses; backends provide the subword model, this class the rest.

    Backends implement `tokenize`, `_encode_plain`, `_decode`, `convert_ids_to_tokens`,
    `token_to_id`, `vocab_size`, `__len__`, `save_vocabulary` and `_special_affixes`."""

    tokenizer_class = ""  # the transformers class written to tokenizer_config.json

    def __init__(self, special_tokens: dict[str, str | None], extra_special_tokens=(),
                 model_max_length: int | None = None, add_special_tokens: bool = False,
                 clean_up_tokenization_spaces: bool = False):
        self.special_tokens = {k: str(v) for k, v in special_tokens.items() if v is not None}
        self.extra_special_tokens = [str(t) for t in extra_special_tokens]
        self.model_max_length = int(model_max_length or DEFAULT_MODEL_MAX_LENGTH)
        self.add_special_tokens = bool(add_special_tokens)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)

    # -- the backend's part -------------------------------------------------------------
    @abc.abstractmethod
    def tokenize(self, text: str) -> list[str]:
        """Subword strings of `text`, without special tokens added."""

    @abc.abstractmethod
    def _encode_plain(self, text: str) -> list[int]:
        """Ids of `text` without special tokens added."""

    @abc.abstractmethod
    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str: ...

    @abc.abstractmethod
    def _special_affixes(self) -> tuple[list[int], list[int]]:
        """(prefix, suffix) ids that `add_special_tokens=True` puts around a text."""

    @abc.abstractmethod
    def convert_ids_to_tokens(self, ids) -> list[str]:
        """Token strings of ids (e.g. attention heatmap labels); IndexError for unknown ids."""

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of one token string, None when it is not in the vocabulary."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Size of the base vocabulary (without added tokens), as in transformers."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Size of the whole vocabulary, added tokens included: the model's embedding rows."""

    @abc.abstractmethod
    def save_vocabulary(self, save_directory, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Writes the vocabulary files; returns their paths (like transformers)."""

    def _config(self) -> dict:
        """Backend entries of tokenizer_config.json."""
        return {}

    # -- special tokens: pad_token_id, eos_token_id, ... (None when the tokenizer has none) --
    def _special_id(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self.token_to_id(token)

    pad_token_id = property(lambda self: self._special_id("pad_token"))
    eos_token_id = property(lambda self: self._special_id("eos_token"))
    bos_token_id = property(lambda self: self._special_id("bos_token"))
    unk_token_id = property(lambda self: self._special_id("unk_token"))
    sep_token_id = property(lambda self: self._special_id("sep_token"))
    cls_token_id = property(lambda self: self._special_id("cls_token"))
    mask_token_id = property(lambda self: self._special_id("mask_token"))

    @property
    def all_special_tokens(self) -> list[str]:
        """Named then extra special tokens, without repeats (transformers' order)."""
        named = [self.special_tokens[n] for n in SPECIAL_TOKEN_NAMES if n in self.special_tokens]
        return list(dict.fromkeys(named + self.extra_special_tokens))

    @property
    def all_special_ids(self) -> list[int]:
        return [self.token_to_id(t) for t in self.all_special_tokens]

    # -- encoding ----------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Ids of one text; with `add_special_tokens`, wrapped as the checkpoint expects."""
        ids = self._encode_plain(_check_text(text))
        if add_special_tokens:
            prefix, suffix = self._special_affixes()
            ids = prefix + ids + suffix
        return ids

    def __call__(self, texts: str | list[str], padding: bool | str = True, truncation: bool = True,
                 max_length: int | None = None, add_special_tokens: bool | None = None,
                 return_tensors: str | None = "pt") -> dict:
        """Batch encoding: dict(input_ids, attention_mask), right-padded with the pad id.

        padding: True/"longest" pads to the longest text (at least 1 position, see module
        docstring), "max_length" to `max_length`, False not at all (lists may be ragged).
        truncation cuts each text to `max_length` (default `model_max_length`) ids, special
        tokens included and kept, and warns how many ids were cut from how many texts.
        add_special_tokens None means the tokenizer's default. return_tensors "pt" gives
        torch.long tensors of shape (batch, length), None lists (flat for a single str)."""
        single = isinstance(texts, str)
        batch = [texts] if single else texts
        if not isinstance(batch, (list, tuple)):
            raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
        for i, text in enumerate(batch):
            _check_text(text, f"texts[{i}]")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        add = self.add_special_tokens if add_special_tokens is None else add_special_tokens
        prefix, suffix = self._special_affixes() if add else ([], [])
        limit = max_length or self.model_max_length
        keep = max(limit - len(prefix) - len(suffix), 0)

        rows, cut_ids, cut_texts = [], 0, 0
        for text in batch:
            ids = self._encode_plain(text)
            if truncation and len(ids) > keep:
                cut_ids, cut_texts = cut_ids + len(ids) - keep, cut_texts + 1
                ids = ids[:keep]
            rows.append(prefix + ids + suffix)
        if cut_texts:
            warnings.warn(f"Truncated {cut_ids} tokens from {cut_texts} of {len(batch)} inputs "
                          f"to max_length={limit}.", stacklevel=2)

        masks = [[1] * len(r) for r in rows]
        if padding:
            width = max([len(r) for r in rows] + [1])
            if padding == "max_length" and max_length:
                width = max(width, max_length)
            if any(len(r) < width for r in rows):
                if self.pad_token_id is None:
                    raise ValueError("this tokenizer has no pad token; pass padding=False")
                rows = [r + [self.pad_token_id] * (width - len(r)) for r in rows]
                masks = [m + [0] * (width - len(m)) for m in masks]
        if return_tensors == "pt":
            import torch
            if len({len(r) for r in rows}) > 1:
                raise ValueError("texts have different lengths: use padding=True for tensors")
            return {"input_ids": torch.tensor(rows, dtype=torch.long).reshape(len(rows), -1),
                    "attention_mask": torch.tensor(masks, dtype=torch.long).reshape(len(rows), -1)}
        if single:
            return {"input_ids": rows[0], "attention_mask": masks[0]}
        return {"input_ids": rows, "attention_mask": masks}

    # -- decoding ----------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of one sequence of ids (list or tensor); special tokens skipped by default."""
        return self._decode(_id_list(ids), skip_special_tokens)

    def decode_generated(self, ids) -> str:
        """Text of generated ids: special tokens dropped except a separator that is not also
        the EOS (`<::::>` between split sentences, which skip_special_tokens would lose)."""
        sep = self.sep_token_id
        eos = self.eos_token_id  # BERT vocabularies have none: their [SEP] ends the output
        keep = {sep} if sep is not None and eos is not None and sep != eos else set()
        drop = set(self.all_special_ids) - keep
        text = self._decode([i for i in _id_list(ids) if i not in drop], skip_special_tokens=False)
        if keep:
            token = self.convert_ids_to_tokens([sep])[0]
            text = re.sub(r"\s*" + re.escape(token) + r"\s*", f" {token} ", text).strip()
        return text

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        """Texts of a batch of sequences (list of lists or a 2-D tensor)."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(seq, skip_special_tokens) for seq in sequences]

    # -- saving --------------------------------------------------------------------------------
    def save_pretrained(self, folder) -> tuple[str, ...]:
        """Writes vocabulary + tokenizer_config.json + special_tokens_map.json, loadable by
        `load_tokenizer` and by `transformers.AutoTokenizer` (same ids)."""
        os.makedirs(folder, exist_ok=True)
        files = self.save_vocabulary(folder)
        specials = dict(self.special_tokens)
        if self.extra_special_tokens:
            specials["extra_special_tokens"] = list(self.extra_special_tokens)
        config = {"tokenizer_class": self.tokenizer_class, **specials, **self._config(),
                  "model_max_length": self.model_max_length,
                  "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
                  OUR_CONFIG_KEY: self.add_special_tokens}
        for name, content in (("tokenizer_config.json", config),
                              ("special_tokens_map.json", specials)):
            path = os.path.join(folder, name)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2, ensure_ascii=False)
            files += (path,)
        return files

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(len={len(self)}, specials={self.special_tokens}, "
                f"add_special_tokens={self.add_special_tokens})")


def _added_tokens_config(added: dict[int, AddedToken]) -> dict:
    """transformers' `added_tokens_decoder` entry of tokenizer_config.json."""
    return {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                     "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
            for i, t in sorted(added.items())}


class BertGenerationTokenizer(BaseTokenizer):
    """The BertGeneration sentencepiece tokenizer (`spiece.model`), same ids as transformers'.

    `sp_model_kwargs` go to `SentencePieceProcessor` (e.g. enable_sampling, nbest_size, alpha
    for subword regularisation). Special tokens missing from the sentencepiece vocabulary get
    ids after it, in transformers' order."""

    tokenizer_class = "BertGenerationTokenizer"
    vocab_file_name = "spiece.model"

    def __init__(self, vocab_file, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                 pad_token="<pad>", sep_token="<::::>", sp_model_kwargs: dict | None = None,
                 add_special_tokens: bool = False, model_max_length: int | None = None,
                 extra_special_tokens=(), added_tokens: dict[int, str] | None = None,
                 clean_up_tokenization_spaces: bool = False):
        super().__init__(dict(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token,
                              pad_token=pad_token, sep_token=sep_token),
                         extra_special_tokens, model_max_length, add_special_tokens,
                         clean_up_tokenization_spaces)
        self.vocab_file = str(vocab_file)
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.Load(self.vocab_file)
        # Everything split out of text before sentencepiece runs: token -> id.
        self._added = {str(t): int(i) for i, t in sorted((added_tokens or {}).items())}
        for token in self.all_special_tokens:
            if token not in self._added:
                found = self._piece_id(token)
                self._added[token] = len(self) if found is None else found
        self._added_by_id = {i: t for t, i in self._added.items()}
        alternatives = sorted(self._added, key=len, reverse=True)  # longest match wins
        self._split_re = re.compile("(" + ("|".join(map(re.escape, alternatives)) or "(?!)") + ")")

    def _piece_id(self, piece: str) -> int | None:
        i = self.sp_model.piece_to_id(piece)
        return i if self.sp_model.id_to_piece(i) == piece else None

    @property
    def vocab_size(self) -> int:
        return self.sp_model.get_piece_size()

    def __len__(self) -> int:
        return max([self.vocab_size - 1, *self._added.values()]) + 1

    def token_to_id(self, token: str) -> int | None:
        return self._added[token] if token in self._added else self._piece_id(token)

    def tokenize(self, text: str) -> list[str]:
        tokens = []
        for chunk in self._split_re.split(_check_text(text)):
            if chunk in self._added:
                tokens.append(chunk)
            elif chunk:
                tokens.extend(self.sp_model.encode(chunk, out_type=str))
        return tokens

    def _encode_plain(self, text: str) -> list[int]:
        # Pieces first, then ids (transformers' path): with sampling on, one sample per call.
        return [self._added[t] if t in self._added else self.sp_model.piece_to_id(t)
                for t in self.tokenize(text)]

    def _special_affixes(self) -> tuple[list[int], list[int]]:
        bos, eos = self.bos_token_id, self.eos_token_id
        return [bos] if bos is not None else [], [eos] if eos is not None else []

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self._added_by_id[i] if i in self._added_by_id else self.sp_model.id_to_piece(i)
                for i in _id_list(ids)]

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        # transformers joins the pieces (it does not call sentencepiece's decode): unknown
        # pieces read "<unk>", not " ⁇ ".
        if skip_special_tokens:
            skip = set(self.all_special_ids)
            ids = [i for i in ids if i not in skip]
        text = "".join(self.convert_ids_to_tokens(ids)).replace(SPIECE_UNDERLINE, " ").strip()
        return clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def save_vocabulary(self, save_directory, filename_prefix: str | None = None) -> tuple[str, ...]:
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "")
                            + self.vocab_file_name)
        with open(path, "wb") as f:
            f.write(self.sp_model.serialized_model_proto())
        return (path,)

    def _config(self) -> dict:
        added = {i: AddedToken(t, special=t in self.all_special_tokens, normalized=False)
                 for t, i in self._added.items() if i >= self.vocab_size}
        config = {"added_tokens_decoder": _added_tokens_config(added)} if added else {}
        if self.sp_model_kwargs:
            config["sp_model_kwargs"] = self.sp_model_kwargs
        return config


class FastTokenizer(BaseTokenizer):
    """A `tokenizers`-library tokenizer: WordPiece (BERT), byte-level BPE (RoBERTa) or any
    `tokenizer.json`. Built like transformers' BertTokenizer / RobertaTokenizer, so ids match.

    `init_config` holds tokenizer_config.json entries written back on save (do_lower_case, ...)."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, special_tokens: dict[str, str | None],
                 tokenizer_class: str = "PreTrainedTokenizerFast", init_config: dict | None = None,
                 added_tokens: dict[int, AddedToken] | None = None, extra_special_tokens=(),
                 model_max_length: int | None = None, add_special_tokens: bool = False,
                 clean_up_tokenization_spaces: bool = False):
        super().__init__(special_tokens, extra_special_tokens, model_max_length, add_special_tokens,
                         clean_up_tokenization_spaces)
        self.tokenizer_class = tokenizer_class
        self.init_config = dict(init_config or {})
        self._tok = tokenizer
        # __call__ pads and truncates itself; a tokenizer.json may carry its own settings.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        have = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        tokenizer.add_tokens([t for _, t in sorted((added_tokens or {}).items()) if t.content not in have])
        have = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        missing = [t for t in self.all_special_tokens if t not in have]
        tokenizer.add_special_tokens([AddedToken(t, special=True) for t in missing])

    @classmethod
    def from_wordpiece(cls, vocab_file, do_lower_case: bool = True, strip_accents: bool | None = None,
                       tokenize_chinese_chars: bool = True, **kwargs) -> "FastTokenizer":
        """BERT's WordPiece from `vocab.txt`, pipeline and defaults as transformers' BertTokenizer;
        `add_special_tokens=True` gives [CLS] text [SEP]."""
        specials = _pop_specials(kwargs, BERT_SPECIALS)
        tok = tokenizers.Tokenizer(models.WordPiece(str(vocab_file), unk_token=specials["unk_token"]))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents, lowercase=do_lower_case)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        config = dict(do_lower_case=do_lower_case, strip_accents=strip_accents,
                      tokenize_chinese_chars=tokenize_chinese_chars)
        self = cls(tok, specials, "BertTokenizer", config, **kwargs)
        cls_token, sep_token = specials["cls_token"], specials["sep_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls_token}:0 $A:0 {sep_token}:0",
            pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
            special_tokens=[(cls_token, self.token_to_id(cls_token)),
                            (sep_token, self.token_to_id(sep_token))])
        return self

    @classmethod
    def from_byte_level_bpe(cls, vocab_file, merges_file, add_prefix_space: bool = False,
                            trim_offsets: bool = True, **kwargs) -> "FastTokenizer":
        """RoBERTa's byte-level BPE from `vocab.json` + `merges.txt`, as transformers'
        RobertaTokenizer; `add_special_tokens=True` gives <s> text </s>."""
        specials = _pop_specials(kwargs, ROBERTA_SPECIALS)
        tok = tokenizers.Tokenizer(models.BPE(
            str(vocab_file), str(merges_file), dropout=None, continuing_subword_prefix="",
            end_of_word_suffix="", fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
        tok.decoder = decoders.ByteLevel()
        config = dict(add_prefix_space=add_prefix_space, trim_offsets=trim_offsets)
        self = cls(tok, specials, "RobertaTokenizer", config, **kwargs)
        sep_token, cls_token = specials["sep_token"], specials["cls_token"]
        tok.post_processor = processors.RobertaProcessing(
            (sep_token, self.token_to_id(sep_token)), (cls_token, self.token_to_id(cls_token)),
            trim_offsets=trim_offsets, add_prefix_space=add_prefix_space)
        return self

    @classmethod
    def from_file(cls, tokenizer_file, tokenizer_class: str | None = None, **kwargs) -> "FastTokenizer":
        """A `tokenizer.json` as saved by the tokenizers library (its own post-processor)."""
        defaults = {"BertTokenizer": BERT_SPECIALS, "RobertaTokenizer": ROBERTA_SPECIALS}
        name = (tokenizer_class or "").removesuffix("Fast")
        tokenizer_class = name if name in defaults else "PreTrainedTokenizerFast"
        specials = _pop_specials(kwargs, defaults.get(name, {}))
        return cls(tokenizers.Tokenizer.from_file(str(tokenizer_file)), specials, tokenizer_class, **kwargs)

    @property
    def backend_tokenizer(self) -> tokenizers.Tokenizer:
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(_check_text(text), add_special_tokens=False).tokens

    def _encode_plain(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _special_affixes(self) -> tuple[list[int], list[int]]:
        # What the post-processor puts before and after a one-word text.
        encoding = self._tok.encode("a", add_special_tokens=True)
        inside = [k for k, s in enumerate(encoding.sequence_ids) if s is not None]
        if not inside:
            return encoding.ids, []
        return encoding.ids[:inside[0]], encoding.ids[inside[-1] + 1:]

    def convert_ids_to_tokens(self, ids) -> list[str]:
        tokens = [self._tok.id_to_token(i) for i in _id_list(ids)]
        if None in tokens:
            raise IndexError(f"id {_id_list(ids)[tokens.index(None)]} is not in the vocabulary "
                             f"(size {len(self)})")
        return tokens

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        text = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        # transformers skips the clean-up for BPE: it would delete real spaces.
        if self.clean_up_tokenization_spaces and not isinstance(self._tok.model, models.BPE):
            text = clean_up_tokenization(text)
        return text

    def save_vocabulary(self, save_directory, filename_prefix: str | None = None) -> tuple[str, ...]:
        return tuple(self._tok.model.save(str(save_directory), filename_prefix))

    def save_pretrained(self, folder) -> tuple[str, ...]:
        files = super().save_pretrained(folder)
        path = os.path.join(folder, "tokenizer.json")
        self._tok.save(path)
        return files + (path,)

    def _config(self) -> dict:
        config = dict(self.init_config)
        added = self._tok.get_added_tokens_decoder()
        if added:
            config["added_tokens_decoder"] = _added_tokens_config(added)
        return config


def _pop_specials(kwargs: dict, defaults: dict) -> dict:
    """Named special tokens out of kwargs, defaults filled in (None removes a default)."""
    specials = {name: kwargs.pop(name, defaults.get(name)) for name in SPECIAL_TOKEN_NAMES}
    return {name: token for name, token in specials.items() if token is not None}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _content(token):
    """A token string from a config value ("<s>" or {"content": "<s>", ...})."""
    return token.get("content") if isinstance(token, dict) else token


def load_tokenizer(folder, **overrides) -> BaseTokenizer:
    """The tokenizer of a checkpoint folder, chosen by the files present: spiece.model >
    tokenizer.json > vocab.txt > vocab.json + merges.txt. tokenizer_config.json and
    special_tokens_map.json are read when present (the latter wins for special tokens, and
    `overrides` over both, as in transformers), e.g. `load_tokenizer(wmt, bos_token="<s>")`
    or `load_tokenizer(wikisplit, add_special_tokens=True)`."""
    folder = Path(folder)
    looked_for = "spiece.model, tokenizer.json, vocab.txt, vocab.json + merges.txt"
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {str(folder)!r} does not exist "
                                f"(looked for {looked_for})")
    config = _read_json(folder / "tokenizer_config.json")
    config.update(_read_json(folder / "special_tokens_map.json"))
    if "add_special_tokens" in overrides:
        overrides[OUR_CONFIG_KEY] = overrides.pop("add_special_tokens")
    config.update(overrides)

    kwargs = {name: _content(config[name]) for name in SPECIAL_TOKEN_NAMES if name in config}
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    kwargs["extra_special_tokens"] = [_content(t) for t in extra if _content(t) not in kwargs.values()]
    for ours, theirs in (("model_max_length", "model_max_length"),
                         ("clean_up_tokenization_spaces", "clean_up_tokenization_spaces"),
                         ("add_special_tokens", OUR_CONFIG_KEY)):
        if theirs in config:
            kwargs[ours] = config[theirs]
    if (kwargs.get("model_max_length") or 0) > 1e9:  # transformers' "no limit" placeholder
        kwargs["model_max_length"] = None
    added = config.get("added_tokens_decoder", {})

    if (folder / "spiece.model").is_file():
        return BertGenerationTokenizer(
            folder / "spiece.model", sp_model_kwargs=config.get("sp_model_kwargs"),
            added_tokens={int(i): _content(t) for i, t in added.items()}, **kwargs)
    kwargs["added_tokens"] = {int(i): AddedToken(**t) if isinstance(t, dict) else AddedToken(t)
                              for i, t in added.items()}
    if (folder / "tokenizer.json").is_file():
        fast = FastTokenizer.from_file(folder / "tokenizer.json", config.get("tokenizer_class"), **kwargs)
        fast.init_config = {k: config[k] for k in ("do_lower_case", "strip_accents",
                                                   "tokenize_chinese_chars", "add_prefix_space",
                                                   "trim_offsets") if k in config}
        return fast
    if (folder / "vocab.txt").is_file():
        options = {k: config[k] for k in ("do_lower_case", "strip_accents", "tokenize_chinese_chars")
                   if k in config}
        return FastTokenizer.from_wordpiece(folder / "vocab.txt", **options, **kwargs)
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        options = {k: config[k] for k in ("add_prefix_space", "trim_offsets") if k in config}
        return FastTokenizer.from_byte_level_bpe(folder / "vocab.json", folder / "merges.txt",
                                                 **options, **kwargs)
    raise FileNotFoundError(f"no tokenizer files in {str(folder)!r}: looked for {looked_for}")


def train_sentencepiece(texts, vocab_size: int, out_dir, model_type: str = "unigram",
                        seed: int = 0, character_coverage: float = 1.0,
                        **trainer_options) -> BertGenerationTokenizer:
    """Trains `out_dir/spiece.model` on an iterable of str and returns its tokenizer.

    Ids follow the google checkpoints: pad 0, eos 1, bos 2, unk 3, then `<::::>` (a
    user-defined symbol, so it is never split). Deterministic: one thread, no sampling or
    shuffling of the input, a fixed seed. `vocab_size` is an upper bound
    (hard_vocab_limit=False) so that tiny corpora work: check `len(tokenizer)`."""
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")

    # sentencepiece loads the whole corpus anyway; a list lets bad input fail here, clearly.
    texts = [_check_text(text, f"texts[{i}]") for i, text in enumerate(texts)]
    if not texts:
        raise ValueError("train_sentencepiece needs at least one text")

    options = dict(vocab_size=vocab_size, model_type=model_type,
                   pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                   pad_piece="<pad>", eos_piece="</s>", bos_piece="<s>", unk_piece="<unk>",
                   user_defined_symbols=["<::::>"], character_coverage=character_coverage,
                   hard_vocab_limit=False, input_sentence_size=0, shuffle_input_sentence=False,
                   num_threads=1, minloglevel=2)
    options.update(trainer_options)
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, **options)

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "spiece.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    tokenizer = BertGenerationTokenizer(path)
    tokenizer.save_pretrained(out_dir)
    return tokenizer
