// One-row matrix-vector product over a plain row-major fp32 weight, for
// bench_native_gemv.py (an experiment, not part of bertgen): y = W x + b.
// Each thread streams whole weight rows front to back, one contiguous read per row,
// with four independent accumulators so the FMA latency never limits the read rate.
// GCC/Clang vector extensions: 16 lanes, lowered to AVX-512, AVX2 or SSE by -march=native.
#include <torch/extension.h>
#include <cstring>

typedef float v16 __attribute__((vector_size(64)));

static inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);  // an unaligned load
  return v;
}

typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

static inline float lanes_sum(v16 v) {  // a tree, not a 16-add chain
  v8 h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  v4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  return (q[0] + q[2]) + (q[1] + q[3]);
}

torch::Tensor gemv(torch::Tensor x, torch::Tensor weight, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.dim() == 1 && weight.dim() == 2 && x.size(0) == weight.size(1), "gemv: x [in], weight [out, in]");
  TORCH_CHECK(x.scalar_type() == torch::kFloat && weight.scalar_type() == torch::kFloat, "gemv: float32 only");
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "gemv: contiguous tensors only");
  const int64_t out = weight.size(0), in = weight.size(1), body = in - in % 64;
  auto y = torch::empty({out}, x.options());
  const float* w = weight.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < out; ++o) {
    const float* row = w + o * in;
    v16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t i = 0; i < body; i += 64) {
      a0 += load16(row + i) * load16(xp + i);
      a1 += load16(row + i + 16) * load16(xp + i + 16);
      a2 += load16(row + i + 32) * load16(xp + i + 32);
      a3 += load16(row + i + 48) * load16(xp + i + 48);
    }
    float s = lanes_sum((a0 + a1) + (a2 + a3));
    for (int64_t i = body; i < in; ++i) s += row[i] * xp[i];
    yp[o] = s + (bp ? bp[o] : 0.f);
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemv", &gemv, "y = weight @ x + bias for one row (fp32, plain row-major weight)");
}
