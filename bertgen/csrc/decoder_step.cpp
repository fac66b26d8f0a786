// One decoding step of a BERT decoder stack (self-attention over a KV cache, cross-attention,
// feed-forward, each followed by residual add and LayerNorm), for CPU inference with the
// weights in panels (panel_linear.cpp).
//
// Why: between its matrix products a decoding step makes ~40 small calls per layer (attention,
// LayerNorm, adds, views), each through Python and torch's dispatcher: ~7 ms of a large
// model's greedy step and about half of a small model's. Here the whole stack is one call
// that releases the GIL. Same math as bertgen.generation.decode_step (tested equal).
#include "panel_linear.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace {

struct Linear {
  torch::Tensor panels, bias;
  int64_t in, out;
  void operator()(const float* x, int64_t rows, float* y, int64_t activation = kNone) const {
    panel_linear_into(x, rows, in, panels, bias.data_ptr<float>(), out, y, activation);
  }
};

struct Norm {
  torch::Tensor weight, bias;
};

struct Layer {
  Linear qkv, self_out;
  Norm self_norm;
  Linear cross_query, cross_out;
  Norm cross_norm;
  Linear ffn_in, ffn_out;
  Norm ffn_norm;
};

bool is_float_cpu(const torch::Tensor& t, c10::ScalarType dtype = torch::kFloat) {
  return t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous();
}

Linear make_linear(const torch::Tensor& panels, const torch::Tensor& bias, int64_t in, int64_t out) {
  const bool stored = is_float_cpu(panels) || is_float_cpu(panels, torch::kBFloat16);  // fp32 or bf16 weights
  TORCH_CHECK(stored && panels.dim() == 3 && panels.size(1) == in && panels.size(2) == 64 &&
                  panels.size(0) == (out + 63) / 64,
              "decoder_step: a weight is not [", out, ", ", in, "] in panels");
  TORCH_CHECK(is_float_cpu(bias) && bias.dim() == 1 && bias.size(0) == out, "decoder_step: a bias is not [", out, "]");
  return {panels, bias, in, out};
}

Norm make_norm(const torch::Tensor& weight, const torch::Tensor& bias, int64_t hidden) {
  TORCH_CHECK(is_float_cpu(weight) && is_float_cpu(bias) && weight.numel() == hidden && bias.numel() == hidden,
              "decoder_step: a LayerNorm is not [", hidden, "]");
  return {weight, bias};
}

// x = LayerNorm(x + y), row by row, in place.
void add_norm(float* x, const float* y, int64_t rows, int64_t hidden, const Norm& norm, float eps) {
  const float* g = norm.weight.data_ptr<float>();
  const float* b = norm.bias.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * hidden;
    const float* yr = y + r * hidden;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < hidden; ++i) {
      xr[i] += yr[i];
      sum += xr[i];
    }
    const float mean = sum / hidden;
    float squares = 0.f;
#pragma omp simd reduction(+ : squares)
    for (int64_t i = 0; i < hidden; ++i) squares += (xr[i] - mean) * (xr[i] - mean);
    const float scale = 1.f / std::sqrt(squares / hidden + eps);
#pragma omp simd
    for (int64_t i = 0; i < hidden; ++i) xr[i] = (xr[i] - mean) * scale * g[i] + b[i];
  }
}

// Asks for the cache lines of the `bytes` at `at`: a path's positions lie in scattered slots,
// where the hardware prefetcher cannot guess the next one.
inline void prefetch(const void* at, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(static_cast<const char*>(at) + b);
}
constexpr int64_t kPrefetchAhead = 4;  // positions

// out [d] = softmax(q . key(s) * scale + mask[s]) @ value(s) over s < length; the
// probabilities are left in probs [length]. Position s's key and value lie at
// path[s] * stride in keys and values, or at s * stride without a path. Keys and values: float32,
// or a half-precision cache (`cache_dtype`) read as float32, as the Python step does.
template <typename T>
void attend(const float* q, const T* keys, const T* values, const int64_t* path, int64_t stride, int64_t length,
            int64_t d, float scale, const float* mask, float* probs, float* out) {
  const auto at = [&](int64_t s) { return (path ? path[s] : s) * stride; };
  const auto ask_for = [&](int64_t s) {  // the values too: read after the keys, in cache by then
    prefetch(keys + at(s), d * sizeof(T));
    prefetch(values + at(s), d * sizeof(T));
  };
  float top = -std::numeric_limits<float>::infinity();
  if (path)
    for (int64_t s = 0; s < std::min(length, kPrefetchAhead); ++s) ask_for(s);
  for (int64_t s = 0; s < length; ++s) {
    if (path && s + kPrefetchAhead < length) ask_for(s + kPrefetchAhead);
    const T* k = keys + at(s);
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < d; ++j) dot += q[j] * static_cast<float>(k[j]);
    probs[s] = dot * scale + (mask ? mask[s] : 0.f);
    top = std::max(top, probs[s]);
  }
  float total = 0.f;
  for (int64_t s = 0; s < length; ++s) total += probs[s] = std::exp(probs[s] - top);
  const float inverse = 1.f / total;
  std::fill(out, out + d, 0.f);
  for (int64_t s = 0; s < length; ++s) {
    const float p = probs[s] *= inverse;
    const T* v = values + at(s);
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) out[j] += p * static_cast<float>(v[j]);
  }
}

class DecoderStep {
 public:
  // layers: per layer 18 tensors, in this order: qkv panels and bias, self-attention output
  // panels and bias, its LayerNorm weight and bias; cross-attention query panels and bias,
  // output panels and bias, LayerNorm; feed-forward in panels and bias, out panels and bias,
  // LayerNorm. activation: of the feed-forward (Activation).
  DecoderStep(const std::vector<std::vector<torch::Tensor>>& layers, int64_t hidden, int64_t intermediate,
              int64_t heads, int64_t activation, double eps)
      : hidden_(hidden), heads_(heads), activation_(activation), eps_(static_cast<float>(eps)) {
    TORCH_CHECK(heads > 0 && hidden % heads == 0, "decoder_step: ", heads, " heads do not divide ", hidden);
    TORCH_CHECK(activation >= kNone && activation <= kRelu, "decoder_step: unknown activation ", activation);
    for (const auto& w : layers) {
      TORCH_CHECK(w.size() == 18, "decoder_step: a layer needs 18 tensors, got ", w.size());
      layers_.push_back({make_linear(w[0], w[1], hidden, 3 * hidden), make_linear(w[2], w[3], hidden, hidden),
                         make_norm(w[4], w[5], hidden), make_linear(w[6], w[7], hidden, hidden),
                         make_linear(w[8], w[9], hidden, hidden), make_norm(w[10], w[11], hidden),
                         make_linear(w[12], w[13], hidden, intermediate),
                         make_linear(w[14], w[15], intermediate, hidden), make_norm(w[16], w[17], hidden)});
    }
  }

  // x [rows, hidden]: the new tokens' embeddings. self_keys/values[l] [heads, slots, d]: a pool
  // of slots; slots [rows, capacity] (int64) names the slot of each row's positions, and this
  // step's key and value go to slot slots[row, position], which no other row may name (rows
  // whose hypotheses share a prefix name the same slots for it). cross_keys/values[l] [rows /
  // group, heads, source, d]: the `group` consecutive rows of one input (its beams) share its
  // entry. cross_mask [rows / group, source]: additive, or none. Returns the hidden states
  // [rows, hidden] and, when need_weights, each layer's self-attention [rows, heads,
  // position + 1] and cross-attention [rows, heads, source] probabilities.
  std::tuple<torch::Tensor, std::vector<torch::Tensor>, std::vector<torch::Tensor>> operator()(
      const torch::Tensor& x_in, const std::vector<torch::Tensor>& self_keys,
      const std::vector<torch::Tensor>& self_values, const torch::Tensor& slots, int64_t position,
      const std::vector<torch::Tensor>& cross_keys, const std::vector<torch::Tensor>& cross_values,
      const c10::optional<torch::Tensor>& cross_mask, int64_t group, bool need_weights) const {
    const int64_t layers = static_cast<int64_t>(layers_.size()), d = hidden_ / heads_;
    TORCH_CHECK(is_float_cpu(x_in) && x_in.dim() == 2 && x_in.size(1) == hidden_,
                "decoder_step: x must be a contiguous float32 [rows, ", hidden_, "]");
    const int64_t rows = x_in.size(0);
    TORCH_CHECK(group > 0 && rows % group == 0, "decoder_step: ", rows, " rows are not groups of ", group);
    TORCH_CHECK(static_cast<int64_t>(self_keys.size()) == layers && static_cast<int64_t>(self_values.size()) == layers &&
                    static_cast<int64_t>(cross_keys.size()) == layers &&
                    static_cast<int64_t>(cross_values.size()) == layers,
                "decoder_step: one cache entry per layer needed");
    TORCH_CHECK(slots.device().is_cpu() && slots.scalar_type() == torch::kLong && slots.is_contiguous() &&
                    slots.dim() == 2 && slots.size(0) == rows,
                "decoder_step: slots must be a contiguous int64 [", rows, ", capacity]");
    const int64_t capacity = slots.size(1), source = cross_keys[0].size(2), inputs = rows / group;
    const int64_t pool = self_keys[0].size(1);
    const auto cache_dtype = self_keys[0].scalar_type();
    TORCH_CHECK(cache_dtype == torch::kFloat || cache_dtype == torch::kBFloat16 || cache_dtype == torch::kHalf,
                "decoder_step: caches must be float32, bfloat16 or float16");
    TORCH_CHECK(position >= 0 && position < capacity, "decoder_step: self-attention cache full (", capacity, ")");
    const int64_t* path = slots.data_ptr<int64_t>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t s = 0; s <= position; ++s)
        TORCH_CHECK(path[r * capacity + s] >= 0 && path[r * capacity + s] < pool, "decoder_step: slot ",
                    path[r * capacity + s], " of row ", r, " is outside the pool of ", pool);
    for (int64_t l = 0; l < layers; ++l) {
      for (const auto* t : {&self_keys[l], &self_values[l]})
        TORCH_CHECK(is_float_cpu(*t, cache_dtype) && t->dim() == 3 && t->size(0) == heads_ && t->size(1) == pool &&
                        t->size(2) == d,
                    "decoder_step: a self-attention cache is not a contiguous [", heads_, ", ", pool, ", ", d, "]");
      for (const auto* t : {&cross_keys[l], &cross_values[l]})
        TORCH_CHECK(is_float_cpu(*t, cache_dtype) && t->dim() == 4 && t->size(0) == inputs && t->size(1) == heads_ &&
                        t->size(2) == source && t->size(3) == d,
                    "decoder_step: a cross-attention cache is not a contiguous [", inputs, ", ", heads_,
                    ", ", source, ", ", d, "]");
    }
    const float* mask = nullptr;
    if (cross_mask.has_value()) {
      TORCH_CHECK(is_float_cpu(*cross_mask) && cross_mask->numel() == inputs * source,
                  "decoder_step: the cross mask is not a contiguous float32 [", inputs, ", ", source, "]");
      mask = cross_mask->data_ptr<float>();
    }
    if (cache_dtype == torch::kBFloat16)
      return run<c10::BFloat16>(x_in, self_keys, self_values, slots, position, cross_keys, cross_values, mask, group, need_weights);
    if (cache_dtype == torch::kHalf)
      return run<c10::Half>(x_in, self_keys, self_values, slots, position, cross_keys, cross_values, mask, group, need_weights);
    return run<float>(x_in, self_keys, self_values, slots, position, cross_keys, cross_values, mask, group, need_weights);
  }

 private:
  template <typename T>
  std::tuple<torch::Tensor, std::vector<torch::Tensor>, std::vector<torch::Tensor>> run(
      const torch::Tensor& x_in, const std::vector<torch::Tensor>& self_keys,
      const std::vector<torch::Tensor>& self_values, const torch::Tensor& slots, int64_t position,
      const std::vector<torch::Tensor>& cross_keys, const std::vector<torch::Tensor>& cross_values, const float* mask,
      int64_t group, bool need_weights) const {
    const int64_t layers = static_cast<int64_t>(layers_.size()), d = hidden_ / heads_, rows = x_in.size(0);
    const int64_t capacity = slots.size(1), source = cross_keys[0].size(2), pool = self_keys[0].size(1);
    const int64_t* paths = slots.data_ptr<int64_t>();

    const auto options = x_in.options();
    auto x = x_in.clone();
    auto qkv = torch::empty({rows, 3 * hidden_}, options), a = torch::empty({rows, hidden_}, options);
    auto b = torch::empty({rows, hidden_}, options);
    auto ffn = torch::empty({rows, layers_.empty() ? 0 : layers_[0].ffn_in.out}, options);
    const int64_t scratch_length = std::max(position + 1, source);
    std::vector<float> scratch(need_weights ? 0 : rows * heads_ * scratch_length);
    std::vector<torch::Tensor> self_probs, cross_probs;
    float *xs = x.data_ptr<float>(), *as = a.data_ptr<float>(), *bs = b.data_ptr<float>();
    float *qs = qkv.data_ptr<float>(), *fs = ffn.data_ptr<float>();
    const float scale = 1.f / std::sqrt(static_cast<float>(d));

    for (int64_t l = 0; l < layers; ++l) {
      const Layer& w = layers_[l];
      float* self_p = scratch.data();
      float* cross_p = scratch.data();
      if (need_weights) {
        self_probs.push_back(torch::empty({rows, heads_, position + 1}, options));
        cross_probs.push_back(torch::empty({rows, heads_, source}, options));
        self_p = self_probs.back().data_ptr<float>();
        cross_p = cross_probs.back().data_ptr<float>();
      }
      const int64_t self_stride = need_weights ? position + 1 : scratch_length;
      const int64_t cross_stride = need_weights ? source : scratch_length;

      // self-attention: this step's key and value into the row's new slot, then attend over
      // the slots of its path
      w.qkv(xs, rows, qs);
      T* keys = self_keys[l].data_ptr<T>();
      T* values = self_values[l].data_ptr<T>();
#pragma omp parallel for schedule(static)
      for (int64_t rh = 0; rh < rows * heads_; ++rh) {
        const int64_t r = rh / heads_, h = rh % heads_;
        const float* q = qs + r * 3 * hidden_ + h * d;
        const int64_t* path = paths + r * capacity;
        T* k = keys + (h * pool + path[position]) * d;
        T* v = values + (h * pool + path[position]) * d;
        for (int64_t j = 0; j < d; ++j) {  // rounded as torch rounds into the cache's dtype
          k[j] = static_cast<T>(q[hidden_ + j]);
          v[j] = static_cast<T>(q[2 * hidden_ + j]);
        }
        attend(q, keys + h * pool * d, values + h * pool * d, path, d, position + 1, d, scale, nullptr,
               self_p + rh * self_stride, as + r * hidden_ + h * d);
      }
      w.self_out(as, rows, bs);
      add_norm(xs, bs, rows, hidden_, w.self_norm, eps_);

      // cross-attention: each row against its input's keys and values
      w.cross_query(xs, rows, as);
      const T* ck = cross_keys[l].data_ptr<T>();
      const T* cv = cross_values[l].data_ptr<T>();
#pragma omp parallel for schedule(static)
      for (int64_t rh = 0; rh < rows * heads_; ++rh) {
        const int64_t r = rh / heads_, h = rh % heads_, input = r / group;
        const int64_t entry = (input * heads_ + h) * source * d;
        attend(as + r * hidden_ + h * d, ck + entry, cv + entry, nullptr, d, source, d, scale,
               mask ? mask + input * source : nullptr, cross_p + rh * cross_stride, bs + r * hidden_ + h * d);
      }
      w.cross_out(bs, rows, as);
      add_norm(xs, as, rows, hidden_, w.cross_norm, eps_);

      // feed-forward
      w.ffn_in(xs, rows, fs, activation_);
      w.ffn_out(fs, rows, as);
      add_norm(xs, as, rows, hidden_, w.ffn_norm, eps_);
    }
    return {x, self_probs, cross_probs};
  }

  std::vector<Layer> layers_;
  int64_t hidden_, heads_, activation_;
  float eps_;
};

}  // namespace

void register_decoder_step(pybind11::module& m) {
  pybind11::class_<DecoderStep>(m, "DecoderStep")
      .def(pybind11::init<const std::vector<std::vector<torch::Tensor>>&, int64_t, int64_t, int64_t, int64_t, double>(),
           "layers (18 tensors each), hidden, intermediate, heads, activation, eps")
      .def("__call__", &DecoderStep::operator(), pybind11::call_guard<pybind11::gil_scoped_release>(),
           "x, self_keys, self_values, slots, position, cross_keys, cross_values, cross_mask, group, need_weights "
           "-> (x, self-attention probabilities, cross-attention probabilities)");
}
