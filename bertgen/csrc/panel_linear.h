// Shared by panel_linear.cpp (the matrix kernel) and decoder_step.cpp (a decoding step built on it).
#pragma once
#include <torch/extension.h>

enum Activation : int64_t { kNone = 0, kGelu = 1, kRelu = 2 };

// y [rows, out] = activation(x [rows, in] @ W.T + bias) for W in panels (`pack`: fp32 or bf16,
// contiguous, checked by the caller), all else fp32; bias may be null. Threads (OpenMP) split
// the panels.
void panel_linear_into(const float* x, int64_t rows, int64_t in, const torch::Tensor& panels, const float* bias,
                       int64_t out, float* y, int64_t activation);

void register_decoder_step(pybind11::module& m);
