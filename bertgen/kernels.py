"""The fastest CPU matrix multiply we measured for each shape, behind one `linear` call.

On this class of CPU (AMD EPYC) PyTorch's default MKL sgemm runs 1.2-2.5x slower than
oneDNN's on the same plain (unpacked) fp32 weights: MKL picks slow kernels on AMD. oneDNN's
linear is an internal torch op (`torch.ops.mkldnn._linear_pointwise`): used when present,
for inference only (no autograd graph being recorded), so training numerics are unchanged.

For inference `pack_linears` goes one step further: it stores each weight once in oneDNN's
blocked layout (`PackedLinear`), which a plain weight is otherwise re-laid into on every call.
Measured with `python benchmarks/bench_kernels.py`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ONEDNN_LINEAR = (getattr(torch.ops.mkldnn, "_linear_pointwise", None)
                  if torch.backends.mkldnn.is_available() else None)
_ONEDNN_PACK = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None) if _ONEDNN_LINEAR else None


def matmul(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x [..., in] @ weight.T [in, out] + bias, with the fastest kernel for the shape:
    2-3 rows and in <= out, or 4 rows and in <= 512 <= out: MKL's W @ x.T (it picks a gemv-like
    kernel; at 4 rows and in = 1024 it is 1.3-1.4x slower than oneDNN); otherwise oneDNN;
    F.linear when autograd records, off CPU, or not fp32."""
    if (_ONEDNN_LINEAR is None or x.device.type != "cpu" or x.dtype != torch.float32
            or weight.dtype != torch.float32 or not weight.is_contiguous()
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                             or (bias is not None and bias.requires_grad)))):
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    rows, (out_features, in_features) = flat.shape[0], weight.shape
    if in_features <= out_features and (2 <= rows <= 3 or (rows == 4 and in_features <= 512)):
        out = torch.mm(weight, flat.t()) if bias is None else torch.addmm(bias[:, None], weight, flat.t())
        out = out.t()
    else:
        out = _ONEDNN_LINEAR(flat.contiguous(), weight, bias, "none", [], "")
    return out.reshape(*x.shape[:-1], weight.shape[0])


ACT_FNS = {  # every `config.ACTIVATIONS` name
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}
# The same activations as oneDNN post-ops (attr, scalars, algorithm): computed inside a packed
# layer's matrix call instead of by a second pass (erf-GELU on 1536 values alone: ~14 us).
_POST_OPS = {"gelu": ("gelu", [], "none"), "gelu_new": ("gelu", [], "tanh"), "relu": ("relu", [], "")}


def linear(x: Tensor, module: nn.Module, activation: str | None = None) -> Tensor:
    """`activation(module(x))` for an nn.Linear through `matmul`; a packed layer applies the
    activation in its own call; quantized (int8 / 4-bit) layers bring their own kernels."""
    if type(module) is PackedLinear and activation in _POST_OPS:
        return module(x, activation)
    out = matmul(x, module.weight, module.bias) if type(module) is nn.Linear else module(x)
    return out if activation is None else ACT_FNS[activation](out)


def stack_linears(parts: list[nn.Module]) -> nn.Linear:
    """One nn.Linear whose output is the parts' outputs side by side (they share an input):
    one matrix call instead of several. The parts must all have a bias or all have none."""
    first = parts[0]
    if any(p.in_features != first.in_features or (p.bias is None) != (first.bias is None) for p in parts):
        raise ValueError("stacked linear layers need one input size and all or no biases")
    stacked = nn.Linear(first.in_features, sum(p.out_features for p in parts), bias=first.bias is not None,
                        device="meta", dtype=first.weight.dtype)
    stacked.weight = nn.Parameter(torch.cat([p.weight.detach() for p in parts]))
    if first.bias is not None:
        stacked.bias = nn.Parameter(torch.cat([p.bias.detach() for p in parts]))
    return stacked


def split_linear(layer: nn.Module, n: int) -> list[nn.Linear]:
    """Undoes `stack_linears` for n equal parts (a packed layer is unpacked first)."""
    if isinstance(layer, PackedLinear):
        layer = layer.unpacked()
    weights = layer.weight.detach().chunk(n)
    biases = layer.bias.detach().chunk(n) if layer.bias is not None else [None] * n
    parts = []
    for w, b in zip(weights, biases):
        part = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta", dtype=w.dtype)
        part.weight = nn.Parameter(w.clone())  # own storage: checkpoint writers refuse shared memory
        if b is not None:
            part.bias = nn.Parameter(b.clone())
        parts.append(part)
    return parts


# ----------------------------------------------------------------------------------------
# Packed weights for CPU inference
# ----------------------------------------------------------------------------------------
def packable(weight: Tensor) -> bool:
    """Whether `pack_linears` packs this weight: a CPU tensor of a dtype this torch and CPU
    pack (fp32; bf16 needs bf16 instructions such as AVX512-BF16; fp16 is left to F.linear)."""
    return weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16) and _packs(weight.dtype)


@functools.cache
def _packs(dtype: torch.dtype) -> bool:
    """Tried once per dtype: the ops are internal to torch, and older builds or CPUs without
    bf16 instructions refuse some dtypes (or lack the ops)."""
    if _ONEDNN_PACK is None:
        return False
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(8, 16, generator=gen), torch.randn(4, 16, generator=gen)
    try:
        with torch.no_grad():
            out = _ONEDNN_LINEAR(x.to(dtype), _pack(w.to(dtype)), None, "none", [], "")
    except RuntimeError:
        return False
    return torch.allclose(out.float(), x @ w.T, atol=0.1 if dtype == torch.bfloat16 else 1e-4)


def _pack(weight: Tensor) -> Tensor:
    """The weight [out, in] in oneDNN's blocked layout (an opaque tensor), chosen for any row count."""
    return _ONEDNN_PACK(weight.detach().contiguous(), None)


@functools.cache
def constant_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Zeros made once per shape, dtype and device, for hot paths that only read them (padding
    rows, an addend that is ignored); a few KB each."""
    return torch.zeros(shape, dtype=dtype, device=device)


# Fewer rows are padded with zeros to this many: oneDNN's packed kernels run 1-3 rows no faster
# (often slower) than 4. Measured here: a row's result is then bit-identical whatever the batch.
MIN_PACKED_ROWS = 4


def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None, activation: str | None = None) -> Tensor:
    """x [..., in] @ weight.T + bias for a weight packed by `_pack`, then `activation` (a key of
    `_POST_OPS`) fused into the call; fewer than MIN_PACKED_ROWS rows are padded."""
    if x.dtype != packed.dtype:  # oneDNN would fail with an unhelpful message
        raise TypeError(f"packed {packed.dtype} weights, input is {x.dtype}")
    out_features, in_features = packed.shape
    flat = x if x.dim() == 2 else x.reshape(-1, in_features)  # a decoding step's rows: as they are
    rows = flat.shape[0]
    if rows < MIN_PACKED_ROWS:
        flat = torch.cat([flat, constant_zeros((MIN_PACKED_ROWS - rows, in_features), flat.dtype, flat.device)])
    post_op = ("none", [], "") if activation is None else _POST_OPS.get(activation)
    if post_op is None:  # silently skipping it would return wrong values
        raise ValueError(f"packed layers fuse {', '.join(_POST_OPS)}, not {activation!r}")
    out = _ONEDNN_LINEAR(flat.contiguous(), packed, bias, *post_op)
    if rows < MIN_PACKED_ROWS:
        out = out[:rows]
    return out if x.dim() == 2 else out.view(*x.shape[:-1], out_features)


class PackedLinear(nn.Module):
    """An nn.Linear for CPU inference whose weight is stored once, in oneDNN's blocked layout.

    A plain weight is re-laid into that layout inside every oneDNN call; packed, the call only
    reads it. Against `matmul` on the plain weight (`benchmarks/results_kernels.md`, 2 threads,
    AMD EPYC): 1.2-1.8x faster at 4-64 rows of 1024-wide weights (beams, batches), 1.03-1.12x
    at 256 (encoder passes); at 1-4 rows of narrow (384-wide) weights, where `matmul` uses
    MKL's matrix-vector kernels, 0.6-1.3x. bf16 (CPUs with AVX512-BF16): 2-3x fp32 from 32 rows.
    Inference only: no gradients, and no moving it (`unpack_linears` gives nn.Linear back).
    `state_dict()` holds a plain `weight`: a packed model saves like any other."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = _pack(linear.weight)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: Tensor, activation: str | None = None) -> Tensor:
        """x @ weight.T + bias, then `activation` (a key of `_POST_OPS`) fused into the call."""
        if x.requires_grad and torch.is_grad_enabled():  # the op has no backward: gradients would be wrong
            raise RuntimeError("this model's linear layers are packed for inference (prepare_model / pipeline): "
                               "run it under torch.no_grad() or torch.inference_mode(), or "
                               "bertgen.kernels.unpack_linears(model) to train it")
        return packed_linear(x, self.packed, self.bias, activation)

    def unpacked(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device="meta", dtype=self.packed.dtype)
        linear.weight = nn.Parameter(self.packed.to_dense())
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone())
        return linear

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.packed.to_dense()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "weight"
        if key in state_dict:
            weight = state_dict[key]
            if tuple(weight.shape) != (self.out_features, self.in_features):
                error_msgs.append(f"size mismatch for {key}: {tuple(weight.shape)} in the state dict, "
                                  f"{(self.out_features, self.in_features)} in the model")
            else:
                self.packed = _pack(weight.to(self.packed.dtype))
            state_dict = {k: v for k, v in state_dict.items() if k != key}
        else:
            missing_keys.append(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _apply(self, fn, recurse=True):
        raise RuntimeError("this model's linear layers are packed for CPU inference "
                           "(bertgen.kernels.pack_linears); call bertgen.kernels.unpack_linears(model) "
                           "before moving it or changing its dtype")

    def __deepcopy__(self, memo):
        raise TypeError("a packed model cannot be deep-copied; unpack_linears(model) first")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}, dtype={self.packed.dtype}"


# A weight that must also stay plain (an LM head tied to the embedding lookup) can get a packed
# copy beside it: its size again in memory, for speed. `prepare_model` takes that trade for
# heads at most this wide, where the copy is smallest and one row (greedy decoding) gains most:
# plain against packed, ms per call (benchmarks/results_kernels.md): 30522x384 2.04 / 1.32,
# 50358x512 3.68 / 2.98; wider heads gain little at one row (30522x768 3.00 / 2.72, 50358x1024
# 6.13 / 6.56) for 94-206 MB. (At 4-32 rows, beams, a copy is 1.24-1.53x faster at every width.)
PACKED_COPY_MAX_WIDTH = 512


def worth_packed_copy(weight: Tensor) -> bool:
    return packable(weight) and weight.dim() == 2 and weight.shape[1] <= PACKED_COPY_MAX_WIDTH


class PackedCopy:
    """A packed copy of a weight that is also used plain. It follows the weight: packed again
    when the weight is replaced, re-allocated or changed in place (a load, an optimizer step),
    so it never answers with stale values. Not a parameter: not saved, not copied (a deep copy
    or a pickle of its owner drops it, and the owner computes from the plain weight)."""

    def __init__(self, weight: Tensor):
        self.packed, self._stamp = None, None
        self.of(weight)

    def of(self, weight: Tensor) -> Tensor | None:
        """The packed copy of `weight` as it is now; None when it can no longer be packed."""
        stamp = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))
        if self._stamp is None or self._source() is not weight or self._stamp != stamp:
            self.packed = _pack(weight) if packable(weight) else None
            self._source, self._stamp = weakref.ref(weight), stamp
        return self.packed

    def __deepcopy__(self, memo):
        return None

    def __reduce__(self):
        return type(None), ()


def _holding_packed_copy(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "packed_copy", None), PackedCopy)]


def packed_copies(model: nn.Module) -> list[Tensor]:
    """The packed copies (`PackedCopy`) held by `model`'s modules, for memory counts."""
    return [m.packed_copy.packed for m in _holding_packed_copy(model) if m.packed_copy.packed is not None]


def packed_weights(model: nn.Module) -> list[Tensor]:
    """The packed (opaque) weight tensors of `model`, each once: they are not parameters, so
    counts of parameters or bytes add them."""
    return [m.packed for m in model.modules() if isinstance(m, PackedLinear)]


def pack_linears(model: nn.Module, exclude: tuple[nn.Module, ...] = ()) -> int:
    """Replaces every packable nn.Linear in `model` (not inside `exclude`) by a PackedLinear,
    in place; modules shared by several parents (tied encoder-decoder layers) stay shared.
    Returns how many were packed (0 without oneDNN)."""
    skip = {id(m) for root in exclude for m in root.modules()}
    return _replace_modules(model, lambda m: type(m) is nn.Linear and id(m) not in skip and packable(m.weight),
                            PackedLinear, skip)


def unpack_linears(model: nn.Module) -> int:
    """Undoes `pack_linears`: plain nn.Linear layers again (trainable, movable); packed copies
    (`PackedCopy`) are dropped too."""
    for module in _holding_packed_copy(model):
        module.packed_copy = None
    return _replace_modules(model, lambda m: isinstance(m, PackedLinear), PackedLinear.unpacked)


def _replace_modules(model: nn.Module, select, convert, skip: set[int] = frozenset()) -> int:
    """Swaps each selected child module for `convert(child)`, once per module object (a module
    shared by several parents gets one replacement, still shared). Parent by parent, the memory
    of the modules just dropped is handed back, so the model never holds both copies."""
    replaced: dict[int, nn.Module] = {}

    def swap_children(parent: nn.Module) -> bool:
        swapped = False
        for name, child in list(parent._modules.items()):  # named_children() hides repeats
            if child is not None and select(child):
                if id(child) not in replaced:
                    replaced[id(child)] = convert(child)
                setattr(parent, name, replaced[id(child)])
                swapped = True
        return swapped

    # parents only: a list that also held the modules being replaced would keep them alive
    for parent in [m for m in model.modules() if not select(m) and id(m) not in skip]:
        if swap_children(parent):
            release_freed_memory()
    return len(replaced)


def release_freed_memory() -> None:
    """glibc keeps freed blocks of a few MB for reuse rather than returning them, so a model
    whose weights were re-allocated one by one would hold twice its size (measured: 3.56 GB
    for 1.74 GB of weights); malloc_trim hands the freed pages back. Elsewhere: a no-op."""
    if _GLIBC is not None:
        _GLIBC.malloc_trim(0)


# Allocations at least this large get their own mapping, unmapped when freed.
MMAP_THRESHOLD_BYTES = 4 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def map_large_allocations(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Has glibc map every allocation of at least `threshold` bytes on its own, process-wide
    (`bertgen.pipeline` calls it before it loads a model). Returns whether it took (False
    off glibc).

    By default glibc raises that threshold as large blocks are freed, up to 32 MB. Weights
    then land in the heap, and when packing or fusing replaces them they leave holes there. A
    decoding step's temporaries (beam logits, activations of long batches) are carved out of
    those holes a little elsewhere each step, and each new place costs pages again. Measured on
    the large model's beam search (8 inputs x 4 beams, 32 steps): peak RSS -50 to -60 MB with
    this set before loading, and no change in speed. The cost: an 8 MB block now costs
    mapping and page faults each time, so a training step run in the same process was ~3%
    slower (the bundled model, batch 32 x 64)."""
    return _GLIBC is not None and bool(_GLIBC.mallopt(_M_MMAP_THRESHOLD, threshold))


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # both or neither: musl and macOS lack malloc_trim
        return libc
    except (OSError, AttributeError):
        return None


_GLIBC = _glibc()
