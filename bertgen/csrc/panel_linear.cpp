// fp32 linear layers for CPU inference on AVX-512 or AVX2, in a layout of our own ("panels"),
// with weights stored in fp32 or in bf16 (widened to fp32 as they are read: half the bytes).
//
// Why: oneDNN's packed kernels read a decoding step's weights at 27-40 GB/s where the
// memory delivers 31-67, and greedy decoding is bound by that read. This kernel streams
// each panel front to back and matches or beats oneDNN from 1 to 256 rows
// (docs/GENERATION.md). Built on first use by bertgen/kernels.py; oneDNN is the fallback.
//
// Layout: a weight [out, in] becomes panels [ceil(out / 64), in, 64]: panel p holds outputs
// 64p..64p+63, and for each input k their 64 weights side by side (zeros past `out`).
// y[r, o] = bias[o] + sum_k x[r, k] W[o, k] is accumulated over k in order, one row at a time,
// so a row's result does not depend on how many rows share the call. bf16 panels hold the same
// layout in 16-bit elements, the upper halves of the fp32 weights they were rounded from.
#include "panel_linear.h"

#include <immintrin.h>

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kPanel = 64;    // outputs per panel
constexpr int64_t kDepth = 1024;  // inputs per pass over a panel (1024 x 64 floats = 256 KB, in L2)

// The vector operations the kernel needs, on AVX-512 (16 floats, 32 registers) or AVX2 with FMA
// (8 floats, 16 registers): the same source is built for the one the CPU has (kernels.py).
#if defined(__AVX512F__)
using Vec = __m512;
using Mask = __mmask16;  // lanes of a vector inside the weight's outputs
constexpr int kLanes = 16;
constexpr int kRows = 6, kColumns = 4;  // tile: 6 rows x 4 vectors, 24 of the 32 registers
inline Mask lane_mask(int64_t lanes) { return static_cast<Mask>((1u << lanes) - 1u); }
inline Vec load_part(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
inline void store_part(float* p, Mask m, Vec v) { _mm512_mask_storeu_ps(p, m, v); }
inline Vec load(const float* p) { return _mm512_loadu_ps(p); }
// 32 bf16 stored pairwise (`column`) widen into two vectors of fp32: each 32-bit lane holds one
// weight of each, and a bf16 is the upper half of an fp32 (a shift, or a mask: no shuffle)
inline Vec load_low(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(p), 16));
}
inline Vec load_high(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_loadu_si512(p), _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
inline Vec broadcast(float x) { return _mm512_set1_ps(x); }
inline Vec zero() { return _mm512_setzero_ps(); }
inline Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
inline Vec mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec div(Vec a, Vec b) { return _mm512_div_ps(a, b); }
inline Vec max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
inline Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
inline Vec fnmadd(Vec a, Vec b, Vec c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
inline Vec abs(Vec a) { return _mm512_abs_ps(a); }
inline Vec round(Vec a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline Vec scale2(Vec a, Vec n) { return _mm512_scalef_ps(a, n); }  // a 2^n, n whole
inline Vec negate_where_negative(Vec a, Vec sign) {
  return _mm512_mask_sub_ps(a, _mm512_cmp_ps_mask(sign, zero(), _CMP_LT_OQ), zero(), a);
}
#elif defined(__AVX2__) && defined(__FMA__)
using Vec = __m256;
using Mask = __m256i;
constexpr int kLanes = 8;
constexpr int kRows = 3, kColumns = 4;  // tile: 3 rows x 4 vectors (half a panel), 12 of the 16 registers
inline Mask lane_mask(int64_t lanes) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(lanes)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline Vec load_part(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
inline void store_part(float* p, Mask m, Vec v) { _mm256_maskstore_ps(p, m, v); }
inline Vec load(const float* p) { return _mm256_loadu_ps(p); }
inline Vec load_low(const uint16_t* p) {  // 16 bf16 -> two vectors of fp32
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), 16));
}
inline Vec load_high(const uint16_t* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
inline Vec broadcast(float x) { return _mm256_set1_ps(x); }
inline Vec zero() { return _mm256_setzero_ps(); }
inline Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
inline Vec mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec div(Vec a, Vec b) { return _mm256_div_ps(a, b); }
inline Vec max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
inline Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec fnmadd(Vec a, Vec b, Vec c) { return _mm256_fnmadd_ps(a, b, c); }
inline Vec abs(Vec a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
inline Vec round(Vec a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline Vec scale2(Vec a, Vec n) {  // n in [-126, 0] here: 2^n built in the exponent field
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(a, _mm256_castsi256_ps(e));
}
inline Vec negate_where_negative(Vec a, Vec sign) {
  return _mm256_blendv_ps(a, sub(zero(), a), _mm256_cmp_ps(sign, zero(), _CMP_LT_OQ));
}
#else
#error "panel_linear.cpp needs AVX-512 or AVX2 with FMA (-mavx512f or -mavx2 -mfma)"
#endif
constexpr int kVectors = kPanel / kLanes;  // vectors across a panel
static_assert(kColumns % 2 == 0 && kVectors % 2 == 0, "tiles read bf16 weights two vectors at a time");
// Tiles narrower than a panel (AVX2) read each pass in strided halves, which memory streams
// poorly: with 2 rows or more, a first row takes the whole panel front to back (at the speed of
// a single row) and the tiles then find the pass in the cache. Weights read from memory: 1.3-1.7x
// faster at 2-16 rows, 1.1-1.25x at 32-64 (docs/GENERATION.md). Prefetching the next pass in the
// tiles' loops on top of it: within noise (+-5% end to end), left out.
constexpr bool kLeadRow = kColumns < kVectors;

// Where output j (0-63) of a panel sits among each input's 64 weights: in order in fp32 panels;
// in bf16 panels each pair of vectors is interleaved (output i and output kLanes + i side by
// side), so that one stretch widens into both with a shift and a mask (`load_low`, `load_high`):
// on AVX2 1.2x faster at 32-256 rows than widening 8 at a time with a shuffle; as fast on AVX-512.
template <typename W>
constexpr int64_t column(int64_t j) {
  if constexpr (std::is_same_v<W, float>) return j;
  const int64_t pair = j / (2 * kLanes), half = (j / kLanes) % 2, lane = j % kLanes;
  return pair * 2 * kLanes + 2 * lane + half;
}

// e^x for x <= 0 (GELU's only use), Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-5
// polynomial for e^r, then the 2^n scaling. Relative error ~1e-7.
inline Vec exp_nonpositive(Vec x) {
  x = max(x, broadcast(-87.3f));  // below: e^x underflows to ~0 anyway
  const Vec n = round(mul(x, broadcast(1.44269504088896341f)));
  Vec r = fnmadd(n, broadcast(0.693359375f), x);
  r = fnmadd(n, broadcast(-2.12194440e-4f), r);
  Vec p = broadcast(1.9875691500e-4f);
  p = fmadd(p, r, broadcast(1.3981999507e-3f));
  p = fmadd(p, r, broadcast(8.3334519073e-3f));
  p = fmadd(p, r, broadcast(4.1665795894e-2f));
  p = fmadd(p, r, broadcast(1.6666665459e-1f));
  p = fmadd(p, r, broadcast(5.0000001201e-1f));
  p = fmadd(p, mul(r, r), add(r, broadcast(1.0f)));
  return scale2(p, n);
}

// GELU with erf, x/2 (1 + erf(x / sqrt 2)), erf by Abramowitz and Stegun 7.1.26 (absolute
// error <= 1.5e-7), the formula torch's own vectorized erf uses.
inline Vec gelu(Vec x) {
  const Vec z = mul(x, broadcast(0.70710678118654752f));
  const Vec a = abs(z);
  const Vec t = div(broadcast(1.0f), fmadd(a, broadcast(0.3275911f), broadcast(1.0f)));
  Vec q = broadcast(1.061405429f);
  q = fmadd(q, t, broadcast(-1.453152027f));
  q = fmadd(q, t, broadcast(1.421413741f));
  q = fmadd(q, t, broadcast(-0.284496736f));
  q = fmadd(q, t, broadcast(0.254829592f));
  q = mul(q, t);
  const Vec erf_abs = fnmadd(q, exp_nonpositive(mul(sub(zero(), a), a)), broadcast(1.0f));
  return mul(mul(x, broadcast(0.5f)), add(negate_where_negative(erf_abs, z), broadcast(1.0f)));
}

inline Vec activate(Vec v, int64_t activation) {
  if (activation == kGelu) return gelu(v);
  if (activation == kRelu) return max(v, zero());
  return v;
}

// Rows [0, R) of C vectors of one panel (y, bias and mask already at those columns) over
// inputs [k0, k1): accumulators start from the bias (first pass) or from y (later passes), and
// `mask` keeps the lanes past `out` out of y. The last pass applies the activation before it
// stores. Each output sums its inputs in order whatever R and C, so the result of a row does
// not depend on the tile (or the CPU) that computed it.
template <int R, int C, typename W>
void tile(const W* panel, const float* x, int64_t in, float* y, int64_t out, int64_t k0,
          int64_t k1, const float* bias, const Mask* mask, int64_t activation) {
  Vec acc[R][C];
  for (int v = 0; v < C; ++v) {
    for (int r = 0; r < R; ++r) {
      if (k0 > 0) acc[r][v] = load_part(y + r * out + kLanes * v, mask[v]);
      else acc[r][v] = bias ? load_part(bias + kLanes * v, mask[v]) : zero();
    }
  }
  const W* w = panel + k0 * kPanel;
  // One weight vector live at a time: R x C accumulators + R inputs + 1 fit the registers (16 on
  // AVX2) even when a weight must be widened into a register first (bf16) rather than read by
  // the FMA itself.
  for (int64_t k = k0; k < k1; ++k, w += kPanel) {
    Vec xv[R];
    for (int r = 0; r < R; ++r) xv[r] = broadcast(x[r * in + k]);
    if constexpr (std::is_same_v<W, float>) {
      for (int v = 0; v < C; ++v) {
        const Vec wv = load(w + kLanes * v);
        for (int r = 0; r < R; ++r) acc[r][v] = fmadd(wv, xv[r], acc[r][v]);
      }
    } else {  // bf16: vectors v and v + 1 from one stretch (C is even: tiles start on pairs),
      // widened one after the other so that one weight vector is live at a time
      for (int v = 0; v < C; v += 2) {
        const Vec low = load_low(w + kLanes * v);
        for (int r = 0; r < R; ++r) acc[r][v] = fmadd(low, xv[r], acc[r][v]);
        const Vec high = load_high(w + kLanes * v);
        for (int r = 0; r < R; ++r) acc[r][v + 1] = fmadd(high, xv[r], acc[r][v + 1]);
      }
    }
  }
  const int64_t act = k1 == in ? activation : kNone;
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < C; ++v) store_part(y + r * out + kLanes * v, mask[v], activate(acc[r][v], act));
}

template <int R, typename W>
void tail_tile(int rows_left, const W* panel, const float* x, int64_t in, float* y, int64_t out,
               int64_t k0, int64_t k1, const float* bias, const Mask* mask, int64_t activation) {
  if constexpr (R > 1) {
    if (rows_left == R) return tile<R, kColumns>(panel, x, in, y, out, k0, k1, bias, mask, activation);
    tail_tile<R - 1, W>(rows_left, panel, x, in, y, out, k0, k1, bias, mask, activation);
  }
}

// Zeros of `shape` whose 2 MB-aligned stretches the kernel may back with 2 MB pages
// (transparent huge pages, asked for with madvise before the first touch). A weight streamed
// through 4 KB pages pays a page walk every 4 KB: panels in 2 MB pages read ~6% faster
// (docs/GENERATION.md). The buffer is over-allocated by up to 2 MB of address space, never
// touched, so it costs no memory. Where the kernel refuses (THP off), plain pages.
torch::Tensor huge_page_zeros(at::IntArrayRef shape, const torch::TensorOptions& options) {
  constexpr int64_t kHuge = 2 << 20;
  const int64_t item = static_cast<int64_t>(options.dtype().itemsize()), per_huge = kHuge / item;
  int64_t numel = 1;
  for (auto n : shape) numel *= n;
  if (numel * item < 2 * kHuge) return torch::zeros(shape, options);
  auto buffer = torch::empty({numel + per_huge}, options);
  const auto start = reinterpret_cast<uintptr_t>(buffer.data_ptr());
  const auto aligned = (start + kHuge - 1) & ~uintptr_t(kHuge - 1);
  madvise(reinterpret_cast<void*>(aligned), (numel * item) & ~uintptr_t(kHuge - 1), MADV_HUGEPAGE);
  return buffer.narrow(0, int64_t(aligned - start) / item, numel).view(shape).zero_();
}

void check_float(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.is_contiguous(),
              "panel_linear: ", what, " must be a contiguous float32 CPU tensor");
}

// Weights and panels: fp32 or bf16 (the storage), contiguous, on the CPU.
void check_storage(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && (t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kBFloat16) &&
                  t.is_contiguous(),
              "panel_linear: ", what, " must be a contiguous float32 or bfloat16 CPU tensor");
}

uint16_t* bf16_bits(const torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

template <typename W>
void pack_into(const W* src, W* dst, int64_t out, int64_t in) {
  const int64_t panels = (out + kPanel - 1) / kPanel;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t o = p * kPanel; o < std::min(out, (p + 1) * kPanel); ++o)
      for (int64_t k = 0; k < in; ++k) dst[(p * in + k) * kPanel + column<W>(o % kPanel)] = src[o * in + k];
}

// column<W>(j) for j = 0..63, for the panels' dtype
torch::Tensor columns_of(const torch::Tensor& panels) {
  std::vector<int64_t> columns(kPanel);
  for (int64_t j = 0; j < kPanel; ++j)
    columns[j] = panels.scalar_type() == torch::kBFloat16 ? column<uint16_t>(j) : column<float>(j);
  return torch::tensor(columns);
}

template <typename W>
void panel_linear(const float* xs, int64_t rows, int64_t in, const W* ws, const float* b, int64_t out,
                  float* ys, int64_t activation) {
  if (rows == 0) return;
  const int64_t lead = kLeadRow && rows > 1 ? 1 : 0;  // rows streamed first (kLeadRow)
  const int64_t panels = (out + kPanel - 1) / kPanel, full_rows = rows - (rows - lead) % kRows;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    Mask mask[kVectors];
    for (int v = 0; v < kVectors; ++v) mask[v] = lane_mask(std::clamp<int64_t>(out - p * kPanel - kLanes * v, 0, kLanes));
    const W* panel = ws + p * in * kPanel;
    float* yp = ys + p * kPanel;
    const float* pb = b ? b + p * kPanel : nullptr;
    for (int64_t k0 = 0; k0 < in; k0 += kDepth) {
      const int64_t k1 = std::min(in, k0 + kDepth);
      if (lead) tile<1, kVectors>(panel, xs, in, yp, out, k0, k1, pb, mask, activation);
      // tiles of kRows rows, kColumns vectors wide (all of a panel on AVX-512, half on AVX2)
      for (int c = 0; c < kVectors; c += kColumns) {
        const int64_t col = c * kLanes;
        const float* bc = pb ? pb + col : nullptr;
        for (int64_t r = lead; r < full_rows; r += kRows)
          tile<kRows, kColumns>(panel + col, xs + r * in, in, yp + r * out + col, out, k0, k1, bc, mask + c, activation);
        tail_tile<kRows - 1, W>(static_cast<int>(rows - full_rows), panel + col, xs + full_rows * in, in,
                                yp + full_rows * out + col, out, k0, k1, bc, mask + c, activation);
      }
      // a last single row takes the whole panel in one pass, streaming it front to back
      if (rows - full_rows == 1)
        tile<1, kVectors>(panel, xs + full_rows * in, in, yp + full_rows * out, out, k0, k1, pb, mask, activation);
    }
  }
}

}  // namespace

torch::Tensor pack(const torch::Tensor& weight) {
  check_storage(weight, "the weight");
  TORCH_CHECK(weight.dim() == 2, "panel_linear: the weight must be [out, in]");
  const int64_t out = weight.size(0), in = weight.size(1), panels = (out + kPanel - 1) / kPanel;
  auto packed = huge_page_zeros({panels, in, kPanel}, weight.options());
  if (weight.scalar_type() == torch::kBFloat16)
    pack_into<uint16_t>(bf16_bits(weight), bf16_bits(packed), out, in);
  else
    pack_into(weight.data_ptr<float>(), packed.data_ptr<float>(), out, in);
  return packed;
}

torch::Tensor unpack(const torch::Tensor& packed, int64_t out) {
  check_storage(packed, "the packed weight");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kPanel && out > (packed.size(0) - 1) * kPanel &&
                  out <= packed.size(0) * kPanel,
              "panel_linear: not a packed weight of ", out, " outputs");
  const auto ordered = packed.scalar_type() == torch::kBFloat16 ? packed.index_select(2, columns_of(packed)) : packed;
  return ordered.transpose(1, 2).reshape({-1, packed.size(1)}).narrow(0, 0, out).contiguous();
}

// activation(x [rows, in] @ W.T + bias) for W packed by `pack` (fp32 or bf16 panels): fp32
// [rows, out]. activation: 0 none, 1 GELU (erf), 2 ReLU.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& packed, const c10::optional<torch::Tensor>& bias,
                     int64_t out, int64_t activation) {
  TORCH_CHECK(activation >= kNone && activation <= kRelu, "panel_linear: unknown activation ", activation);
  check_float(x, "the input");
  check_storage(packed, "the packed weight");
  const int64_t rows = x.size(0), in = x.size(1), panels = packed.size(0);
  TORCH_CHECK(x.dim() == 2 && packed.dim() == 3 && packed.size(1) == in && packed.size(2) == kPanel &&
                  out > (panels - 1) * kPanel && out <= panels * kPanel,
              "panel_linear: input [rows, ", in, "] does not fit the packed weight");
  const float* b = nullptr;
  if (bias.has_value()) {
    check_float(*bias, "the bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out, "panel_linear: the bias must be [out]");
    b = bias->data_ptr<float>();
  }
  auto y = torch::empty({rows, out}, x.options());
  panel_linear_into(x.data_ptr<float>(), rows, in, packed, b, out, y.data_ptr<float>(), activation);
  return y;
}

void panel_linear_into(const float* xs, int64_t rows, int64_t in, const torch::Tensor& panels, const float* b,
                       int64_t out, float* ys, int64_t activation) {
  if (panels.scalar_type() == torch::kBFloat16)
    panel_linear(xs, rows, in, bf16_bits(panels), b, out, ys, activation);
  else
    panel_linear(xs, rows, in, panels.data_ptr<float>(), b, out, ys, activation);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack", &pack, "weight [out, in] (fp32 or bf16) -> panels [ceil(out / 64), in, 64] of its dtype");
  m.def("unpack", &unpack, "panels, out -> weight [out, in]");
  m.def("columns", &columns_of, "where each of a panel's 64 outputs sits among an input's weights, for these panels");
  m.def("linear", &linear, "activation(x [rows, in] @ weight.T + bias) in fp32, the weight packed by pack; "
        "activation 0 none, 1 GELU (erf), 2 ReLU");
  m.def("huge_page_zeros", [](std::vector<int64_t> shape) { return huge_page_zeros(shape, torch::kFloat); },
        "float32 zeros laid out as the panels are (2 MB pages where the kernel allows): for reads measured alike");
  register_decoder_step(m);
}
