"""Decoding for `EncoderDecoderModel`: greedy, sampling and beam search over a preallocated cache.

Why our own loop instead of `transformers.generate`: it is a few hundred lines we can read, it
computes cross-attention keys/values once per input and lets all of that input's beams share them,
it drops inputs from the batch as soon as they are finished, and it can hand back the
cross-attention of the *final* hypothesis (following beam back-pointers), which the reference
cannot. The scoring follows transformers 5 exactly (logits processors, the vectorised beam search,
length penalty, early stopping), so the same settings give the same tokens.

`generate` runs one batch to the end; `stream` yields the text of one input as it grows.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .checkpoints import generation_defaults
from .kernels import PANEL_ACTIVATIONS, PackedLinear, PanelWeight, constant_zeros, linear
from .modeling import CrossAttentionCache, EncoderDecoderModel, SelfAttentionCache

DEFAULT_MAX_NEW_TOKENS = 64
UNSET = "none"  # a setting's value that switches a checkpoint's default off (None: "not given")
MAX_BEAMS = 256  # num_beams and num_return_sequences: far beyond use, far below an allocator crash
MIN_TEMPERATURE = 1e-4  # below this, scaled scores overflow float32; the result is greedy either way
CACHE_DTYPES = ("float32", "bfloat16", "float16")
NEG = -1.0e9  # transformers' "impossible" beam score (an unfilled result slot has it)
# A finished hypothesis whose score is -inf (a zero-probability pick of beam sampling, or all
# that is left when bans leave fewer candidates than slots) ranks here: below every real score,
# above an unfilled slot, so an empty placeholder is never returned. It is reported as -inf.
UNLIKELY = NEG / 2


# ----------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------
@dataclass
class GenerationSettings:
    """Decoding settings with transformers' names and meanings, checked on construction.

    Lengths count as in transformers for encoder-decoder models: `max_length` and `min_length`
    include the decoder start token; `max_new_tokens` / `min_new_tokens` do not. When neither
    `max_new_tokens` nor `max_length` is given, 64 new tokens are allowed."""

    max_new_tokens: int | None = None
    max_length: int | None = None
    min_length: int = 0
    min_new_tokens: int = 0
    do_sample: bool = False
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    seed: int | None = None
    # bertgen's own (not in transformers): EOS is banned until this token has been generated.
    # The bundled split checkpoint sets it to `<::::>`: a split model must return two sentences.
    required_token_id: int | None = None
    # bertgen's own: the dtype the KV caches are stored in (None: the model's). "bfloat16" halves
    # their memory (fp32 caches of a 24-layer model, 8 inputs x 4 beams, are 17% of its weights);
    # attention still computes in the model's dtype, so on CPU each step pays a conversion.
    cache_dtype: str | None = None
    decoder_start_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        _int(self, "max_new_tokens", 1, optional=True)
        _int(self, "max_length", 2, optional=True)
        for name in ("min_length", "min_new_tokens", "no_repeat_ngram_size", "top_k"):
            _int(self, name, 0)
        _int(self, "num_beams", 1, high=MAX_BEAMS)
        _int(self, "num_return_sequences", 1, high=MAX_BEAMS)
        _int(self, "seed", 0, optional=True, high=2**64 - 1)
        for name in ("decoder_start_token_id", "pad_token_id", "required_token_id"):
            _int(self, name, 0, optional=True)
        if isinstance(self.eos_token_id, (list, tuple)):
            if not self.eos_token_id:
                raise ValueError("eos_token_id must not be an empty list")
            for value in self.eos_token_id:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"eos_token_id must hold token ids (integers >= 0), got {self.eos_token_id!r}")
            self.eos_token_id = list(self.eos_token_id)
        else:
            _int(self, "eos_token_id", 0, optional=True)
        if self.cache_dtype is not None and self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype must be one of {', '.join(CACHE_DTYPES)} (or None: the model's), "
                             f"got {self.cache_dtype!r}")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be True or False, got {self.do_sample!r}")
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        _float(self, "length_penalty")
        _float(self, "repetition_penalty")
        _float(self, "temperature")
        _float(self, "top_p")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0 turns it off), got {self.repetition_penalty}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature} "
                             "(for deterministic output use do_sample=False)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ValueError(f"greedy decoding returns one sequence per input; num_return_sequences="
                             f"{self.num_return_sequences} needs num_beams >= {self.num_return_sequences} "
                             "or do_sample=True")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams "
                             f"({self.num_beams}) in beam search")

    @property
    def new_tokens(self) -> int:
        """How many tokens may be generated (max_new_tokens wins over max_length, as in HF)."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.max_length is not None:
            return self.max_length - 1
        return DEFAULT_MAX_NEW_TOKENS

    @property
    def eos_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, list) else [self.eos_token_id]

    @property
    def cache_torch_dtype(self) -> torch.dtype | None:
        return None if self.cache_dtype is None else getattr(torch, self.cache_dtype)

    @property
    def mode(self) -> str:
        if self.num_beams > 1:
            return "beam-sample" if self.do_sample else "beam"
        return "sample" if self.do_sample else "greedy"

    def replace(self, **changes) -> "GenerationSettings":
        """A copy with `changes` applied (and checked); unknown names are an error."""
        _check_names(changes, "setting")
        return dataclasses.replace(self, **_layer(dataclasses.asdict(self), changes))

    def check_model(self, model: EncoderDecoderModel) -> None:
        """Checks what depends on the model: position budget and token ids."""
        dec = model.config.decoder
        needed = 1 + self.new_tokens
        if needed > dec.max_position_embeddings:
            raise ValueError(f"max_new_tokens={self.new_tokens} needs {needed} decoder positions (start token "
                             f"included) but the model has {dec.max_position_embeddings}; use at most "
                             f"{dec.max_position_embeddings - 1}")
        for name in ("decoder_start_token_id", "pad_token_id", "required_token_id"):
            value = getattr(self, name)
            if value is not None and value >= dec.vocab_size:
                raise ValueError(f"{name}={value} is not below the vocabulary size {dec.vocab_size}")
        for value in self.eos_ids:
            if value >= dec.vocab_size:
                raise ValueError(f"eos_token_id={value} is not below the vocabulary size {dec.vocab_size}")
        if self.decoder_start_token_id is None:
            raise ValueError("no decoder_start_token_id: the model config and the settings lack one")


def _int(settings, name: str, low: int, optional: bool = False, high: int | None = None) -> None:
    value = getattr(settings, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


def _float(settings, name: str) -> None:
    value = getattr(settings, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    setattr(settings, name, float(value))


SETTING_NAMES = tuple(f.name for f in fields(GenerationSettings))
# Pairs where a later layer that sets one also overrides an earlier layer's other one.
_LENGTH_ALIASES = {"max_new_tokens": "max_length", "max_length": "max_new_tokens"}


def _check_names(values: dict, what: str) -> None:
    unknown = sorted(set(values) - set(SETTING_NAMES))
    if unknown:
        raise ValueError(f"unknown {what}{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}; "
                         f"known: {', '.join(SETTING_NAMES)}")


def _layer(base: dict, top: dict) -> dict:
    """`top` over `base`: None means "not given" (keep base's value), UNSET switches it off."""
    out = dict(base)
    for key, value in top.items():
        if value is None:
            continue
        out[key] = None if value == UNSET else value
        if key in _LENGTH_ALIASES:
            out[_LENGTH_ALIASES[key]] = None
    return out


def resolve_settings(model: EncoderDecoderModel, task_defaults: dict | None = None,
                     **caller: Any) -> GenerationSettings:
    """Settings from, in rising priority: the model's token ids, the checkpoint's
    generation_config.json, the task's defaults, the caller. None means "not given".

    Keys of generation_config.json that we do not implement are ignored (they are the
    checkpoint's business); unknown keys from the task or the caller are an error."""
    config = model.config
    values: dict[str, Any] = {"decoder_start_token_id": config.decoder_start_token_id,
                              "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id}
    checkpoint = generation_defaults(getattr(model, "source_dir", None))
    values = _layer(values, {k: v for k, v in checkpoint.items() if k in SETTING_NAMES})
    if task_defaults:
        _check_names(task_defaults, "task setting")
        values = _layer(values, task_defaults)
    _check_names(caller, "setting")
    values = _layer(values, caller)
    if values.get("max_new_tokens") is None and values.get("max_length") is None:  # fit small models
        values["max_new_tokens"] = min(DEFAULT_MAX_NEW_TOKENS, config.decoder.max_position_embeddings - 1)
    if values.get("pad_token_id") is None and values.get("eos_token_id") is not None:
        eos = values["eos_token_id"]
        values["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
    settings = GenerationSettings(**values)
    settings.check_model(model)
    return settings


# ----------------------------------------------------------------------------------------
# Logits processors (transformers 5 order and semantics)
# ----------------------------------------------------------------------------------------
def process_scores(s: GenerationSettings, ids: Tensor, scores: Tensor, eos: Tensor | None) -> Tensor:
    """Repetition penalty, no-repeat n-grams, min length, min new tokens, in HF's order, then
    our required token (EOS banned in rows that have not generated it yet).

    `ids` are the decoder tokens so far (start token included), `scores` [rows, vocab]; the
    EOS bans write into `scores` (a fresh tensor each step here: no 6 MB copy per step)."""
    cur_len = ids.shape[1]
    if s.repetition_penalty != 1.0:
        seen = scores.gather(1, ids)
        seen = torch.where(seen < 0, seen * s.repetition_penalty, seen / s.repetition_penalty)
        scores = scores.scatter(1, ids, seen)
    n = s.no_repeat_ngram_size
    if n > 0 and cur_len >= n:
        # a window whose first n-1 tokens equal the current suffix bans its last token
        prefix = ids[:, cur_len + 1 - n:]
        windows = ids.unfold(1, n, 1)
        matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
        vocab = scores.shape[-1]
        banned = scores.new_zeros((scores.shape[0], vocab + 1), dtype=torch.bool)
        banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
        scores = scores.masked_fill(banned[:, :vocab], -math.inf)
    if eos is not None and (cur_len < s.min_length or cur_len - 1 < s.min_new_tokens):
        scores = scores.index_fill_(1, eos, -math.inf)
    if eos is not None and s.required_token_id is not None:
        lacking = (ids != s.required_token_id).all(dim=1, keepdim=True)
        scores.index_copy_(1, eos, scores.index_select(1, eos).masked_fill_(lacking, -math.inf))
    return scores


def warp_scores(s: GenerationSettings, scores: Tensor, min_keep: int = 1) -> Tensor:
    """Temperature, top-k, top-p for sampling (HF's warpers, same order)."""
    if s.temperature != 1.0:
        scores = scores / max(s.temperature, MIN_TEMPERATURE)
    if s.top_k:
        k = min(max(s.top_k, min_keep), scores.shape[-1])
        scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], -math.inf)
    if s.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - s.top_p)
        drop[..., -min_keep:] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), -math.inf)
    return scores


# ----------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------
@dataclass
class GenerationOutput:
    """One batch's results. Sequence i belongs to input i // num_return_sequences.

    Attention tensors, when asked for, come one per returned sequence (cross and decoder
    self-attention: [layers, heads, out_len, in_len] and [layers, heads, out_len, out_len]) or one
    per input (encoder: [layers, heads, in_len, in_len]); out_len is the sequence's generated
    length (row t is the attention while producing token t + 1), in_len the input's real length."""

    sequences: Tensor          # [n, 1 + longest]: start token, generated tokens, then pad
    sequence_scores: Tensor    # [n]: beam: HF's length-normalised score; else: sum of token_logprobs
    token_logprobs: Tensor     # [n, longest]: log-probability of each generated token; 0 after the end
    lengths: Tensor            # [n]: generated tokens per sequence (EOS included)
    num_return_sequences: int = 1
    input_lengths: Tensor | None = None
    cross_attentions: list[Tensor] | None = None
    encoder_attentions: list[Tensor] | None = None
    decoder_attentions: list[Tensor] | None = None
    settings: GenerationSettings | None = field(default=None, repr=False)


# ----------------------------------------------------------------------------------------
# One decoding step
# ----------------------------------------------------------------------------------------
def _single_query_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Plain attention (one query per row here): cheaper than the fused kernel, and the
    probabilities come for free, so recording them costs nothing extra."""
    if k.dtype != q.dtype:  # a half-precision cache (cache_dtype): attention computes in q's dtype
        k, v = k.to(q.dtype), v.to(q.dtype)
    (b, h, t, d), s = q.shape, k.shape[2]
    # as 3-d batches (views of the caches): bmm, and the scale folded into it, dispatch in about
    # half the time of 4-d matmul + mul (same values)
    ignored = constant_zeros((1, 1, 1), q.dtype, q.device)  # baddbmm's addend, at beta=0
    scores = torch.baddbmm(ignored, q.reshape(b * h, t, d), k.reshape(b * h, s, d).transpose(1, 2),
                           beta=0, alpha=d ** -0.5).view(b, h, t, s)
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.bmm(probs.view(b * h, t, s), v.reshape(b * h, s, d)).view(b, h, t, d), probs


def native_decoder(model: EncoderDecoderModel):
    """The decoder stack's step as one call of the native kernels (`DecoderStep` in
    bertgen/csrc/decoder_step.cpp), or None (then `decode_step` runs it layer by layer). It
    needs every matrix of the stack in panels (`prepare_model` on an AVX-512 or AVX2 CPU) and a
    feed-forward activation the panel kernel computes. Made once per `generate` call: the
    weights it holds are those of the moment."""
    config, layers = model.config.decoder, []
    activation = PANEL_ACTIVATIONS.get(config.hidden_act)
    if activation is None:
        return None
    for layer in model.decoder.bert.encoder.layer:
        sa, ca = layer.attention, layer.crossattention
        matrices = (getattr(sa.self, "qkv", None), sa.output.dense, ca.self.query, ca.output.dense,
                    layer.intermediate.dense, layer.output.dense)
        if not all(isinstance(m, PackedLinear) and type(m.packed) is PanelWeight and m.bias is not None
                   for m in matrices):
            return None
        norms = (sa.output.LayerNorm, ca.output.LayerNorm, layer.output.LayerNorm)
        if any(n.weight is None or n.bias is None or n.eps != config.layer_norm_eps for n in norms):
            return None
        (qkv, self_out, query, cross_out, ffn_in, ffn_out), (n1, n2, n3) = matrices, norms
        layers.append([t.detach() for t in (qkv.packed.panels, qkv.bias, self_out.packed.panels, self_out.bias,
                                            n1.weight, n1.bias, query.packed.panels, query.bias,
                                            cross_out.packed.panels, cross_out.bias, n2.weight, n2.bias,
                                            ffn_in.packed.panels, ffn_in.bias, ffn_out.packed.panels, ffn_out.bias,
                                            n3.weight, n3.bias)])
    if not layers:
        return None
    native = model.decoder.bert.encoder.layer[0].attention.output.dense.packed.native
    return native.DecoderStep(layers, config.hidden_size, config.intermediate_size, config.num_attention_heads,
                              activation, config.layer_norm_eps)


class SharedPrefixCache:
    """The native step's self-attention keys/values: a pool of slots per layer, [heads, slots,
    d] (one head's slots side by side: what one query reads stays close), and a table naming
    the slot of each row's positions, [rows, capacity].

    Beams that share a prefix share its slots, so reordering beams rewrites the small table and
    moves no keys (`SelfAttentionCache.reorder` copies up to the whole cache each step), and
    the pool is touched only as far as the live prefixes reach: a slot no row names any more
    is reused. Measured on the large benchmark model's beam search (8 inputs x 4 beams, 32
    steps), the rows named ~40% of rows x positions slots at the end. Same interface as
    `SelfAttentionCache` for the decoding loops (length, capacity, advance, reorder, select)."""

    def __init__(self, config, rows: int, capacity: int, dtype: torch.dtype, device: torch.device | str):
        pool = rows * capacity
        shape = (config.num_attention_heads, pool, config.head_dim)
        # torch.empty: a large pool is its own mapping (`kernels.map_large_allocations`), and
        # its pages cost memory only once a slot in them is written
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        # until beams move, row r's position s is slot s * rows + r: each step fills the next
        # `rows` slots, and no table work is needed
        self.slots = torch.arange(pool, device=device).view(capacity, rows).t().contiguous()
        self.length, self.capacity, self._moved = 0, capacity, False

    def claim(self) -> None:
        """Gives each row a free slot for its next position: the lowest ones, so the pool's
        touched part stays as small as the live prefixes. Free: named by no row."""
        if not self._moved or self.length >= self.capacity:
            return
        used = torch.zeros(self.keys[0].shape[1], dtype=torch.bool, device=self.slots.device)
        used[self.slots[:, :self.length].flatten()] = True
        self.slots[:, self.length] = (~used).nonzero().squeeze(1)[:len(self.slots)]

    def advance(self, steps: int) -> None:
        self.length += steps

    def reorder(self, rows: Tensor) -> None:
        """Row i continues old row `rows[i]`'s hypothesis: it takes that row's slots."""
        if bool((rows != torch.arange(len(rows), device=rows.device)).any()):
            self.slots = self.slots.index_select(0, rows)
            self._moved = True

    def select(self, rows: Tensor) -> None:
        """Keeps only `rows` (drops finished inputs); their slots are free from here on."""
        self.slots, self._moved = self.slots.index_select(0, rows), True


def new_cache(model: EncoderDecoderModel, rows: int, capacity: int, dtype: torch.dtype | None, native):
    """The self-attention cache for a decoding loop: slots shared by prefixes for the native
    step, the model's own preallocated cache for the layer-by-layer step."""
    if native is None:
        return model.new_cache(rows, capacity, dtype)
    return SharedPrefixCache(model.config.decoder, rows, capacity, dtype or model.dtype, model.device)


def decode_step(model: EncoderDecoderModel, tokens: Tensor, cache: SelfAttentionCache | SharedPrefixCache,
                cross: CrossAttentionCache, need_weights: bool = False, native=None):
    """Logits for one new token per row: `EncoderDecoderModel.decode_step` specialised for
    inference (same weights and math, no dropout, fewer dispatches; tested equal to it).
    `native` (`native_decoder(model)`): runs the stack in one native call (fp32 models; caches
    in float32, bfloat16 or float16), over a `SharedPrefixCache` (`new_cache`).

    Returns (logits [rows, vocab], self-attention probabilities per layer [rows, heads, t+1],
    cross-attention probabilities per layer [rows, heads, src]); the lists are empty unless
    `need_weights`."""
    dec = model.decoder.bert
    rows, pos, group = tokens.shape[0], cache.length, cross.group
    emb = dec.embeddings
    if pos >= emb.position_embeddings.num_embeddings:
        raise ValueError(f"decoder ran past its {emb.position_embeddings.num_embeddings} positions")
    x = emb.LayerNorm(emb.word_embeddings(tokens[:, 0]) + emb.position_embeddings.weight[pos])
    if native is not None:
        if pos >= cache.capacity:
            raise ValueError(f"self-attention cache full: {pos + 1} positions > capacity {cache.capacity}")
        mask = None if cross.mask is None else cross.mask.reshape(cross.mask.shape[0], -1)
        cache.claim()
        x, self_probs, cross_probs = native(x, cache.keys, cache.values, cache.slots, pos, cross.keys, cross.values,
                                            mask, group, need_weights)
        cache.advance(1)
        return model.decoder.lm_head(x), self_probs, cross_probs
    self_probs, cross_probs = [], []
    for i, layer in enumerate(dec.encoder.layer):
        sa, ca = layer.attention, layer.crossattention
        heads = sa.heads
        q, k, v = (t.reshape(rows, heads, 1, -1) for t in sa.self.project(x))
        k, v = cache.append(i, k, v)
        out, probs = _single_query_attention(q, k, v, None)
        x = sa.output.LayerNorm(linear(out.reshape(rows, -1), sa.output.dense) + x)
        if need_weights:
            self_probs.append(probs[:, :, 0])
        # the `group` rows of one input (its beams) query that input's keys together
        q = linear(x, ca.self.query).reshape(rows // group, group, heads, -1).transpose(1, 2)
        out, probs = _single_query_attention(q, cross.keys[i], cross.values[i], cross.mask)
        x = ca.output.LayerNorm(linear(out.transpose(1, 2).reshape(rows, -1), ca.output.dense) + x)
        if need_weights:
            cross_probs.append(probs.transpose(1, 2).reshape(rows, heads, -1))
        hidden = linear(x, layer.intermediate.dense, layer.intermediate.hidden_act)
        x = layer.output.LayerNorm(linear(hidden, layer.output.dense) + x)
    cache.advance(1)
    logits = model.decoder.lm_head(x)
    return logits, self_probs, cross_probs


# ----------------------------------------------------------------------------------------
# The decoding loops
# ----------------------------------------------------------------------------------------
class _Recorder:
    """Per-step attention of the rows that were decoded, to be read back along a path of rows."""

    def __init__(self, n_inputs: int, group: int, self_attention: bool):
        self.n_inputs, self.group, self.self_attention = n_inputs, group, self_attention
        self.cross: list[Tensor] = []
        self.self_: list[Tensor] = []
        self.slot: list[Tensor] = []  # per step: input -> its position in that step's batch

    def add(self, active: Tensor, self_probs: list[Tensor], cross_probs: list[Tensor]) -> None:
        slot = torch.full((self.n_inputs,), -1, dtype=torch.long, device=active.device)
        slot[active] = torch.arange(len(active), device=active.device)
        self.slot.append(slot)
        self.cross.append(torch.stack(cross_probs, 1).float())  # [rows, L, H, src]
        if self.self_attention:  # decoder self-attention only when asked for: it costs as much again
            self.self_.append(torch.stack(self_probs, 1).float())   # [rows, L, H, t+1]

    def follow(self, paths: Tensor, lengths: Tensor, which: str) -> list[Tensor]:
        """paths[i, t]: the row (input * group + member) that produced token t + 1 of sequence i."""
        steps = self.cross if which == "cross" else self.self_
        width = steps[0].shape[-1] if which == "cross" else len(steps)
        picked = []
        for t, attn in enumerate(steps[:int(lengths.max())]):
            row = paths[:, t].clamp(min=0)
            pos = self.slot[t][row // self.group] * self.group + row % self.group
            step = attn[pos.clamp(min=0)]
            picked.append(F.pad(step, (0, width - step.shape[-1])))
        stacked = torch.stack(picked, 3)  # [n, L, H, steps, width]
        if which == "cross":
            return [stacked[i, :, :, :n, :] for i, n in enumerate(lengths.tolist())]
        return [stacked[i, :, :, :n, :n] for i, n in enumerate(lengths.tolist())]


def _eos_tensor(s: GenerationSettings, device) -> Tensor | None:
    return torch.tensor(s.eos_ids, dtype=torch.long, device=device) if s.eos_ids else None


def _generator(s: GenerationSettings, device) -> torch.Generator | None:
    if not s.do_sample or s.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(s.seed)


def _sample_loop(model, enc_hidden, attention_mask, s: GenerationSettings, record: _Recorder | None, native=None):
    """Greedy decoding or multinomial sampling; yields input 0's tokens so far after each step."""
    n_inputs, device = enc_hidden.shape[0], enc_hidden.device
    group = s.num_return_sequences if s.do_sample else 1
    rows, steps = n_inputs * group, s.new_tokens
    eos, gen = _eos_tensor(s, device), _generator(s, device)
    pad = s.pad_token_id if s.pad_token_id is not None else 0
    cross = model.cross_cache(enc_hidden, attention_mask, group=group, dtype=s.cache_torch_dtype)
    cache = new_cache(model, rows, steps, s.cache_torch_dtype, native)
    seqs = torch.full((rows, steps + 1), pad, dtype=torch.long, device=device)
    seqs[:, 0] = s.decoder_start_token_id
    logprobs = torch.zeros(rows, steps, device=device)
    lengths = torch.full((rows,), steps, dtype=torch.long, device=device)
    running = torch.ones(rows, dtype=torch.bool, device=device)
    active = torch.arange(n_inputs, device=device)   # inputs still in the batch, in batch order
    live = torch.arange(rows, device=device)         # their rows
    tokens = seqs[:, :1]
    for step in range(steps):
        logits, self_probs, cross_probs = decode_step(model, tokens, cache, cross, record is not None, native)
        if record is not None:
            record.add(active, self_probs, cross_probs)
        scores = process_scores(s, seqs[live, :step + 1], logits.float(), eos)
        if s.do_sample:
            probs = F.softmax(warp_scores(s, scores), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        else:
            nxt = scores.argmax(-1)
        alive = running[live]
        nxt = torch.where(alive, nxt, pad)
        seqs[live, step + 1] = nxt
        logprobs[live, step] = torch.where(alive, F.log_softmax(scores, -1).gather(1, nxt[:, None])[:, 0], 0.0)
        if eos is not None:
            ended = alive & torch.isin(nxt, eos)
            lengths[live[ended]] = step + 1
            running[live[ended]] = False
        yield seqs[0, 1:min(step + 2, int(lengths[0]) + 1)]
        if step + 1 == steps or not bool(running.any()):
            break
        done = ~running[live].view(-1, group).any(1)
        if bool(done.any()):  # shrink the batch: finished inputs cost nothing from here on
            keep = (~done).nonzero().squeeze(1)
            keep_rows = (keep[:, None] * group + torch.arange(group, device=device)).flatten()
            cache.select(keep_rows)
            cross = cross.select(keep)
            active, live = active[keep], live[keep_rows]
        tokens = seqs[live, step + 1:step + 2]
    longest = int(lengths.max())
    paths = torch.arange(rows, device=device)[:, None].expand(rows, steps)
    return _finish(seqs[:, :longest + 1], logprobs.sum(1), logprobs[:, :longest], lengths, paths, group, record)


def _beam_loop(model, enc_hidden, attention_mask, s: GenerationSettings, record: _Recorder | None, native=None):
    """transformers 5's vectorised beam search (and beam sampling), same scores and tie-breaks.

    State is [inputs, beams, ...]; each step keeps the best 2 * beams candidates, the best
    `beams` unfinished ones run on, finished ones compete for the `beams` slots of the result.
    Inputs that can no longer improve leave the batch (their result is frozen anyway)."""
    n_inputs, device = enc_hidden.shape[0], enc_hidden.device
    nb, steps, lp, es = s.num_beams, s.new_tokens, s.length_penalty, s.early_stopping
    max_length = steps + 1
    eos, gen = _eos_tensor(s, device), _generator(s, device)
    pad = s.pad_token_id if s.pad_token_id is not None else 0
    keep = max(2, 1 + len(s.eos_ids)) * nb
    top_beams = torch.arange(keep, device=device) < nb
    cross = model.cross_cache(enc_hidden, attention_mask, group=nb, dtype=s.cache_torch_dtype)
    cache = new_cache(model, n_inputs * nb, steps, s.cache_torch_dtype, native)

    def gather(t: Tensor, idx: Tensor) -> Tensor:  # [A, beams, ...] picked per input
        return torch.take_along_dim(t, idx.view(*idx.shape, *([1] * (t.dim() - 2))), dim=1)

    # running beams
    run_seq = torch.full((n_inputs, nb, max_length), pad, dtype=torch.long, device=device)
    run_seq[:, :, 0] = s.decoder_start_token_id
    run_score = torch.zeros(n_inputs, nb, device=device)
    run_score[:, 1:] = NEG  # only beam 0 expands at the first step
    run_path = torch.full((n_inputs, nb, steps), -1, dtype=torch.long, device=device)
    run_lp = torch.zeros(n_inputs, nb, steps, device=device)
    # finished hypotheses (the result)
    fin_seq, fin_path, fin_lp = run_seq.clone(), run_path.clone(), run_lp.clone()
    fin_score = torch.full((n_inputs, nb), NEG, device=device)
    fin_done = torch.zeros(n_inputs, nb, dtype=torch.bool, device=device)
    improvable = torch.ones(n_inputs, 1, dtype=torch.bool, device=device)
    # frozen results of inputs that left the batch
    out_seq, out_score, out_path, out_lp = fin_seq.clone(), fin_score.clone(), fin_path.clone(), fin_lp.clone()

    active = torch.arange(n_inputs, device=device)
    tokens = run_seq[:, :, 0].reshape(-1, 1)
    cur_len = 1
    while True:
        logits, self_probs, cross_probs = decode_step(model, tokens, cache, cross, record is not None, native)
        if record is not None:
            record.add(active, self_probs, cross_probs)
        a = len(active)
        # [rows, vocab] scores: one at a time where possible, none left when the next step
        # makes its own (a large beam batch's are 6.4 MB each: peak memory)
        logp = F.log_softmax(logits.float(), dim=-1)
        del logits
        logp = process_scores(s, run_seq.view(a * nb, -1)[:, :cur_len], logp, eos)
        if s.do_sample:
            logp = warp_scores(s, logp, min_keep=1 + len(s.eos_ids))
        vocab = logp.shape[-1]
        total = logp.view(a, nb, vocab).add_(run_score[:, :, None]).view(a, nb * vocab)
        del logp
        if s.do_sample:
            cand = torch.multinomial(F.softmax(total, dim=-1), keep, generator=gen)
            cand_score = total.gather(1, cand)
        else:
            cand_score, cand = torch.topk(total, keep)
        del total
        src, tok = cand // vocab, cand % vocab
        cand_seq = gather(run_seq, src)
        cand_seq[:, :, cur_len] = tok
        cand_path = gather(run_path, src)
        cand_path[:, :, cur_len - 1] = src + active[:, None] * nb
        cand_lp = gather(run_lp, src)
        cand_lp[:, :, cur_len - 1] = cand_score - run_score.gather(1, src)
        hits = torch.zeros_like(tok, dtype=torch.bool) if eos is None else torch.isin(tok, eos)
        if cur_len + 1 >= max_length:
            hits = torch.ones_like(hits)

        # beams that run on: the best `nb` candidates that did not just finish
        run_cand = cand_score + hits.float() * NEG
        nxt = torch.topk(run_cand, nb)[1]
        run_seq, run_score = gather(cand_seq, nxt), gather(run_cand, nxt)
        run_path, run_lp, run_src = gather(cand_path, nxt), gather(cand_lp, nxt), gather(src, nxt)

        # finished candidates among the top `nb` compete with earlier ones
        just = hits & top_beams[None, :]
        score = cand_score / _power(cur_len, lp)  # cur_len generated tokens, the new one included
        score = score.masked_fill(score == -math.inf, UNLIKELY)
        full = fin_done.all(-1, keepdim=True) & (es is True)
        score = score + full.float() * NEG
        score = score + (~improvable).float() * NEG
        score = score + (~just) * NEG
        best = torch.topk(torch.cat((fin_score, score), 1), nb)[1]
        fin_seq = gather(torch.cat((fin_seq, cand_seq), 1), best)
        fin_score = gather(torch.cat((fin_score, score), 1), best)
        fin_path = gather(torch.cat((fin_path, cand_path), 1), best)
        fin_lp = gather(torch.cat((fin_lp, cand_lp), 1), best)
        fin_done = gather(torch.cat((fin_done, just), 1), best)

        cache.reorder((torch.arange(a, device=device)[:, None] * nb + run_src).flatten())
        cur_len += 1
        # can a running beam still beat the worst finished one? (HF's early-stop heuristic)
        best_len = (max_length - 1) if (es == "never" and lp > 0.0) else (cur_len - 1)
        best_possible = run_score[:, :1] / _power(best_len, lp)
        worst = torch.where(fin_done, torch.min(fin_score, dim=1, keepdim=True)[0], NEG)
        improvable = improvable & torch.any(best_possible > worst, dim=-1, keepdim=True)
        done = (~improvable | (fin_done.all(-1, keepdim=True) & (es is True)))[:, 0]

        if bool(active[0] == 0):
            yield run_seq[0, 0, 1:cur_len]
        last = bool(hits.all()) or bool(done.all())
        leaving = torch.ones_like(done) if last else done
        if bool(leaving.any()):
            gone = active[leaving]
            out_seq[gone], out_score[gone] = fin_seq[leaving], fin_score[leaving]
            out_path[gone], out_lp[gone] = fin_path[leaving], fin_lp[leaving]
        if last:
            break
        if bool(done.any()):
            stay = (~done).nonzero().squeeze(1)
            cache.select((stay[:, None] * nb + torch.arange(nb, device=device)).flatten())
            cross = cross.select(stay)
            active = active[stay]
            run_seq, run_score, run_path, run_lp = run_seq[stay], run_score[stay], run_path[stay], run_lp[stay]
            fin_seq, fin_score, fin_path, fin_lp = fin_seq[stay], fin_score[stay], fin_path[stay], fin_lp[stay]
            fin_done, improvable = fin_done[stay], improvable[stay]
        tokens = run_seq[:, :, cur_len - 1].reshape(-1, 1)

    nr = s.num_return_sequences
    seqs, scores = out_seq[:, :nr].flatten(0, 1), out_score[:, :nr].flatten()
    scores = scores.masked_fill(scores == UNLIKELY, -math.inf)
    paths, lps = out_path[:, :nr].flatten(0, 1), out_lp[:, :nr].flatten(0, 1)
    lengths = (paths >= 0).sum(1)
    longest = int(lengths.max())
    return _finish(seqs[:, :longest + 1], scores, lps[:, :longest], lengths, paths, nb, record)


def _power(length: int, exponent: float) -> float:
    """length ** exponent as transformers computes it, but inf instead of OverflowError."""
    try:
        return float(length) ** exponent
    except OverflowError:
        return math.inf


def _finish(seqs, scores, logprobs, lengths, paths, group, record) -> GenerationOutput:
    out = GenerationOutput(seqs, scores, logprobs, lengths)
    if record is not None:
        out.cross_attentions = record.follow(paths, lengths, "cross")
        if record.self_attention:
            out.decoder_attentions = record.follow(paths, lengths, "self")
    return out


def _loop(model, input_ids, attention_mask, settings, output_cross_attentions, output_attentions):
    """The generator behind `generate` and `stream`; its return value is the GenerationOutput."""
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty [batch, length] tensor, got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}")
    if not bool(attention_mask.sum(1).gt(0).all()):
        raise ValueError("an input has no tokens (its attention_mask is all zeros)")
    settings = settings or resolve_settings(model)
    settings.check_model(model)
    device = model.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    capture = output_cross_attentions or output_attentions
    enc = model.encode(input_ids, attention_mask, output_attentions=output_attentions)
    group = settings.num_beams if settings.num_beams > 1 else (
        settings.num_return_sequences if settings.do_sample else 1)
    record = _Recorder(input_ids.shape[0], group, self_attention=output_attentions) if capture else None
    loop = _beam_loop if settings.num_beams > 1 else _sample_loop
    native = native_decoder(model) if device.type == "cpu" else None
    out = yield from loop(model, enc.last_hidden_state, attention_mask, settings, record, native)
    keep = attention_mask.bool()
    out.num_return_sequences, out.input_lengths, out.settings = (settings.num_return_sequences,
                                                                 keep.sum(1), settings)
    if capture:
        per = settings.num_return_sequences
        out.cross_attentions = [a[..., keep[i // per]] for i, a in enumerate(out.cross_attentions)]
    if output_attentions:
        layers = torch.stack(enc.attentions, 1).float()  # [inputs, L, H, src, src]
        out.encoder_attentions = [layers[i][:, :, keep[i]][..., keep[i]] for i in range(len(layers))]
    return out


def generate(model: EncoderDecoderModel, input_ids: Tensor, attention_mask: Tensor | None = None,
             settings: GenerationSettings | None = None, output_cross_attentions: bool = False,
             output_attentions: bool = False) -> GenerationOutput:
    """Decodes a batch of (right-padded) inputs with `settings` (default: `resolve_settings(model)`).

    output_cross_attentions: cross-attention of each returned sequence, aligned to it;
    output_attentions: also encoder and decoder self-attention (and the cross-attention)."""
    with torch.inference_mode():
        loop = _loop(model, input_ids, attention_mask, settings, output_cross_attentions, output_attentions)
        while True:
            try:
                next(loop)
            except StopIteration as stop:
                return stop.value


def stream(model: EncoderDecoderModel, input_ids: Tensor, attention_mask: Tensor | None,
           settings: GenerationSettings | None, tokenizer) -> Iterator[str]:
    """Yields the decoded text of one input each time it changes, then the final text.

    Greedy and sampling show the tokens as they come; beam search shows the best running beam,
    and at the end the best finished hypothesis (which may differ)."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask[None]
    if input_ids.shape[0] != 1:
        raise ValueError(f"stream() takes one input, got a batch of {input_ids.shape[0]}")
    shown = None
    decode = getattr(tokenizer, "decode_generated", None) or (
        lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    loop = _loop(model, input_ids, attention_mask, settings, False, False)
    while True:
        # Inference mode per step, never held across `yield`: a consumer (Gradio) may resume
        # this generator on another thread, where a leaked mode would break later requests.
        with torch.inference_mode():
            try:
                tokens = next(loop)
            except StopIteration as stop:
                out = stop.value
                break
        text = decode(tokens.tolist())
        if text != shown:
            shown = text
            yield text
    n = int(out.lengths[0])
    text = decode(out.sequences[0, 1:n + 1].tolist())
    if text != shown:
        yield text
