"""The fastest CPU matrix multiply we measured for each shape, behind one `linear` call.

On this class of CPU (AMD EPYC, AVX2) PyTorch's default MKL sgemm runs 1.2-2.5x slower than
oneDNN's on the same plain (unpacked) fp32 weights: MKL picks slow kernels on AMD. oneDNN's
linear is an internal torch op (`torch.ops.mkldnn._linear_pointwise`): used when present,
for inference only (no autograd graph being recorded), so training numerics are unchanged.
Measured with `python benchmarks/bench_kernels.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ONEDNN_LINEAR = (getattr(torch.ops.mkldnn, "_linear_pointwise", None)
                  if torch.backends.mkldnn.is_available() else None)


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


def linear(x: Tensor, module: nn.Module) -> Tensor:
    """`module(x)` for an nn.Linear through `matmul`; quantized (int8 / 4-bit) layers bring their
    own kernels and are called as they are."""
    if type(module) is nn.Linear:
        return matmul(x, module.weight, module.bias)
    return module(x)
