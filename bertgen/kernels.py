"""The fastest CPU matrix multiply we measured for each shape, behind one `linear` call.

On this class of CPU (AMD EPYC) PyTorch's default MKL sgemm runs 1.2-2.5x slower than
oneDNN's on the same plain (unpacked) fp32 weights: MKL picks slow kernels on AMD. oneDNN's
linear is an internal torch op (`torch.ops.mkldnn._linear_pointwise`): used when present,
for inference only (no autograd graph being recorded), so training numerics are unchanged.

For inference `pack_linears` goes one step further: it stores each weight once in a layout
made for the kernel that reads it (`PackedLinear`). On CPUs with AVX-512 or AVX2 that is our
own kernel's ("panels", `bertgen/csrc/panel_linear.cpp`, compiled on first use for the CPU's
instruction set): on AVX-512 1.1-1.5x faster than oneDNN's packed kernels at 1-32 rows, as fast
at 256; on AVX2 1.7-3.1x faster at one row, 1.2-2.7x at 2-4, 0.95-1.3x at 32, 0.85-1.0x at 256.
Elsewhere, or when it cannot be built, oneDNN's blocked layout, which a plain weight is
otherwise re-laid into on every call.
Measured with `python benchmarks/bench_kernels.py`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import shutil
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path

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
            out = _ONEDNN_LINEAR(x.to(dtype), _ONEDNN_PACK(w.to(dtype), None), None, "none", [], "")
    except RuntimeError:
        return False
    return torch.allclose(out.float(), x @ w.T, atol=0.1 if dtype == torch.bfloat16 else 1e-4)


def _pack(weight: Tensor, native: bool = True, storage: torch.dtype | None = None) -> Tensor | PanelWeight:
    """The weight [out, in] in the layout of the kernel that will read it, for any row count:
    fp32 with the native kernels built (and `native`), their panels; otherwise oneDNN's
    blocked layout (an opaque tensor). storage=torch.bfloat16: an fp32 weight rounded to bf16
    in the native panels, which compute in fp32 (`quantize="bf16-weights"`)."""
    weight = weight.detach().contiguous()
    if storage is not None:
        return PanelWeight(require_native_kernels(), weight.to(storage))
    native = native_kernels() if native and weight.dtype == torch.float32 else None
    return PanelWeight(native, weight) if native is not None else _ONEDNN_PACK(weight, None)


def require_native_kernels():
    """The native kernels, or a clear error where they are missing: weights stored in bf16 live
    only in their panels (the kernel checks the storage dtype itself)."""
    native = native_kernels()
    if native is None:
        raise ValueError("weights stored in bf16 need bertgen's native CPU kernels, which are not built here "
                         f"(an AVX2 or AVX-512 CPU, a C++ compiler and ninja; {NATIVE_ENV} not 0): "
                         "use float32 or int8 instead")
    return native


# ----------------------------------------------------------------------------------------
# Native panel kernels (bertgen/csrc/panel_linear.cpp)
# ----------------------------------------------------------------------------------------
NATIVE_ENV = "BERTGEN_NATIVE_KERNELS"  # "0": never build or use them
_NATIVE_SOURCES = [Path(__file__).resolve().parent / "csrc" / name for name in ("panel_linear.cpp", "decoder_step.cpp")]
_NATIVE_NAME = "bertgen_panel_linear"
# The instruction sets the kernels are written for (torch's name for the CPU's -> compiler flags)
_NATIVE_ISA_FLAGS = {"AVX512": ["-mavx512f", "-mfma"], "AVX2": ["-mavx2", "-mfma"]}
_NATIVE_LOCK = threading.Lock()


def native_kernels():
    """bertgen's own fp32 CPU kernels, compiled on first use (~30 s once per machine, torch and
    Python version; a C++ compiler, ninja and Python's headers needed) into
    `native_build_directory()`, or None: on CPUs with neither AVX-512 nor AVX2 (`native_isa`),
    with BERTGEN_NATIVE_KERNELS=0, or when the build fails (a warning says why; oneDNN's packed
    kernels take over, 1.0-1.65x slower at decoding's row counts on AVX-512, up to 3x on AVX2).
    Thread-safe: the app builds it in the background while a request may need it."""
    with _NATIVE_LOCK:
        return _build_native_kernels()


@functools.cache
def _build_native_kernels():
    isa = native_isa()
    if os.environ.get(NATIVE_ENV, "1") == "0" or isa is None:
        return None
    try:
        from torch.utils import cpp_extension
        _find_ninja()
        build = native_build_directory()
        build.mkdir(parents=True, exist_ok=True)
        _drop_stale_lock(build / "lock")
        if not any(build.glob("*.so")):
            print("bertgen: compiling its CPU matrix kernel (once per machine, ~30 s)", file=sys.stderr, flush=True)
        module = cpp_extension.load(_native_name(isa), [str(p) for p in _NATIVE_SOURCES], build_directory=str(build),
                                    verbose=False, extra_cflags=["-O3", *_NATIVE_ISA_FLAGS[isa], "-fopenmp"],
                                    extra_ldflags=["-fopenmp"])
        gen = torch.Generator().manual_seed(0)
        w, b, x = torch.randn(70, 33, generator=gen), torch.randn(70, generator=gen), torch.randn(7, 33, generator=gen)
        if not torch.allclose(module.linear(x, module.pack(w), b, 70, 0), F.linear(x, w, b), rtol=1e-4, atol=1e-4):
            raise RuntimeError("its self-check against F.linear failed")
        return module
    except Exception as error:  # no compiler, no headers, a read-only cache: decode with oneDNN
        message = " ".join(str(error).split())[:300]
        warnings.warn(f"bertgen: its native CPU kernel is unavailable ({type(error).__name__}: {message}); "
                      f"using oneDNN's, 1.0-1.65x slower. Set {NATIVE_ENV}=0 to skip the attempt.", stacklevel=2)
        return None


def native_isa() -> str | None:
    """The instruction set the native kernels are built for on this CPU: torch's own reading
    of it ("AVX512", or "AVX2", which torch grants only with FMA; ATEN_CPU_CAPABILITY=avx2
    lowers it), or None where the kernels have no version."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in _NATIVE_ISA_FLAGS else None


def _native_name(isa: str | None) -> str:
    """One module (and build folder) per instruction set: a cache shared by machines of both
    kinds keeps each."""
    return _NATIVE_NAME if isa in (None, "AVX512") else f"{_NATIVE_NAME}_{isa.lower()}"


def native_build_directory() -> Path:
    """Where the kernel is built and cached: under $TORCH_EXTENSIONS_DIR when set, else
    $XDG_CACHE_HOME/bertgen (~/.cache/bertgen), one folder per Python and torch version (a
    build is tied to both)."""
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bertgen"
    tag = f"{_native_name(native_isa())}-py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}"
    return Path(base) / tag.replace("+", "-")


def _drop_stale_lock(lock: Path, older_than_s: float = 600) -> None:
    """torch waits without end on the lock file of a build; one killed mid-build (a closed
    terminal, a restarted Space) leaves it behind. A build takes ~30 s: an old lock is stale."""
    try:
        if time.time() - lock.stat().st_mtime > older_than_s:
            lock.unlink()
    except FileNotFoundError:
        pass


def _find_ninja() -> None:
    """torch builds with the `ninja` on PATH; the pip package's (requirements.txt) is not on it
    when a virtual environment's python runs without being activated."""
    if shutil.which("ninja") is None:
        try:
            import ninja
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass  # torch's own error then says that ninja is missing


PANEL_WIDTH = 64  # outputs per panel (kPanel in panel_linear.cpp)


class PanelWeight:
    """A weight [out, in] in the native kernel's layout: panels of 64 outputs, each [in, 64]
    (zeros past `out`), so one row's product streams each panel front to back. It answers
    `dtype`, `shape`, `numel`, `element_size` and `to_dense` as the opaque oneDNN tensor does;
    `dtype` is what it computes in and returns (fp32), `storage` what its panels hold (fp32 or
    bf16: `element_size` counts those bytes)."""

    __slots__ = ("native", "panels", "shape", "columns")

    def __init__(self, native, weight: Tensor):
        self.native, self.panels, self.shape = native, native.pack(weight), weight.shape
        # where each output sits in a panel (in order for fp32; bf16 interleaves pairs of vectors)
        self.columns = None if self.panels.dtype == torch.float32 else native.columns(self.panels)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def storage(self) -> torch.dtype:
        return self.panels.dtype

    def numel(self) -> int:
        return self.shape.numel()

    def element_size(self) -> int:
        return self.panels.element_size()

    def to_dense(self) -> Tensor:
        return self.native.unpack(self.panels, self.shape[0]).float()

    def rows(self, index: Tensor) -> Tensor:
        """weight[index] ([*index.shape, in]), gathered from the panels: an embedding lookup
        from a tied LM head's panels (`PanelEmbedding`) needs no plain copy of the table."""
        column = index % PANEL_WIDTH if self.columns is None else self.columns[index % PANEL_WIDTH]
        return self.panels[index // PANEL_WIDTH, :, column].float()

    def load_(self, weight: Tensor) -> None:
        """Packs `weight` (same shape) into these panels in place, so whoever shares them (a
        tied head and embedding lookup) sees the new values."""
        if tuple(weight.shape) != tuple(self.shape):
            raise ValueError(f"weight of shape {tuple(weight.shape)} for panels of {tuple(self.shape)}")
        self.panels.copy_(self.native.pack(weight.detach().to(self.storage).contiguous()))

    def linear(self, x: Tensor, bias: Tensor | None, activation: str | None = None) -> Tensor:
        """activation(x [rows, in] @ weight.T + bias); activation a key of `PANEL_ACTIVATIONS`."""
        return self.native.linear(x.contiguous(), self.panels, bias, self.shape[0], PANEL_ACTIVATIONS[activation])


# Activations the panel kernel computes as it stores its results (its codes): a second pass
# over the output costs more (large model: GELU apart ~2 ms of a ~50 ms greedy step). Its GELU
# is erf's Abramowitz-Stegun form, as torch's own vectorized GELU (within 2e-6 of it, tested).
PANEL_ACTIVATIONS = {None: 0, "gelu": 1, "relu": 2}


@functools.cache
def constant_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Zeros made once per shape, dtype and device, for hot paths that only read them (padding
    rows, an addend that is ignored); a few KB each."""
    return torch.zeros(shape, dtype=dtype, device=device)


# Fewer rows are padded with zeros to this many for oneDNN: its packed kernels run 1-3 rows no
# faster (often slower) than 4. Measured here: a row's result is then bit-identical whatever the
# batch. (The panel kernel computes each row on its own: the same holds without padding.)
MIN_PACKED_ROWS = 4


def packed_linear(x: Tensor, packed: Tensor | PanelWeight, bias: Tensor | None,
                  activation: str | None = None) -> Tensor:
    """x [..., in] @ weight.T + bias for a weight packed by `_pack`, then `activation` (a key of
    `_POST_OPS`), fused into the matrix call where the kernel has it."""
    if x.dtype != packed.dtype:  # oneDNN would fail with an unhelpful message
        raise TypeError(f"packed {packed.dtype} weights, input is {x.dtype}")
    out_features, in_features = packed.shape
    flat = x if x.dim() == 2 else x.reshape(-1, in_features)  # a decoding step's rows: as they are
    rows = flat.shape[0]
    post_op = ("none", [], "") if activation is None else _POST_OPS.get(activation)
    if post_op is None:  # silently skipping it would return wrong values
        raise ValueError(f"packed layers fuse {', '.join(_POST_OPS)}, not {activation!r}")
    if type(packed) is PanelWeight:  # any row count as it is
        fused = activation in PANEL_ACTIVATIONS
        out = packed.linear(flat, bias, activation if fused else None)
        out = out if fused else ACT_FNS[activation](out)
    else:
        if rows < MIN_PACKED_ROWS:
            flat = torch.cat([flat, constant_zeros((MIN_PACKED_ROWS - rows, in_features), flat.dtype, flat.device)])
        out = _ONEDNN_LINEAR(flat.contiguous(), packed, bias, *post_op)
        if rows < MIN_PACKED_ROWS:
            out = out[:rows]
    return out if x.dim() == 2 else out.view(*x.shape[:-1], out_features)


class PackedLinear(nn.Module):
    """An nn.Linear for CPU inference whose weight is stored once, in its kernel's layout: the
    native panels (fp32 on AVX-512 and AVX2 CPUs, `native_kernels`) or oneDNN's blocked layout.

    A plain weight is re-laid into oneDNN's layout inside every oneDNN call; packed, the call
    only reads it. oneDNN packed against `matmul` on the plain weight
    (`benchmarks/results_kernels.md`, 2 threads, AMD EPYC): 1.2-1.8x faster at 4-64 rows of
    1024-wide weights (beams, batches), 1.03-1.12x at 256 (encoder passes); at 1-4 rows of
    narrow (384-wide) weights 0.6-1.3x. The panel kernel is another 1.1-1.5x faster than oneDNN
    packed at 1-32 rows and as fast at 256 (AVX-512; on AVX2 0.95-3.1x at 1-32 rows, 0.85-1.0x at 256).
    bf16 (CPUs with AVX512-BF16, oneDNN): 2-3x fp32 from 32 rows.
    Inference only: no gradients, and no moving it (`unpack_linears` gives nn.Linear back).
    `state_dict()` holds a plain `weight`: a packed model saves like any other."""

    def __init__(self, linear: nn.Linear, native: bool = True, storage: torch.dtype | None = None):
        """native=False: oneDNN's layout even where the panel kernel is built (to compare them).
        storage=torch.bfloat16: an fp32 weight kept in bf16 panels (`_pack`)."""
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = _pack(linear.weight, native, storage)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: Tensor, activation: str | None = None, bias: Tensor | None = None) -> Tensor:
        """x @ weight.T + bias, then `activation` (a key of `_POST_OPS`) fused into the call.
        `bias`: one kept apart, for a layer without its own (the LM head's)."""
        if x.requires_grad and torch.is_grad_enabled():  # the op has no backward: gradients would be wrong
            raise RuntimeError("this model's linear layers are packed for inference (prepare_model / pipeline): "
                               "run it under torch.no_grad() or torch.inference_mode(), or "
                               "bertgen.kernels.unpack_linears(model) to train it")
        return packed_linear(x, self.packed, self.bias if bias is None else bias, activation)

    def unpacked(self, dense: dict | None = None) -> nn.Linear:
        """An nn.Linear with this weight; `dense` (id of a packed weight -> its Parameter) gives
        modules that shared packed weights one Parameter again (`unpack_linears`)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device="meta", dtype=self.packed.dtype)
        linear.weight = _dense_parameter(self.packed, dense)
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
            elif type(self.packed) is PanelWeight:  # in place: an embedding lookup may share the panels
                self.packed.load_(weight)
            else:
                self.packed = _pack(weight.to(self.packed.dtype), native=False)
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
        layout = f"panels of {self.packed.storage}" if type(self.packed) is PanelWeight else "onednn"
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}, dtype={self.packed.dtype}, layout={layout}"


def _dense_parameter(packed: Tensor | PanelWeight, dense: dict | None) -> nn.Parameter:
    dense = {} if dense is None else dense
    if id(packed) not in dense:
        dense[id(packed)] = nn.Parameter(packed.to_dense())
    return dense[id(packed)]


class PanelEmbedding(nn.Module):
    """An nn.Embedding for CPU inference whose table is the panels of the LM head tied to it
    (`share_panels`): rows are gathered from the panels (`PanelWeight.rows`), so the head reads
    its weight in the kernel's layout while no plain copy of the table is kept (a packed copy
    beside the plain table costs its size again: 206 MB for a 50358 x 1024 head). Inference
    only, like PackedLinear; `state_dict()` holds a plain `weight`; `unpack_linears` gives the
    tied nn.Embedding and nn.Linear back."""

    def __init__(self, embedding: nn.Embedding, packed: PanelWeight):
        super().__init__()
        if tuple(packed.shape) != tuple(embedding.weight.shape):
            raise ValueError(f"panels of {tuple(packed.shape)} for an embedding of {tuple(embedding.weight.shape)}")
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx, self.packed = embedding.padding_idx, packed

    def forward(self, input_ids: Tensor) -> Tensor:
        if input_ids.numel() and not (0 <= int(input_ids.min()) and int(input_ids.max()) < self.num_embeddings):
            raise IndexError(f"token ids must lie in [0, {self.num_embeddings})")
        return self.packed.rows(input_ids)

    def unpacked(self, dense: dict | None = None) -> nn.Embedding:
        embedding = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx,
                                 device="meta", dtype=self.packed.dtype)
        embedding.weight = _dense_parameter(self.packed, dense)
        return embedding

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.packed.to_dense()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
        elif tuple(state_dict[key].shape) != tuple(self.packed.shape):
            error_msgs.append(f"size mismatch for {key}: {tuple(state_dict[key].shape)} in the state dict, "
                              f"{tuple(self.packed.shape)} in the model")
        else:
            self.packed.load_(state_dict[key])

    _apply = PackedLinear._apply
    __deepcopy__ = PackedLinear.__deepcopy__

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, layout=panels " \
               f"(shared with the LM head)"


def share_panels(embedding: nn.Embedding, head: nn.Linear,
                 storage: torch.dtype | None = None) -> tuple[PanelEmbedding, PackedLinear] | None:
    """A tied embedding lookup and LM head (one Parameter) as one set of panels shared by a
    `PanelEmbedding` and a `PackedLinear` (`storage` as for `PackedLinear`); None (nothing to
    do) unless the weight is tied, fp32 on CPU and the native kernels are built (oneDNN's
    opaque layout cannot be gathered)."""
    weight = embedding.weight
    if head.weight is not weight or weight.dtype != torch.float32 or weight.device.type != "cpu":
        return None
    if native_kernels() is None:
        return None
    packed_head = PackedLinear(head, storage=storage)
    return PanelEmbedding(embedding, packed_head.packed), packed_head


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


def pack_linears(model: nn.Module, exclude: tuple[nn.Module, ...] = (), storage: torch.dtype | None = None) -> int:
    """Replaces every packable nn.Linear in `model` (not inside `exclude`) by a PackedLinear
    (`storage` as for PackedLinear), in place; modules shared by several parents (tied
    encoder-decoder layers) stay shared. Returns how many were packed (0 without oneDNN)."""
    skip = {id(m) for root in exclude for m in root.modules()}
    return _replace_modules(model, lambda m: type(m) is nn.Linear and id(m) not in skip and packable(m.weight),
                            functools.partial(PackedLinear, storage=storage), skip)


def unpack_linears(model: nn.Module) -> int:
    """Undoes `pack_linears` and `share_panels`: plain nn.Linear and nn.Embedding layers again
    (trainable, movable), a head and lookup that shared panels tied to one Parameter again;
    packed copies (`PackedCopy`) are dropped too. Returns how many modules were unpacked."""
    for module in _holding_packed_copy(model):
        module.packed_copy = None
    dense = {}
    return _replace_modules(model, lambda m: isinstance(m, (PackedLinear, PanelEmbedding)),
                            lambda m: m.unpacked(dense))


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
