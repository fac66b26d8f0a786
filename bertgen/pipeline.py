"""The one-call API: `pipeline("text2text-generation", model=...)` turns text into text.

Why a pipeline of our own: it is the seam between strings and tensors that the CLI, the app
and the evaluation share. It loads a checkpoint (folder, hub id or model object) with its
tokenizer, prepares it for the device (dtype, int8 or 4-bit quantization), tokenizes with the
checkpoint's input conventions, sorts inputs by length into batches (less padding), and returns
results in input order with what a user wants to inspect: scores, per-token log-probabilities,
truncation, timings and, on request, attention aligned to the returned text.

`pipe("text")` returns what transformers' text2text pipeline returned (a list of
{"generated_text": ...}); `pipe.run(texts)` returns `Result` objects with everything else.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from . import checkpoints, kernels
from .generation import GenerationSettings, generate, resolve_settings, stream
from .modeling import EncoderDecoderModel, LMHead

TASKS = ("text2text-generation",)
QUANTIZATIONS = ("int8", "bf16-weights", "4bit")
# the CPU ones: what computes them, and what to use on CUDA instead
CPU_QUANTIZATIONS = {"int8": ("torch dynamic quantization", "quantize='4bit' or dtype='bfloat16'"),
                     "bf16-weights": ("bertgen's native kernels", "dtype='bfloat16'")}


def precision_args(precision: str | None) -> dict:
    """One precision name ("float32", "bfloat16", "float16", "int8", "bf16-weights", "4bit") as the `dtype` /
    `quantize` keyword arguments of `prepare_model` and `pipeline`."""
    if precision in QUANTIZATIONS:
        return {"dtype": None, "quantize": precision}
    return {"dtype": precision, "quantize": None}


# ----------------------------------------------------------------------------------------
# Preparing a model for a device
# ----------------------------------------------------------------------------------------
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def prepare_model(model: EncoderDecoderModel, dtype: torch.dtype | str | None = None,
                  quantize: str | None = None, device: str | torch.device | None = None,
                  pack: bool = True) -> EncoderDecoderModel:
    """Moves `model` to `device` (default: cuda when available) in `dtype`, optionally quantized.

    dtype: float32 (default), bfloat16 or float16 (CUDA; on CPU, bf16 runs in oneDNN: faster
    than fp32 only for large beam batches on CPUs with AVX512-BF16). quantize="int8": dynamic
    int8 quantization of every nn.Linear (CPU only), the LM head included, while the word
    embeddings it is tied to stay float. quantize="bf16-weights" (CPU, with the native
    kernels): every linear weight and the tied LM head / word embeddings rounded to bf16 and
    kept so (half the memory and the bytes a step reads: greedy decoding ~1.8-2x faster than
    fp32), activations and all arithmetic still fp32.
    quantize="4bit": bitsandbytes NF4 weights (CUDA and bitsandbytes needed).
    Quantizing works in place; an int8 or 4-bit model is for inference only (it cannot be
    saved; a bf16-weights model saves as fp32, its rounded values).
    Unquantized, each self-attention's query/key/value weights are stacked into one matrix
    (`fuse_projections`: one call instead of three; the state dict keeps HF's names).
    pack (CPU, fp32 or bf16): the stacks' linear layers keep their weights in their kernel's
    layout (`kernels.pack_linears`, in place, no extra memory): fp32 on AVX-512/AVX2 CPUs in the
    native panel kernel's (`kernels.native_kernels`, compiled on first use), otherwise
    oneDNN's blocked layout. Against plain weights a large model's beams and batches decode
    1.1-1.5x faster with oneDNN's layout, and the panels are another 1.0-1.65x faster
    (greedy and small models gain most; pack=False keeps the plain weights). The LM head and
    the embedding lookup tied to it share one copy of their weight as panels
    (`BertGenerationDecoder.share_head_panels`): the head reads the kernel's layout at no
    memory cost. Without the panel kernel, an LM head at most `kernels.PACKED_COPY_MAX_WIDTH`
    (512) wide gets a packed copy of its weight beside the plain one: the head's size again in
    memory (47 MB for a 30522 x 384 head) for a 1.2-1.55x faster head at one row
    (`model.decoder.lm_head.pack_copy(False)` drops it). A packed model still saves;
    `kernels.unpack_linears` makes it trainable and movable again (and
    `model.fuse_projections(False)` gives back the separate query/key/value layers)."""
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"unknown quantize={quantize!r}; choose one of {', '.join(QUANTIZATIONS)}")
    dtype = checkpoints._dtype(dtype)
    kernels.unpack_linears(model)  # prepared before (a second pipeline over one model): start plain
    model.fuse_projections(False)
    if quantize in CPU_QUANTIZATIONS:  # fp32 math on the CPU
        what, on_cuda = CPU_QUANTIZATIONS[quantize]
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"quantize={quantize!r} ({what}) runs on CPU only; on CUDA use {on_cuda}")
        if dtype not in (None, torch.float32):
            raise ValueError(f"quantize={quantize!r} computes in float32; leave dtype unset")
        if quantize == "bf16-weights" and not pack:
            raise ValueError("quantize='bf16-weights' keeps the weights in the native kernel's panels; "
                             "it cannot leave them unpacked (pack=False)")
        quantizer = quantize_int8 if quantize == "int8" else bf16_weights
        return quantizer(model.to("cpu", torch.float32))
    device = torch.device(device or default_device())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
    if quantize == "4bit":
        return quantize_4bit(model, device, dtype or torch.float16)
    model = model.to(device=device, dtype=dtype or model.dtype)
    model.fuse_projections()
    if pack and device.type == "cpu":  # the LM head shares its weight with the embedding lookup
        kernels.pack_linears(model, exclude=(model.decoder.lm_head,))
        head = model.decoder.lm_head
        if not model.decoder.share_head_panels() and isinstance(head, LMHead) \
                and kernels.worth_packed_copy(head.decoder.weight):
            head.pack_copy()
    return model


class Int8LMHead(nn.Module):
    """The LM head as one int8 Linear (tied weight + bias), so the float embeddings stay."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter):
        super().__init__()
        self.proj = nn.Linear(weight.shape[1], weight.shape[0])
        self.proj.weight, self.proj.bias = weight, bias  # shared, not copied: quantization copies

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def bf16_weights(model: EncoderDecoderModel) -> EncoderDecoderModel:
    """The weights of every linear layer and the tied LM head / word-embedding lookup rounded to
    bf16 and stored so in the native panels, which widen them back to fp32 as they read them:
    decoding reads half the bytes, and all arithmetic stays fp32. LayerNorms, biases and
    position embeddings stay fp32 (~0.1% of the weights)."""
    kernels.require_native_kernels()  # a clear error before anything changes
    model.fuse_projections()
    kernels.pack_linears(model, exclude=(model.decoder.lm_head,), storage=torch.bfloat16)
    if not model.decoder.share_head_panels(storage=torch.bfloat16):  # an LM head of its own
        kernels.pack_linears(model.decoder.lm_head, storage=torch.bfloat16)
    model.quantization = "bf16-weights"
    return model


def quantize_int8(model: EncoderDecoderModel) -> EncoderDecoderModel:
    """Dynamic int8 quantization of all nn.Linear layers (torch.ao, fbgemm/x86 kernels).

    Tied modules (`tie_encoder_decoder`) are shared objects, quantized once and still shared."""
    head = model.decoder.lm_head
    model.decoder.lm_head = Int8LMHead(head.decoder.weight, head.bias)
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    model.quantization = "int8"
    return model


def quantize_4bit(model: EncoderDecoderModel, device: torch.device, compute_dtype: torch.dtype):
    """bitsandbytes NF4 for every nn.Linear but the LM head (tied to the embeddings)."""
    if device.type != "cuda":
        raise ValueError("quantize='4bit' needs a CUDA device (bitsandbytes); on CPU use quantize='int8'")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ValueError("quantize='4bit' needs the bitsandbytes package: pip install bitsandbytes") from None
    head = model.decoder.lm_head.decoder
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child is head:
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=compute_dtype, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(child.weight.data.to("cpu", torch.float16), requires_grad=False,
                                         quant_type="nf4")
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data.to(compute_dtype), requires_grad=False)
            setattr(parent, name, q)
    model.to(device)  # Params4bit quantize on their way to the GPU
    for module in model.modules():  # the rest (embeddings, LayerNorms, LM head) in compute_dtype
        for name, p in module.named_parameters(recurse=False):
            if p.dtype.is_floating_point and not isinstance(module, bnb.nn.Linear4bit):
                p.data = p.data.to(compute_dtype)
    model.quantization = "4bit"
    return model


# ----------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------
@dataclass
class Result:
    """One input's outputs (num_return_sequences of them, best first)."""

    texts: list[str]
    output_tokens: list[list[str]]   # generated tokens per returned sequence (EOS included)
    input_tokens: list[str]          # the input as the model saw it (after truncation)
    truncated: bool
    tokens_cut: int
    scores: list[float]              # beam: length-normalised score; else: sum of log-probs
    token_logprobs: list[list[float]]
    new_tokens: list[int]
    seconds: float                   # wall time of its batch divided by the batch size
    cross_attentions: list[Tensor] | None = None    # per sequence [layers, heads, out, in]
    encoder_attentions: Tensor | None = None        # [layers, heads, in, in]
    decoder_attentions: list[Tensor] | None = None  # per sequence [layers, heads, out, out]

    @property
    def text(self) -> str:
        return self.texts[0]

    @property
    def score(self) -> float:
        return self.scores[0]

    @property
    def cross_attention(self) -> Tensor | None:
        return None if self.cross_attentions is None else self.cross_attentions[0]


# ----------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------
class Text2TextPipeline:
    """A model, its tokenizer and decoding defaults; call it with a str or a list of str."""

    def __init__(self, model: EncoderDecoderModel, tokenizer, batch_size: int = 16,
                 generation_defaults: dict | None = None, add_special_tokens: bool | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.generation_defaults = dict(generation_defaults or {})
        if add_special_tokens is None:
            add_special_tokens = _stored_add_special_tokens(getattr(model, "source_dir", None))
        self.add_special_tokens = add_special_tokens
        resolve_settings(model, self.generation_defaults)  # fail now, not at the first call

    @property
    def device(self) -> torch.device:
        return self.model.device

    def settings(self, **overrides) -> GenerationSettings:
        """The decoding settings a call with `overrides` would use."""
        return resolve_settings(self.model, self.generation_defaults, **overrides)

    def max_input_tokens(self) -> int:
        positions = self.model.config.encoder.max_position_embeddings
        limit = getattr(self.tokenizer, "model_max_length", None)
        return min(positions, limit) if limit else positions

    def __call__(self, inputs: str | list[str], **settings) -> list:
        results = self.run(inputs, **settings)
        out = [[{"generated_text": t} for t in r.texts] for r in results]
        if isinstance(inputs, str):
            return out[0]
        return [o[0] for o in out] if all(len(o) == 1 for o in out) else out

    def run(self, texts: str | list[str], settings: GenerationSettings | None = None,
            attentions: bool = False, add_special_tokens: bool | None = None,
            **overrides) -> list[Result]:
        """Results in input order. `settings` (or defaults) with `overrides` applied;
        attentions=True adds cross-attention and encoder/decoder self-attention per result."""
        texts = _as_texts(texts)
        if not texts:
            return []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"input {i} is a {type(text).__name__}, not a str")
            if not text.strip():
                raise ValueError(f"input {i} is empty: nothing to generate from")
        settings = settings.replace(**overrides) if settings is not None else self.settings(**overrides)
        settings.check_model(self.model)
        add = self.add_special_tokens if add_special_tokens is None else add_special_tokens
        limit = self.max_input_tokens()
        full_lengths = [len(ids) for ids in self._encode(texts, add, None)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -full_lengths[i])
        results: list[Result | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            enc = self._encode([texts[i] for i in batch], add, limit)
            began = time.perf_counter()
            out = generate(self.model, enc["input_ids"], enc["attention_mask"], settings,
                           output_cross_attentions=attentions, output_attentions=attentions)
            seconds = (time.perf_counter() - began) / len(batch)
            for j, i in enumerate(batch):
                results[i] = self._result(out, j, enc, full_lengths[i], seconds)
        return results

    def stream(self, text: str, settings: GenerationSettings | None = None,
               add_special_tokens: bool | None = None, **overrides) -> Iterator[str]:
        """The output text of one input, growing as it is generated (for the app)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("input is empty: nothing to generate from")
        settings = settings.replace(**overrides) if settings is not None else self.settings(**overrides)
        add = self.add_special_tokens if add_special_tokens is None else add_special_tokens
        enc = self._encode([text], add, self.max_input_tokens())
        yield from stream(self.model, enc["input_ids"], enc["attention_mask"], settings, self.tokenizer)

    # --- helpers --------------------------------------------------------------------------
    def _encode(self, texts: list[str], add_special_tokens: bool | None, limit: int | None) -> dict:
        kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        with warnings.catch_warnings():  # truncation is reported per Result instead
            warnings.simplefilter("ignore")
            if limit is None:
                return self.tokenizer(texts, padding=False, truncation=False, return_tensors=None, **kwargs)
            return self.tokenizer(texts, padding=True, truncation=True, max_length=limit,
                                  return_tensors="pt", **kwargs)

    def _result(self, out, j: int, enc: dict, full_length: int, seconds: float) -> Result:
        tok = self.tokenizer
        n_in = int(enc["attention_mask"][j].sum())
        input_ids = enc["input_ids"][j][enc["attention_mask"][j].bool()].tolist()
        per = out.num_return_sequences
        rows = range(j * per, (j + 1) * per)
        generated = [out.sequences[r, 1:1 + int(out.lengths[r])].tolist() for r in rows]
        cpu = (lambda ts: None if ts is None else [ts[r].cpu() for r in rows])
        return Result(
            texts=[tok.decode_generated(ids) for ids in generated],
            output_tokens=[list(tok.convert_ids_to_tokens(ids)) for ids in generated],
            input_tokens=list(tok.convert_ids_to_tokens(input_ids)),
            truncated=full_length > n_in, tokens_cut=max(full_length - n_in, 0),
            scores=[float(out.sequence_scores[r]) for r in rows],
            token_logprobs=[out.token_logprobs[r, :int(out.lengths[r])].tolist() for r in rows],
            new_tokens=[int(out.lengths[r]) for r in rows],
            seconds=seconds,
            cross_attentions=cpu(out.cross_attentions),
            encoder_attentions=None if out.encoder_attentions is None else out.encoder_attentions[j].cpu(),
            decoder_attentions=cpu(out.decoder_attentions),
        )


def _as_texts(texts) -> list:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (list, tuple)):
        return list(texts)
    raise ValueError(f"texts must be a str or a list of str, got {type(texts).__name__}")


def _stored_add_special_tokens(folder) -> bool | None:
    """The checkpoint's input convention from tokenizer_config.json, if it states one."""
    if folder is None:
        return None
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    for key in ("add_special_tokens", "bertgen_add_special_tokens"):
        if isinstance(config.get(key), bool):
            return config[key]
    return None


def pipeline(task: str = "text2text-generation", model: str | os.PathLike | EncoderDecoderModel | None = None,
             tokenizer=None, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
             quantize: str | None = None, batch_size: int = 16, generation_defaults: dict | None = None,
             add_special_tokens: bool | None = None, revision: str | None = None) -> Text2TextPipeline:
    """A ready `Text2TextPipeline` for a checkpoint folder, hub id or loaded model.

    device None picks cuda when available; dtype/quantize as in `prepare_model`; the tokenizer
    defaults to the checkpoint's (`bertgen.tokenization.load_tokenizer(model.source_dir)`);
    generation_defaults sit between the checkpoint's generation_config.json and call arguments."""
    if task not in TASKS:
        raise ValueError(f"unsupported task {task!r}; bertgen pipelines do: {', '.join(TASKS)}")
    if model is None:
        raise ValueError("pass model=: a checkpoint folder, a hub id (owner/name) or an EncoderDecoderModel")
    kernels.map_large_allocations()  # before the weights are allocated: see its docstring
    if isinstance(model, (str, os.PathLike)):
        model = checkpoints.load(model, revision=revision)
    if not isinstance(model, EncoderDecoderModel):
        raise ValueError(f"model must be an EncoderDecoderModel, a folder or a hub id, got {type(model).__name__}")
    model = prepare_model(model.eval(), dtype, quantize, device)
    if tokenizer is None:
        folder = getattr(model, "source_dir", None)
        if folder is None:
            raise ValueError("this model was not loaded from a folder: pass tokenizer=")
        from .tokenization import load_tokenizer
        tokenizer = load_tokenizer(folder)
    return Text2TextPipeline(model, tokenizer, batch_size, generation_defaults, add_special_tokens)
