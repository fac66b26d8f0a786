// fp32 linear layers for CPU inference on AVX-512, in a layout of our own ("panels").
//
// Why: oneDNN's packed kernels read a decoding step's weights at 27-40 GB/s where the
// memory delivers 31-67, and greedy decoding is bound by that read. This kernel streams
// each panel front to back and matches or beats oneDNN from 1 to 256 rows
// (docs/GENERATION.md). Built on first use by bertgen/kernels.py; oneDNN is the fallback.
//
// Layout: a weight [out, in] becomes panels [ceil(out / 64), in, 64]: panel p holds outputs
// 64p..64p+63, and for each input k their 64 weights side by side (zeros past `out`).
// y[r, o] = bias[o] + sum_k x[r, k] W[o, k] is accumulated over k in order, one row at a time,
// so a row's result does not depend on how many rows share the call.
#include "panel_linear.h"

#include <immintrin.h>

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int64_t kPanel = 64;    // outputs per panel: four 16-float vectors
constexpr int64_t kDepth = 1024;  // inputs per pass over a panel (1024 x 64 floats = 256 KB, in L2)
constexpr int kRows = 6;          // rows per tile: 6 x 4 accumulators of the 32 registers

// e^x for x <= 0 (GELU's only use), Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-5
// polynomial for e^r, then the 2^n scaling. Relative error ~1e-7.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));  // below: e^x underflows to ~0 anyway
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// GELU with erf, x/2 (1 + erf(x / sqrt 2)), erf by Abramowitz and Stegun 7.1.26 (absolute
// error <= 1.5e-7), the formula torch's own vectorized erf uses.
inline __m512 gelu(__m512 x) {
  const __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f));
  const __m512 a = _mm512_abs_ps(z);
  const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(a, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f)));
  __m512 q = _mm512_set1_ps(1.061405429f);
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(-1.453152027f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.421413741f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(-0.284496736f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(0.254829592f));
  q = _mm512_mul_ps(q, t);
  const __m512 erf_abs = _mm512_fnmadd_ps(q, exp_nonpositive(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), a), a)),
                                          _mm512_set1_ps(1.0f));
  const __mmask16 negative = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 erf = _mm512_mask_sub_ps(erf_abs, negative, _mm512_setzero_ps(), erf_abs);
  return _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.5f)), _mm512_add_ps(erf, _mm512_set1_ps(1.0f)));
}

inline __m512 activate(__m512 v, int64_t activation) {
  if (activation == kGelu) return gelu(v);
  if (activation == kRelu) return _mm512_max_ps(v, _mm512_setzero_ps());
  return v;
}

// Rows [0, R) of one panel over inputs [k0, k1): accumulators start from the bias (first
// pass) or from y (later passes), and `mask` keeps the lanes past `out` out of y. The last
// pass applies the activation before it stores.
template <int R>
void tile(const float* panel, const float* x, int64_t in, float* y, int64_t out, int64_t k0,
          int64_t k1, const float* bias, const __mmask16 mask[4], int64_t activation) {
  __m512 acc[R][4];
  for (int v = 0; v < 4; ++v) {
    for (int r = 0; r < R; ++r) {
      if (k0 > 0) acc[r][v] = _mm512_maskz_loadu_ps(mask[v], y + r * out + 16 * v);
      else acc[r][v] = bias ? _mm512_maskz_loadu_ps(mask[v], bias + 16 * v) : _mm512_setzero_ps();
    }
  }
  const float* w = panel + k0 * kPanel;
  for (int64_t k = k0; k < k1; ++k, w += kPanel) {
    const __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16);
    const __m512 w2 = _mm512_loadu_ps(w + 32), w3 = _mm512_loadu_ps(w + 48);
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * in + k]);
      acc[r][0] = _mm512_fmadd_ps(w0, xv, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(w1, xv, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(w2, xv, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(w3, xv, acc[r][3]);
    }
  }
  const int64_t act = k1 == in ? activation : kNone;
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < 4; ++v) _mm512_mask_storeu_ps(y + r * out + 16 * v, mask[v], activate(acc[r][v], act));
}

template <int R>
void tail_tile(int rows_left, const float* panel, const float* x, int64_t in, float* y, int64_t out,
               int64_t k0, int64_t k1, const float* bias, const __mmask16 mask[4], int64_t activation) {
  if constexpr (R > 0) {
    if (rows_left == R) return tile<R>(panel, x, in, y, out, k0, k1, bias, mask, activation);
    tail_tile<R - 1>(rows_left, panel, x, in, y, out, k0, k1, bias, mask, activation);
  }
}

// Zeros of `shape` whose 2 MB-aligned stretches the kernel may back with 2 MB pages
// (transparent huge pages, asked for with madvise before the first touch). A weight streamed
// through 4 KB pages pays a page walk every 4 KB: panels in 2 MB pages read ~6% faster
// (docs/GENERATION.md). The buffer is over-allocated by up to 2 MB of address space, never
// touched, so it costs no memory. Where the kernel refuses (THP off), plain pages.
torch::Tensor huge_page_zeros(at::IntArrayRef shape, const torch::TensorOptions& options) {
  constexpr int64_t kHuge = 2 << 20, kFloats = kHuge / sizeof(float);
  int64_t numel = 1;
  for (auto n : shape) numel *= n;
  if (numel * int64_t(sizeof(float)) < 2 * kHuge) return torch::zeros(shape, options);
  auto buffer = torch::empty({numel + kFloats}, options);
  const auto start = reinterpret_cast<uintptr_t>(buffer.data_ptr<float>());
  const auto aligned = (start + kHuge - 1) & ~uintptr_t(kHuge - 1);
  madvise(reinterpret_cast<void*>(aligned), (numel * sizeof(float)) & ~uintptr_t(kHuge - 1), MADV_HUGEPAGE);
  return buffer.narrow(0, int64_t(aligned - start) / int64_t(sizeof(float)), numel).view(shape).zero_();
}

void check_weight(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.is_contiguous(),
              "panel_linear: ", what, " must be a contiguous float32 CPU tensor");
}

}  // namespace

torch::Tensor pack(const torch::Tensor& weight) {
  check_weight(weight, "the weight");
  TORCH_CHECK(weight.dim() == 2, "panel_linear: the weight must be [out, in]");
  const int64_t out = weight.size(0), in = weight.size(1), panels = (out + kPanel - 1) / kPanel;
  auto packed = huge_page_zeros({panels, in, kPanel}, weight.options());
  const float* src = weight.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t o = p * kPanel; o < std::min(out, (p + 1) * kPanel); ++o)
      for (int64_t k = 0; k < in; ++k) dst[(p * in + k) * kPanel + o % kPanel] = src[o * in + k];
  return packed;
}

torch::Tensor unpack(const torch::Tensor& packed, int64_t out) {
  check_weight(packed, "the packed weight");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kPanel && out > (packed.size(0) - 1) * kPanel &&
                  out <= packed.size(0) * kPanel,
              "panel_linear: not a packed weight of ", out, " outputs");
  return packed.transpose(1, 2).reshape({-1, packed.size(1)}).narrow(0, 0, out).contiguous();
}

// activation(x [rows, in] @ W.T + bias) for W packed by `pack`: [rows, out]. activation: 0
// none, 1 GELU (erf), 2 ReLU.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& packed, const c10::optional<torch::Tensor>& bias,
                     int64_t out, int64_t activation) {
  TORCH_CHECK(activation >= kNone && activation <= kRelu, "panel_linear: unknown activation ", activation);
  check_weight(x, "the input");
  check_weight(packed, "the packed weight");
  const int64_t rows = x.size(0), in = x.size(1), panels = packed.size(0);
  TORCH_CHECK(x.dim() == 2 && packed.dim() == 3 && packed.size(1) == in && packed.size(2) == kPanel &&
                  out > (panels - 1) * kPanel && out <= panels * kPanel,
              "panel_linear: input [rows, ", in, "] does not fit the packed weight");
  const float* b = nullptr;
  if (bias.has_value()) {
    check_weight(*bias, "the bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out, "panel_linear: the bias must be [out]");
    b = bias->data_ptr<float>();
  }
  auto y = torch::empty({rows, out}, x.options());
  panel_linear_into(x.data_ptr<float>(), rows, in, packed.data_ptr<float>(), b, out, y.data_ptr<float>(), activation);
  return y;
}

void panel_linear_into(const float* xs, int64_t rows, int64_t in, const float* ws, const float* b, int64_t out,
                       float* ys, int64_t activation) {
  if (rows == 0) return;
  const int64_t panels = (out + kPanel - 1) / kPanel;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t width = std::min(kPanel, out - p * kPanel);  // outputs in this panel
    __mmask16 mask[4];
    for (int v = 0; v < 4; ++v) {
      const int64_t lanes = std::clamp<int64_t>(width - 16 * v, 0, 16);
      mask[v] = static_cast<__mmask16>((1u << lanes) - 1u);
    }
    const float* panel = ws + p * in * kPanel;
    const float* pb = b ? b + p * kPanel : nullptr;
    for (int64_t k0 = 0; k0 < in; k0 += kDepth) {
      const int64_t k1 = std::min(in, k0 + kDepth);
      int64_t r = 0;
      for (; r + kRows <= rows; r += kRows)
        tile<kRows>(panel, xs + r * in, in, ys + r * out + p * kPanel, out, k0, k1, pb, mask, activation);
      tail_tile<kRows - 1>(static_cast<int>(rows - r), panel, xs + r * in, in, ys + r * out + p * kPanel, out,
                           k0, k1, pb, mask, activation);
    }
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack", &pack, "weight [out, in] -> panels [ceil(out / 64), in, 64]");
  m.def("unpack", &unpack, "panels, out -> weight [out, in]");
  m.def("linear", &linear, "activation(x [rows, in] @ weight.T + bias), the weight packed by pack; "
        "activation 0 none, 1 GELU (erf), 2 ReLU");
  m.def("huge_page_zeros", [](std::vector<int64_t> shape) { return huge_page_zeros(shape, torch::kFloat); },
        "float32 zeros laid out as the panels are (2 MB pages where the kernel allows): for reads measured alike");
  register_decoder_step(m);
}
