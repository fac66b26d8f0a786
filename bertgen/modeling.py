"""The BertGeneration model family in one file, readable top to bottom.

Module and parameter names mirror `transformers` (`encoder.layer.0.attention.self.query`,
`lm_head.bias`, ...) so a state dict moves between the two unchanged. Beyond the reference:
- attention runs through `scaled_dot_product_attention` unless weights are asked for;
- the decoder steps over a preallocated self-attention cache (`SelfAttentionCache`) and over
  cross-attention keys/values computed once per input and shared by all of that input's
  beams (`CrossAttentionCache`), so beam search never copies them;
- `tie_encoder_decoder` really shares modules: one copy of the weights in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import BertGenerationConfig, EncoderDecoderConfig
from .kernels import (PackedCopy, PackedLinear, PanelEmbedding, linear, matmul, packed_linear, packed_weights,
                      release_freed_memory, share_panels, split_linear, stack_linears)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, T, H] -> [B, heads, T, H / heads]"""
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """[B, heads, T, d] -> [B, T, heads * d]"""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean "may attend" mask -> additive float mask (0 or the dtype's minimum), as HF does."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float,
           need_weights: bool) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention; the fused kernel unless the weights are wanted."""
    if not need_weights:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p), None
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    dropped = F.dropout(probs, p=dropout_p) if dropout_p > 0 else probs
    return torch.matmul(dropped, v), probs


# ----------------------------------------------------------------------------------------
# Caches used by generation
# ----------------------------------------------------------------------------------------
class SelfAttentionCache:
    """Decoder self-attention keys/values, preallocated: per layer [rows, heads, capacity, d].

    Each step writes in place; beam search reorders rows with `reorder` (the only cache that
    moves when beams are reshuffled)."""

    def __init__(self, config: BertGenerationConfig, rows: int, capacity: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (rows, config.num_attention_heads, capacity, config.head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.length = 0
        self.capacity = capacity

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"self-attention cache full: {end} positions > capacity {self.capacity}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, steps: int) -> None:
        self.length += steps

    def reorder(self, rows: Tensor) -> None:
        """Row i of the cache becomes old row `rows[i]` (beam back-pointers). Only rows that
        change are copied: a beam that continues its own hypothesis costs nothing."""
        moved = (rows != torch.arange(len(rows), device=rows.device)).nonzero().squeeze(1)
        if len(moved) == 0:
            return
        src, n = rows[moved], self.length
        for buf in (*self.keys, *self.values):
            part = buf[:, :, :n]
            part.index_copy_(0, moved, part.index_select(0, src))

    def select(self, rows: Tensor) -> None:
        """Keeps only `rows` (drops finished inputs to shrink the batch)."""
        self.keys = [b.index_select(0, rows) for b in self.keys]
        self.values = [b.index_select(0, rows) for b in self.values]


@dataclass
class CrossAttentionCache:
    """Cross-attention keys/values per layer, [inputs, heads, src_len, d], computed once.

    `group` decoder rows (beams, samples) share each input's entry: their queries are folded
    into one attention call against it instead of copying keys/values per beam."""

    keys: list[Tensor]
    values: list[Tensor]
    mask: Tensor | None  # additive, [inputs, 1, 1, src_len]
    group: int = 1

    def select(self, inputs: Tensor) -> "CrossAttentionCache":
        return CrossAttentionCache([k.index_select(0, inputs) for k in self.keys],
                                   [v.index_select(0, inputs) for v in self.values],
                                   None if self.mask is None else self.mask.index_select(0, inputs),
                                   self.group)


# ----------------------------------------------------------------------------------------
# Building blocks (names as in transformers' modeling_bert_generation)
# ----------------------------------------------------------------------------------------
class Embeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm, dropout (no token types)."""

    def __init__(self, config: BertGenerationConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, past_length: int = 0) -> Tensor:
        length = input_ids.shape[1]
        if past_length + length > self.position_embeddings.num_embeddings:
            raise ValueError(f"sequence of {past_length + length} tokens exceeds the model's "
                             f"{self.position_embeddings.num_embeddings} positions")
        positions = torch.arange(past_length, past_length + length, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class Projections(nn.Module):
    """query/key/value (HF calls this module `self`).

    For inference `fuse()` stacks the three weights into one `qkv` layer: self-attention then
    makes one matrix call instead of three on the same input (a small-model greedy step spent
    5.15 -> 4.7 ms in matrix calls). The state dict keeps HF's three names either way."""

    NAMES = ("query", "key", "value")

    def __init__(self, config: BertGenerationConfig):
        super().__init__()
        h = config.hidden_size
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.register_state_dict_post_hook(_split_fused_state)
        self.register_load_state_dict_pre_hook(_join_fused_state)

    @property
    def fused(self) -> bool:
        return "qkv" in self._modules

    def project(self, x: Tensor) -> tuple[Tensor, ...]:
        """(query, key, value) of x: views into one output when fused."""
        if self.fused:
            return linear(x, self.qkv).chunk(3, dim=-1)
        return linear(x, self.query), linear(x, self.key), linear(x, self.value)

    def fuse(self) -> bool:
        """One `qkv` nn.Linear in place of the three (False if already fused)."""
        if self.fused:
            return False
        self.qkv = stack_linears([self._modules.pop(name) for name in self.NAMES])
        return True

    def unfuse(self) -> bool:
        """The three nn.Linear layers back (False if not fused); a packed `qkv` is unpacked first."""
        if not self.fused:
            return False
        for name, part in zip(self.NAMES, split_linear(self._modules.pop("qkv"), 3)):
            setattr(self, name, part)
        return True


def _split_fused_state(module: Projections, state: dict, prefix: str, metadata) -> None:
    """state_dict of a fused Projections: qkv.weight/.bias -> HF's query/key/value entries
    (copies: checkpoint writers refuse tensors that share memory)."""
    if not module.fused:
        return
    parts = {kind: state.pop(f"{prefix}qkv.{kind}").chunk(3) for kind in ("weight", "bias")
             if f"{prefix}qkv.{kind}" in state}
    for i, name in enumerate(Projections.NAMES):  # HF's order: query.weight, query.bias, key...
        for kind, chunks in parts.items():
            state[f"{prefix}{name}.{kind}"] = chunks[i].clone()


def _join_fused_state(module: Projections, state: dict, prefix: str, *args) -> None:
    """load_state_dict into a fused Projections: HF's query/key/value entries -> qkv."""
    if not module.fused:
        return
    for kind in ("weight", "bias"):
        keys = [f"{prefix}{name}.{kind}" for name in Projections.NAMES]
        if all(k in state for k in keys):
            state[f"{prefix}qkv.{kind}"] = torch.cat([state.pop(k) for k in keys])


class AddNorm(nn.Module):
    """dense -> dropout -> residual add -> LayerNorm (BERT's post-LN sublayer output)."""

    def __init__(self, in_size: int, config: BertGenerationConfig):
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(linear(x, self.dense)) + residual)


class Attention(nn.Module):
    def __init__(self, config: BertGenerationConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.dropout_p = config.attention_probs_dropout_prob
        self.self = Projections(config)
        self.output = AddNorm(config.hidden_size, config)

    def self_attention(self, x: Tensor, mask: Tensor | None, cache: SelfAttentionCache | None,
                       layer: int, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        q, k, v = (_split_heads(t, self.heads) for t in self.self.project(x))
        if cache is not None:
            k, v = cache.append(layer, k, v)
        out, probs = attend(q, k, v, mask, self.dropout_p if self.training else 0.0, need_weights)
        return self.output(_merge_heads(out), x), probs

    def cross_attention(self, x: Tensor, cross: CrossAttentionCache, layer: int,
                        need_weights: bool) -> tuple[Tensor, Tensor | None]:
        q = _split_heads(linear(x, self.self.query), self.heads)  # [rows, h, t, d]
        rows, h, t, d = q.shape
        g = cross.group
        if g > 1:  # fold each input's beams into its query axis: [inputs, h, g*t, d]
            q = q.view(rows // g, g, h, t, d).transpose(1, 2).reshape(rows // g, h, g * t, d)
        out, probs = attend(q, cross.keys[layer], cross.values[layer], cross.mask,
                            self.dropout_p if self.training else 0.0, need_weights)
        if g > 1:
            out = out.view(rows // g, h, g, t, d).transpose(1, 2).reshape(rows, h, t, d)
            if probs is not None:
                probs = probs.view(rows // g, h, g, t, -1).transpose(1, 2).reshape(rows, h, t, -1)
        return self.output(_merge_heads(out), x), probs

    def cross_keys_values(self, encoder_hidden: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """[inputs, heads, src, d], made contiguous once here: as head-split views, every
        decoding step's matmul would copy them again (measured: ~15% of a beam-search step).
        out: [2, inputs, heads, src, d] to write them into (in its dtype)."""
        if out is None:
            return (_split_heads(linear(encoder_hidden, self.self.key), self.heads).contiguous(),
                    _split_heads(linear(encoder_hidden, self.self.value), self.heads).contiguous())
        for part, projection in zip(out, (self.self.key, self.self.value)):
            part.copy_(_split_heads(linear(encoder_hidden, projection), self.heads))
        return out[0], out[1]


class Intermediate(nn.Module):
    def __init__(self, config: BertGenerationConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.hidden_act = config.hidden_act

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.dense, self.hidden_act)


class Layer(nn.Module):
    """Self-attention, cross-attention (decoder only), feed-forward; each post-LayerNorm."""

    def __init__(self, config: BertGenerationConfig):
        super().__init__()
        self.attention = Attention(config)
        if config.add_cross_attention:
            self.crossattention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = AddNorm(config.intermediate_size, config)

    def forward(self, x, self_mask, layer, cache=None, cross=None, need_weights=False):
        x, self_probs = self.attention.self_attention(x, self_mask, cache, layer, need_weights)
        cross_probs = None
        if cross is not None:
            x, cross_probs = self.crossattention.cross_attention(x, cross, layer, need_weights)
        return self.output(self.intermediate(x), x), self_probs, cross_probs


class Stack(nn.Module):
    """`encoder.layer.{i}` in HF naming."""

    def __init__(self, config: BertGenerationConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))


@dataclass
class StackOutput:
    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None


@dataclass
class Seq2SeqOutput:
    logits: Tensor
    loss: Tensor | None = None
    encoder_last_hidden_state: Tensor | None = None
    decoder_last_hidden_state: Tensor | None = None
    encoder_hidden_states: tuple[Tensor, ...] | None = None
    decoder_hidden_states: tuple[Tensor, ...] | None = None
    encoder_attentions: tuple[Tensor, ...] | None = None
    decoder_attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None


class PreTrained(nn.Module):
    """Weight initialisation shared by all models (as BERT: N(0, initializer_range))."""

    config: BertGenerationConfig

    def _init_weights(self, module: nn.Module, std: float) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def init_weights(self, std: float) -> None:
        for module in self.modules():
            self._init_weights(module, std)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def fuse_projections(self, fuse: bool = True) -> int:
        """Stacks (fuse=False: splits again) the self-attention query/key/value of every layer
        (`Projections.fuse`), in place, a shared (tied) layer once. Returns how many changed."""
        changed = 0
        for layer in [m for m in self.modules() if isinstance(m, Layer)]:
            if layer.attention.self.fuse() if fuse else layer.attention.self.unfuse():
                changed += 1
                release_freed_memory()  # the replaced weights' memory goes back before the next layer
        return changed

    def num_parameters(self) -> int:
        """Unique parameters (shared tensors counted once), packed linear weights included."""
        return sum(p.numel() for p in self.parameters()) + sum(w.numel() for w in packed_weights(self))


class BertGenerationEncoder(PreTrained):
    """Embeddings + a BERT stack. Also the `bert` body of the decoder (causal, cross-attending)."""

    def __init__(self, config: BertGenerationConfig, init: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Stack(config)
        if init:
            self.init_weights(config.initializer_range)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                cache: SelfAttentionCache | None = None, cross: CrossAttentionCache | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False) -> StackOutput:
        past = cache.length if cache is not None else 0
        x = self.embeddings(input_ids, past)
        mask = self._self_mask(input_ids, attention_mask, past, x.dtype)
        # each layer's output is kept only when asked for: in inference the stack then holds
        # one layer's activations at a time (24 x [batch, length, 1024] otherwise)
        hidden, attentions, crosses = [x] if output_hidden_states else None, [], []
        for i, layer in enumerate(self.encoder.layer):
            x, probs, cross_probs = layer(x, mask, i, cache, cross, output_attentions)
            if output_hidden_states:
                hidden.append(x)
            attentions.append(probs)
            crosses.append(cross_probs)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return StackOutput(
            x,
            tuple(hidden) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
            tuple(crosses) if output_attentions and cross is not None else None,
        )

    def _self_mask(self, input_ids: Tensor, attention_mask: Tensor | None, past: int,
                   dtype: torch.dtype) -> Tensor | None:
        """Padding mask on keys, plus the causal mask in a decoder; None when nothing is masked."""
        b, t = input_ids.shape
        total = past + t
        allowed = None
        if attention_mask is not None:
            if attention_mask.shape[-1] == t and past:
                attention_mask = F.pad(attention_mask, (past, 0), value=1)
            if not bool(attention_mask.all()):
                allowed = attention_mask.bool()[:, None, None, :total]
        if self.config.is_decoder and t > 1:
            causal = torch.ones(t, total, dtype=torch.bool, device=input_ids.device).tril(past)
            allowed = causal[None, None] if allowed is None else allowed & causal
        return None if allowed is None else additive_mask(allowed, dtype)


class LMHead(nn.Module):
    """`lm_head`: a Linear tied to the word embeddings, plus a separate bias (no transform).

    For CPU inference its weight can be packed: as panels shared with the embedding lookup
    (`BertGenerationDecoder.share_head_panels`), or, without the panel kernel, as a packed copy
    beside the plain tied weight (`pack_copy`; `prepare_model` does so for narrow heads)."""

    def __init__(self, config: BertGenerationConfig):
        super().__init__()
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.packed_copy: PackedCopy | None = None

    def pack_copy(self, enable: bool = True) -> None:
        """Keeps (or drops) a packed copy of the weight (`kernels.PackedCopy`), used when no
        gradient is recorded; it costs the weight's size again."""
        self.packed_copy = PackedCopy(self.decoder.weight) if enable else None

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.decoder, PackedLinear):  # shares panels with the embedding lookup
            return self.decoder(x, bias=self.bias)
        weight = self.decoder.weight
        records_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        if self.packed_copy is not None and not records_grad:  # the packed op has no backward
            packed = self.packed_copy.of(weight)
            if packed is not None and packed.dtype == x.dtype:
                return packed_linear(x, packed, self.bias)
        return matmul(x, weight, self.bias)


class BertGenerationDecoder(PreTrained):
    """`bert` (causal, optionally cross-attending) + `lm_head`; usable alone as a causal LM."""

    def __init__(self, config: BertGenerationConfig, init: bool = True):
        super().__init__()
        if not config.is_decoder:
            config = BertGenerationConfig.from_dict({**config.to_dict(), "is_decoder": True})
        self.config = config
        self.bert = BertGenerationEncoder(config, init=False)
        self.lm_head = LMHead(config)
        if init:
            self.init_weights(config.initializer_range)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings and not isinstance(self.bert.embeddings.word_embeddings, PanelEmbedding):
            self.lm_head.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def share_head_panels(self, storage: torch.dtype | None = None) -> bool:
        """For CPU inference: the tied LM head and word-embedding lookup as one set of panels of
        the native kernel (`kernels.share_panels`; `storage`: bf16 to keep them in bf16), in
        place. The head then reads its weight in the kernel's layout at no memory cost, as no
        plain copy is kept (large model against a plain head, same tokens: greedy 1.07x faster,
        beam 4 1.19x). False (nothing changed) when the head is not tied, not fp32 on CPU, or
        the kernel is not built."""
        emb, head = self.bert.embeddings, self.lm_head
        shared = share_panels(emb.word_embeddings, head.decoder, storage) if isinstance(head, LMHead) else None
        if shared is None:
            return False
        emb.word_embeddings, head.decoder = shared
        head.packed_copy = None
        release_freed_memory()
        return True

    def cross_cache(self, encoder_hidden: Tensor, encoder_attention_mask: Tensor | None,
                    group: int = 1, dtype: torch.dtype | None = None) -> CrossAttentionCache:
        """Cross-attention keys/values of every layer for these encoder states (stored in
        `dtype` when given: half precision halves the memory of long inputs and many beams)."""
        attentions = [layer.crossattention for layer in self.bert.encoder.layer]
        if torch.is_grad_enabled():  # training: each layer's keys and values their own graph nodes
            pairs = [a.cross_keys_values(encoder_hidden) for a in attentions]
        else:
            # Inference: one block for all layers, each projection a temporary copied into its
            # place. Kept apart, the layers' 2 MB results (large model, 8 x 64 tokens) and the
            # temporaries between them left holes in the heap that later ones did not always
            # fit: 96 MB of keys/values grew the process by 90 or by 180 MB from run to run.
            inputs, src, _ = encoder_hidden.shape
            block = encoder_hidden.new_empty((len(attentions), 2, inputs, self.config.num_attention_heads, src,
                                              self.config.head_dim), dtype=dtype or encoder_hidden.dtype)
            pairs = [a.cross_keys_values(encoder_hidden, out) for a, out in zip(attentions, block)]
        keys = [k if dtype is None else k.to(dtype) for k, _ in pairs]
        values = [v if dtype is None else v.to(dtype) for _, v in pairs]
        mask = None
        if encoder_attention_mask is not None and not bool(encoder_attention_mask.all()):
            mask = additive_mask(encoder_attention_mask.bool()[:, None, None, :], encoder_hidden.dtype)
        return CrossAttentionCache(keys, values, mask, group)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                encoder_hidden_states: Tensor | None = None,
                encoder_attention_mask: Tensor | None = None,
                cross: CrossAttentionCache | None = None, cache: SelfAttentionCache | None = None,
                labels: Tensor | None = None, output_attentions: bool = False,
                output_hidden_states: bool = False) -> tuple[Tensor, Tensor | None, StackOutput]:
        """Returns (logits, causal-LM loss if labels, stack output)."""
        if cross is None and encoder_hidden_states is not None:
            cross = self.cross_cache(encoder_hidden_states, encoder_attention_mask)
        out = self.bert(input_ids, attention_mask, cache=cache, cross=cross,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:  # standalone causal LM: position t predicts token t + 1
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return logits, loss, out


def shift_tokens_right(labels: Tensor, pad_token_id: int, decoder_start_token_id: int) -> Tensor:
    """Decoder inputs for teacher forcing: start token, then labels[:-1]; -100 becomes pad."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


# Sub-modules of a decoder layer that `tie_encoder_decoder` shares with the encoder layer.
TIED_LAYER_PARTS = ("attention", "intermediate", "output")


class EncoderDecoderModel(PreTrained):
    """`EncoderDecoderModel` of BertGeneration stacks (bert2bert, bertShare, roberta2roberta ...)."""

    def __init__(self, config: EncoderDecoderConfig, init: bool = True):
        super().__init__()
        self.config = config
        self.encoder = BertGenerationEncoder(config.encoder, init=init)
        self.decoder = BertGenerationDecoder(config.decoder, init=init)
        if config.encoder.hidden_size != config.decoder.hidden_size:
            self.enc_to_dec_proj = nn.Linear(config.encoder.hidden_size, config.decoder.hidden_size)
            if init:
                self._init_weights(self.enc_to_dec_proj, config.decoder.initializer_range)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Shares modules (not copies) when the config says so: one tensor per tied weight."""
        if self.config.tie_encoder_decoder:
            dec = self.decoder.bert
            dec.embeddings = self.encoder.embeddings
            for enc_layer, dec_layer in zip(self.encoder.encoder.layer, dec.encoder.layer):
                for part in TIED_LAYER_PARTS:
                    setattr(dec_layer, part, getattr(enc_layer, part))
        self.decoder.tie_weights()

    # --- pieces used by generation ---------------------------------------------------
    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None,
               output_attentions: bool = False, output_hidden_states: bool = False) -> StackOutput:
        out = self.encoder(input_ids, attention_mask, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states)
        if hasattr(self, "enc_to_dec_proj"):
            out.last_hidden_state = self.enc_to_dec_proj(out.last_hidden_state)
        return out

    def cross_cache(self, encoder_hidden: Tensor, attention_mask: Tensor | None,
                    group: int = 1, dtype: torch.dtype | None = None) -> CrossAttentionCache:
        return self.decoder.cross_cache(encoder_hidden, attention_mask, group, dtype)

    def new_cache(self, rows: int, capacity: int, dtype: torch.dtype | None = None) -> SelfAttentionCache:
        return SelfAttentionCache(self.config.decoder, rows, capacity, dtype or self.dtype, self.device)

    def decode_step(self, input_ids: Tensor, cache: SelfAttentionCache, cross: CrossAttentionCache,
                    output_attentions: bool = False) -> tuple[Tensor, StackOutput]:
        """Logits of the last position for `input_ids` appended after what `cache` holds."""
        logits, _, out = self.decoder(input_ids, cross=cross, cache=cache,
                                      output_attentions=output_attentions)
        return logits[:, -1], out

    # --- teacher-forced forward ------------------------------------------------------
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                decoder_input_ids: Tensor | None = None,
                decoder_attention_mask: Tensor | None = None, labels: Tensor | None = None,
                label_smoothing: float = 0.0, output_attentions: bool = False,
                output_hidden_states: bool = False) -> Seq2SeqOutput:
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels")
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id,
                                                   self.config.decoder_start_token_id)
        enc = self.encode(input_ids, attention_mask, output_attentions, output_hidden_states)
        cross = self.cross_cache(enc.last_hidden_state, attention_mask)
        logits, _, dec = self.decoder(decoder_input_ids, decoder_attention_mask, cross=cross,
                                      output_attentions=output_attentions,
                                      output_hidden_states=output_hidden_states)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                   ignore_index=-100, label_smoothing=label_smoothing)
        return Seq2SeqOutput(
            logits=logits, loss=loss,
            encoder_last_hidden_state=enc.last_hidden_state,
            decoder_last_hidden_state=dec.last_hidden_state,
            encoder_hidden_states=enc.hidden_states, decoder_hidden_states=dec.hidden_states,
            encoder_attentions=enc.attentions, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
        )
