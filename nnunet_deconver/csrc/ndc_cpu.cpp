// Fused CPU kernel for the NDC update, eq. (7) of papers/deconver.md section III.F, for G = C.
//
// Per channel c with its R sources e = c * R + r (V of shape (C, R, *kernel), offsets o = (od, oh, ow)
// from -M to M per axis, V[c, r, o] meaning the tap o + M):
//
//     F(S)[c, p]        = sum_{r, o} S[cR + r, p + o] V[c, r, o]    forward model, eq. (1)
//     A(Z)[cR + r, p]   = sum_o Z[c, p - o] V[c, r, o]              adjoint X * V^-, eq. (3)
//     N = A(X) + eps,   Y = F(S),   D = A(Y) + eps,   S1 = S * N / D           eq. (7)
//
// and the backward of nnunet_deconver/layers/ndc_lean.py (g = dL/dS1):
//
//     gN = g * S / D,   gD = -gN * N / D,   W = F(gD),
//     dS = g * N / D + A(W),   dX = F(gN),
//     dV[c, r, o] = sum_p (gN[cR+r, p] X[c, p-o] + gD[cR+r, p] Y[c, p-o] + S[cR+r, p] W[c, p-o]).
//
// The pointwise products are those of source_times_ratio and source_times_ratio_grads in
// nnunet_deconver/layers/ndc_operators.py (which give the reasons): S1 = max(S, N) * (min(S, N) / D),
// and g * N / D, gN = g * (S / D) and gD = -(gN / D) * N saturated at +-(float max).
//
// Layout. The spatial axes are (depth, height, width), depth = 1 for 2-D; a "row" is one (batch,
// depth, height) line of `width` positions. Internally channels come in blocks of one vector (L
// lanes, zero padded) and every row is stored block by block, [block][position][lane], with `mw`
// zero positions on both ends ("lane rows" of padded_width * L values): the C-channel tensors the
// kernel creates (a copy of X, Y, W, dX) as [row][block][position][lane], the E-channel rows, staged
// per thread, as [r][block][position][lane] (the caller's channels-last order is [position][c][r]).
// Every operation is then a per-channel convolution vectorised over c, with consecutive positions
// one vector apart. Convolutions gather along the width inside registers
// (a tile of kTile positions) and loop over the (depth, height) taps: C -> E operators (A and the
// filter gradient) read the neighbour rows (d - od, h - oh), and the E -> C forward model F scatters
// each row into the rows (d - od, h - oh) of its C-channel output, so the E-channel tensors are
// only ever held one row at a time. Row scatters run in two phases of alternate chunks of rows,
// each chunk thicker than twice the reach of a scatter, so concurrent chunks never write the same
// row.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int kTile = 8;  // output positions per register tile

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float Vec __attribute__((vector_size(64)));
  typedef int32_t Index __attribute__((vector_size(64)));
};
template <>
struct Simd<double> {
  typedef double Vec __attribute__((vector_size(64)));
  typedef int64_t Index __attribute__((vector_size(64)));
};
template <typename T>
using Vec = typename Simd<T>::Vec;
template <typename T>
using Index = typename Simd<T>::Index;
template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
inline void store(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof v);
}

template <typename T>
inline Vec<T> broadcast(T x) {
  return Vec<T>{} + x;
}

// Lane-wise minimum and maximum of two vectors (V = Vec<T>; a template on V, since T is not deducible).
template <typename V>
inline V minimum(V a, V b) {
  return a < b ? a : b;
}

template <typename V>
inline V maximum(V a, V b) {
  return a < b ? b : a;
}

// v clamped to +-(float max), NaN kept: a value beyond the range times 0 stays 0 instead of NaN.
template <typename T>
inline Vec<T> saturate(Vec<T> v) {
  const Vec<T> limit = broadcast(std::numeric_limits<T>::max());
  return v > limit ? limit : (v < -limit ? -limit : v);
}

// ---------------------------------------------------------------------------------------------
// Large tensors on transparent huge pages. Faulting in fresh 4 KiB pages costs more than the
// arithmetic of eq. (7) on some machines (about 0.6 ms per MiB and thread on the development VM,
// against about 0.07 ms with 2 MiB pages), so the results and the temporaries of the kernel are
// allocated 2 MiB aligned and advised as huge pages where the OS allows it (madvise mode).
// ---------------------------------------------------------------------------------------------

constexpr size_t kHugePage = size_t(2) << 20;

// Uninitialised tensor of `sizes` (last axis fastest) in huge-page-advised memory.
at::Tensor huge_page_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (bytes < kHugePage) return at::empty(sizes, options);
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* data = nullptr;
  TORCH_CHECK(posix_memalign(&data, kHugePage, rounded) == 0, "ndc_cpu: out of memory (", rounded, " bytes)");
#ifdef MADV_HUGEPAGE
  madvise(data, rounded, MADV_HUGEPAGE);
#endif
  return at::from_blob(data, sizes, [](void* p) { std::free(p); }, options);
}

// Uninitialised channels-last tensor shaped like `like` (B, C, *spatial), with `channels` channels.
at::Tensor huge_page_channels_last(const at::Tensor& like, int64_t channels) {
  std::vector<int64_t> sizes{like.size(0)};
  for (int64_t i = 2; i < like.dim(); ++i) sizes.push_back(like.size(i));
  sizes.push_back(channels);
  return huge_page_empty(sizes, like.options()).movedim(-1, 1);
}

// Shapes of one call; see the layout notes above.
struct Geometry {
  int64_t depth, height, width, rows;
  int64_t channels, padded_channels, lanes, blocks, ratio;
  int64_t kd, kh, kw, md, mh, mw, taps;
  int64_t padded_width;  // width rounded up to kTile, plus mw zero positions on both ends

  int64_t lane_row() const { return padded_width * lanes; }                 // one block of one row
  int64_t c_row() const { return blocks * lane_row(); }                     // padded C-channel row
  int64_t e_row() const { return ratio * c_row(); }                         // staged E-channel row
  int64_t torch_e_row() const { return width * channels * ratio; }          // caller's E-channel row
  int64_t tiled_width() const { return padded_width - 2 * mw; }
  // Offset of channel block b of C-channel row n, or of source r's block b in a staged row.
  int64_t c_block(int64_t n, int64_t b) const { return (n * blocks + b) * lane_row(); }
  int64_t e_block(int64_t r, int64_t b) const { return (r * blocks + b) * lane_row(); }
};

Geometry make_geometry(const at::Tensor& observation, const at::Tensor& filters, int64_t lanes) {
  const bool volumetric = observation.dim() == 5;
  const int64_t dims = observation.dim() - 2;
  Geometry g{};
  g.depth = volumetric ? observation.size(2) : 1;
  g.height = observation.size(dims);
  g.width = observation.size(dims + 1);
  g.rows = observation.size(0) * g.depth * g.height;
  g.channels = filters.size(0);
  g.lanes = lanes;
  g.blocks = (g.channels + lanes - 1) / lanes;
  g.padded_channels = g.blocks * lanes;
  g.ratio = filters.size(1);
  g.kd = volumetric ? filters.size(2) : 1;
  g.kh = filters.size(dims);
  g.kw = filters.size(dims + 1);
  g.md = g.kd / 2;
  g.mh = g.kh / 2;
  g.mw = g.kw / 2;
  g.taps = g.kd * g.kh * g.kw;
  g.padded_width = (g.width + kTile - 1) / kTile * kTile + 2 * g.mw;
  return g;
}

// A (depth, height) tap with its neighbour row: `tap` indexes the kernel at (od, oh, ow = -mw),
// `row` is the row (d - od, h - oh) of the same batch element.
struct RowTap {
  int64_t tap, row;
};

// The taps of row n whose neighbour row lies inside the volume; returns their count.
int neighbour_rows(const Geometry& g, int64_t n, RowTap* out) {
  const int64_t h = n % g.height, d = (n / g.height) % g.depth;
  int count = 0;
  for (int64_t od = -g.md; od <= g.md; ++od) {
    if (d - od < 0 || d - od >= g.depth) continue;
    for (int64_t oh = -g.mh; oh <= g.mh; ++oh) {
      if (h - oh < 0 || h - oh >= g.height) continue;
      out[count++] = {((od + g.md) * g.kh + oh + g.mh) * g.kw, n - od * g.height - oh};
    }
  }
  return count;
}

// ---------------------------------------------------------------------------------------------
// Layout conversions between the caller's [position][c][r] rows and the staged [position][r][c].
// ---------------------------------------------------------------------------------------------

// Lane permutations between four caller vectors ([c][r], L/4 channels x 4 sources each) and four
// staged vectors (one source each, L channels): the layout conversion for R = 4 in 8 shuffles.
template <typename T>
struct Transpose4 {
  Index<T> pairs[2], halves[2], merge[2];

  Transpose4() {
    constexpr int lanes = kLanes<T>, half = lanes / 2, quarter = lanes / 4;
    for (int i = 0; i < lanes; ++i) {
      const int within = i % half, r = i % 4, j = i / 4;
      for (int b = 0; b < 2; ++b) {
        pairs[b][i] = (within >= quarter ? lanes : 0) + (within % quarter) * 4 + 2 * b + i / half;
        halves[b][i] = i < half ? b * half + i : lanes + b * half + i - half;
        merge[b][i] = (r >= 2 ? lanes : 0) + (r % 2) * half + b * quarter + j;
      }
    }
  }

  void split(const Vec<T>* a, Vec<T>* o) const {
    const Vec<T> p = __builtin_shuffle(a[0], a[1], pairs[0]), q = __builtin_shuffle(a[0], a[1], pairs[1]);
    const Vec<T> p2 = __builtin_shuffle(a[2], a[3], pairs[0]), q2 = __builtin_shuffle(a[2], a[3], pairs[1]);
    o[0] = __builtin_shuffle(p, p2, halves[0]);
    o[1] = __builtin_shuffle(p, p2, halves[1]);
    o[2] = __builtin_shuffle(q, q2, halves[0]);
    o[3] = __builtin_shuffle(q, q2, halves[1]);
  }

  void join(const Vec<T>* o, Vec<T>* a) const {
    const Vec<T> p = __builtin_shuffle(o[0], o[1], halves[0]), p2 = __builtin_shuffle(o[0], o[1], halves[1]);
    const Vec<T> q = __builtin_shuffle(o[2], o[3], halves[0]), q2 = __builtin_shuffle(o[2], o[3], halves[1]);
    a[0] = __builtin_shuffle(p, q, merge[0]);
    a[1] = __builtin_shuffle(p, q, merge[1]);
    a[2] = __builtin_shuffle(p2, q2, merge[0]);
    a[3] = __builtin_shuffle(p2, q2, merge[1]);
  }
};

// Number of leading channels the vectorised R = 4 conversions handle (whole vectors of channels).
template <typename T>
int64_t vector_channels(const Geometry& g) {
  return g.ratio == 4 ? g.channels / kLanes<T> * kLanes<T> : 0;
}

// Staged row (position offset mw) from a caller row; padding entries are left untouched (zero).
template <typename T>
void stage_row(const Geometry& g, const T* src, T* dst) {
  const int64_t ratio = g.ratio, c_count = g.channels, vectorised = vector_channels<T>(g);
  constexpr int64_t lanes = kLanes<T>;
  const Transpose4<T> transpose;
  for (int64_t w = 0; w < g.width; ++w) {
    const T* s = src + w * c_count * ratio;
    T* d = dst + (w + g.mw) * lanes;
    for (int64_t cb = 0; cb < vectorised; cb += lanes) {
      Vec<T> a[4], o[4];
      for (int k = 0; k < 4; ++k) a[k] = load(s + cb * 4 + k * lanes);
      transpose.split(a, o);
      for (int r = 0; r < 4; ++r) store(d + g.e_block(r, cb / lanes), o[r]);
    }
    for (int64_t c = vectorised; c < c_count; ++c)
      for (int64_t r = 0; r < ratio; ++r) d[g.e_block(r, c / lanes) + c % lanes] = s[c * ratio + r];
  }
}

// Caller row from a staged row; adds to it if `accumulate`.
template <typename T>
void unstage_row(const Geometry& g, const T* src, T* dst, bool accumulate) {
  const int64_t ratio = g.ratio, c_count = g.channels, vectorised = vector_channels<T>(g);
  constexpr int64_t lanes = kLanes<T>;
  const Transpose4<T> transpose;
  for (int64_t w = 0; w < g.width; ++w) {
    const T* s = src + (w + g.mw) * lanes;
    T* d = dst + w * c_count * ratio;
    for (int64_t cb = 0; cb < vectorised; cb += lanes) {
      Vec<T> o[4], a[4];
      for (int r = 0; r < 4; ++r) o[r] = load(s + g.e_block(r, cb / lanes));
      transpose.join(o, a);
      for (int k = 0; k < 4; ++k) {
        T* out = d + cb * 4 + k * lanes;
        store(out, accumulate ? load(out) + a[k] : a[k]);
      }
    }
    for (int64_t c = vectorised; c < c_count; ++c)
      for (int64_t r = 0; r < ratio; ++r)
        d[c * ratio + r] = (accumulate ? d[c * ratio + r] : T(0)) + s[g.e_block(r, c / lanes) + c % lanes];
  }
}

// ---------------------------------------------------------------------------------------------
// The three operators on one row, register-tiled along the width.
// ---------------------------------------------------------------------------------------------

// acc_k[t] += A(z_k) at source r, channel block b and position w0 + t, over the given row taps, for
// NIN padded C-channel tensors z_k that share the filters.
template <typename T, int NIN>
inline void adjoint_tile(const Geometry& g, const RowTap* taps, int tap_count, const T* const* z, const T* filters,
                         int64_t w0, int64_t r, int64_t b, Vec<T> (*acc)[kTile]) {
  constexpr int64_t lanes = kLanes<T>;
  for (int i = 0; i < tap_count; ++i) {
    const int64_t base = g.c_block(taps[i].row, b) + (w0 + 2 * g.mw) * lanes;  // position w0 + mw
    const T* weights = filters + (taps[i].tap * g.ratio + r) * g.padded_channels + b * lanes;
    for (int64_t j = 0; j < g.kw; ++j) {  // ow = j - mw reads position w - ow
      const Vec<T> weight = load(weights + j * g.ratio * g.padded_channels);
#pragma GCC unroll 4
      for (int k = 0; k < NIN; ++k) {
        const T* in = z[k] + base - j * lanes;
#pragma GCC unroll 16
        for (int t = 0; t < kTile; ++t) acc[k][t] += load(in + t * lanes) * weight;
      }
    }
  }
}

// out[rows (d - od, h - oh)] += F(staged row), i.e. the contribution of one E-channel row to F.
template <typename T>
void scatter_forward_model(const Geometry& g, const RowTap* taps, int tap_count, const T* staged, const T* filters,
                           T* out) {
  constexpr int64_t lanes = kLanes<T>;
  for (int i = 0; i < tap_count; ++i) {  // one output row at a time: it streams from the last-level cache
    for (int64_t b = 0; b < g.blocks; ++b) {
      T* out_row = out + g.c_block(taps[i].row, b) + g.mw * lanes;
      for (int64_t w0 = 0; w0 < g.width; w0 += kTile) {
        const int64_t valid = std::min<int64_t>(kTile, g.width - w0);
        Vec<T> acc[kTile] = {};
        for (int64_t r = 0; r < g.ratio; ++r) {
          const T* weights = filters + (taps[i].tap * g.ratio + r) * g.padded_channels + b * lanes;
          const T* in_row = staged + g.e_block(r, b) + w0 * lanes;
          for (int64_t j = 0; j < g.kw; ++j) {  // ow = j - mw reads position w + ow (padded index w + j)
            const Vec<T> weight = load(weights + j * g.ratio * g.padded_channels);
            const T* in = in_row + j * lanes;
#pragma GCC unroll 16
            for (int t = 0; t < kTile; ++t) acc[t] += load(in + t * lanes) * weight;
          }
        }
        T* o = out_row + w0 * lanes;
#pragma GCC unroll 16
        for (int t = 0; t < kTile; ++t)
          if (t < valid) store(o + t * lanes, load(o + t * lanes) + acc[t]);
      }
    }
  }
}

// grad[tap, r, c] += sum_w staged[r, c, w] * z[rows (d - od, h - oh)][c, w - ow]: the filter
// gradient K of ndc_lean.py for the pair (staged E-channel row, padded C-channel tensor z).
template <typename T>
void accumulate_filter_grad(const Geometry& g, const RowTap* taps, int tap_count, const T* staged, const T* z,
                            T* grad) {
  constexpr int64_t lanes = kLanes<T>;
  for (int i = 0; i < tap_count; ++i) {
    for (int64_t r = 0; r < g.ratio; ++r) {
      for (int64_t b = 0; b < g.blocks; ++b) {
        const T* z_row = z + g.c_block(taps[i].row, b);
        const T* h_row = staged + g.e_block(r, b) + g.mw * lanes;
        T* out = grad + (taps[i].tap * g.ratio + r) * g.padded_channels + b * lanes;
        for (int64_t w0 = 0; w0 < g.width; w0 += kTile) {
          Vec<T> h[kTile];
#pragma GCC unroll 16
          for (int t = 0; t < kTile; ++t) h[t] = load(h_row + (w0 + t) * lanes);
          for (int64_t j = 0; j < g.kw; ++j) {  // ow = j - mw reads position w - ow (padded w - j + 2 mw)
            const T* in = z_row + (w0 + 2 * g.mw - j) * lanes;
            Vec<T> even = h[0] * load(in), odd = h[1] * load(in + lanes);
#pragma GCC unroll 16
            for (int t = 2; t < kTile; t += 2) {
              even += h[t] * load(in + t * lanes);
              odd += h[t + 1] * load(in + (t + 1) * lanes);
            }
            T* o = out + j * g.ratio * g.padded_channels;
            store(o, load(o) + even + odd);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Per-call state and per-thread scratch.
// ---------------------------------------------------------------------------------------------

template <typename T>
struct Scratch {
  at::Tensor storage;
  std::vector<RowTap> taps;
  T *source, *grad, *grad_numerator, *grad_denominator, *out, *filter_grad;
};

template <typename T>
struct Kernel {
  Geometry g;
  T eps;
  at::Tensor filters;      // [tap][r][c]
  at::Tensor observation;  // padded copy of X
  std::vector<Scratch<T>> scratch;

  const T* v() const { return filters.template data_ptr<T>(); }
  const T* x() const { return observation.template data_ptr<T>(); }

  at::Tensor padded_c_tensor(const at::TensorOptions& options) const {
    return huge_page_empty({g.rows, g.c_row()}, options).zero_();
  }
  at::Tensor padded_c_tensor() const { return padded_c_tensor(observation.options()); }
};

// Filters V (C, R, *kernel) as [tap][r][c] with zero padded channels.
template <typename T>
at::Tensor rearrange_filters(const Geometry& g, const at::Tensor& filters) {
  at::Tensor out = at::zeros({g.taps, g.ratio, g.padded_channels}, filters.options());
  const T* v = filters.data_ptr<T>();
  T* o = out.data_ptr<T>();
  for (int64_t c = 0; c < g.channels; ++c)
    for (int64_t r = 0; r < g.ratio; ++r)
      for (int64_t k = 0; k < g.taps; ++k) o[(k * g.ratio + r) * g.padded_channels + c] = v[(c * g.ratio + r) * g.taps + k];
  return out;
}

// dL/dV (C, R, *kernel) from the per-thread gradients [thread][tap][r][c].
template <typename T>
void reduce_filter_grad(const Kernel<T>& k, at::Tensor& out) {
  const Geometry& g = k.g;
  T* o = out.data_ptr<T>();
  for (int64_t c = 0; c < g.channels; ++c)
    for (int64_t r = 0; r < g.ratio; ++r)
      for (int64_t tap = 0; tap < g.taps; ++tap) {
        T sum = 0;
        for (const Scratch<T>& s : k.scratch) sum += s.filter_grad[(tap * g.ratio + r) * g.padded_channels + c];
        o[(c * g.ratio + r) * g.taps + tap] = sum;
      }
}

// Padded, blocked copy of the caller's channels-last C-channel tensor (pad_rows), and the reverse.
template <typename T>
void pad_rows(const Geometry& g, const T* src, T* dst) {
  at::parallel_for(0, g.rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t w = 0; w < g.width; ++w)
        for (int64_t b = 0; b < g.blocks; ++b)
          std::memcpy(dst + g.c_block(n, b) + (w + g.mw) * g.lanes, src + (n * g.width + w) * g.channels + b * g.lanes,
                      std::min(g.lanes, g.channels - b * g.lanes) * sizeof(T));
  });
}

template <typename T>
void unpad_rows(const Geometry& g, const T* src, T* dst) {
  at::parallel_for(0, g.rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t w = 0; w < g.width; ++w)
        for (int64_t b = 0; b < g.blocks; ++b)
          std::memcpy(dst + (n * g.width + w) * g.channels + b * g.lanes, src + g.c_block(n, b) + (w + g.mw) * g.lanes,
                      std::min(g.lanes, g.channels - b * g.lanes) * sizeof(T));
  });
}

template <typename T>
Kernel<T> make_kernel(const at::Tensor& observation, const at::Tensor& filters, double eps, bool filter_grad) {
  Kernel<T> k;
  k.g = make_geometry(observation, filters, kLanes<T>);
  k.eps = static_cast<T>(eps);
  k.filters = rearrange_filters<T>(k.g, filters);
  k.observation = k.padded_c_tensor(observation.options());
  pad_rows(k.g, observation.data_ptr<T>(), k.observation.template data_ptr<T>());
  const int64_t threads = at::get_num_threads(), e_row = k.g.e_row();
  const int64_t grad_size = filter_grad ? k.g.taps * k.g.ratio * k.g.padded_channels : 0;
  k.scratch.resize(threads);
  for (Scratch<T>& s : k.scratch) {
    s.storage = at::zeros({5 * e_row + grad_size}, observation.options());
    s.taps.resize(k.g.kd * k.g.kh);
    T* base = s.storage.template data_ptr<T>();
    s.source = base;
    s.grad = base + e_row;
    s.grad_numerator = base + 2 * e_row;
    s.grad_denominator = base + 3 * e_row;
    s.out = base + 4 * e_row;
    s.filter_grad = filter_grad ? base + 5 * e_row : nullptr;
  }
  return k;
}

constexpr int64_t kPlaneBlock = 4;  // planes visited together, see visit_rows

// Runs row(n, s) for the rows start <= n < stop in a cache-friendly order: in blocks of
// kPlaneBlock planes (depth), height by height, so the neighbour rows (d -+ od, h -+ oh) that a
// row reads or scatters into were touched a few rows before and are still in the L2 cache.
template <typename T, typename RowFn>
void visit_rows(const Geometry& g, int64_t start, int64_t stop, Scratch<T>& s, const RowFn& row) {
  for (int64_t first = start / g.height; first * g.height < stop; first += kPlaneBlock)
    for (int64_t h = 0; h < g.height; ++h)
      for (int64_t plane = first; plane < first + kPlaneBlock; ++plane) {
        const int64_t n = plane * g.height + h;
        if (n >= start && n < stop) row(n, s);
      }
}

// Runs row(n, scratch) for every row, in parallel.
template <typename T, typename RowFn>
void for_rows(Kernel<T>& k, const RowFn& row) {
  at::parallel_for(0, k.g.rows, 1, [&](int64_t begin, int64_t end) {
    visit_rows(k.g, begin, end, k.scratch[at::get_thread_num()], row);
  });
}

// Like for_rows for row functions that scatter into the rows (d - od, h - oh): two phases of
// alternate chunks, each chunk at least twice the reach of a scatter, so no two threads write the
// same row at the same time.
template <typename T, typename RowFn>
void for_rows_scattering(Kernel<T>& k, const RowFn& row) {
  const Geometry& g = k.g;
  const int64_t reach = g.md * g.height + g.mh, threads = at::get_num_threads();
  const int64_t chunks = std::max<int64_t>(1, std::min({2 * threads, g.rows, reach > 0 ? g.rows / (2 * reach) : g.rows}));
  for (int64_t phase = 0; phase < 2; ++phase) {
    at::parallel_for(0, (chunks - phase + 1) / 2, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t chunk = 2 * i + phase;
        visit_rows(g, chunk * g.rows / chunks, (chunk + 1) * g.rows / chunks, k.scratch[at::get_thread_num()], row);
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Passes of eq. (7) and of its backward.
// ---------------------------------------------------------------------------------------------

// Y = F(S) into the zeroed padded C-channel tensor y.
template <typename T>
void forward_model_pass(Kernel<T>& k, const T* source, T* y) {
  const Geometry& g = k.g;
  for_rows_scattering(k, [&](int64_t n, Scratch<T>& s) {
    const int count = neighbour_rows(g, n, s.taps.data());
    stage_row(g, source + n * g.torch_e_row(), s.source);
    scatter_forward_model(g, s.taps.data(), count, s.source, k.v(), y);
  });
}

// N = A(X) + eps and D = A(Y) + eps of eq. (7) for every vector of one staged row (n's neighbour rows
// in s.taps), handed to body(i, N, D) with i the vector's offset in the row's E-channel buffers.
template <typename T, typename Body>
void for_numerator_denominator(const Kernel<T>& k, const Scratch<T>& s, int count, const T* y, const Body& body) {
  const Geometry& g = k.g;
  const T* inputs[2] = {k.x(), y};
  for (int64_t r = 0; r < g.ratio; ++r)
    for (int64_t b = 0; b < g.blocks; ++b)
      for (int64_t w0 = 0; w0 < g.tiled_width(); w0 += kTile) {
        Vec<T> acc[2][kTile];
        for (auto& a : acc)
          for (auto& v : a) v = broadcast(k.eps);
        adjoint_tile<T, 2>(g, s.taps.data(), count, inputs, k.v(), w0, r, b, acc);
        const int64_t tile = g.e_block(r, b) + (w0 + g.mw) * kLanes<T>;
        for (int t = 0; t < kTile; ++t) body(tile + t * kLanes<T>, acc[0][t], acc[1][t]);
      }
}

// S1 = S * (A(X) + eps) / (A(Y) + eps), one update of eq. (7), as max(S, N) * (min(S, N) / D).
template <typename T>
void update_pass(Kernel<T>& k, const T* source, const T* y, T* result) {
  const Geometry& g = k.g;
  for_rows(k, [&](int64_t n, Scratch<T>& s) {
    const int count = neighbour_rows(g, n, s.taps.data());
    stage_row(g, source + n * g.torch_e_row(), s.source);
    for_numerator_denominator(k, s, count, y, [&](int64_t i, Vec<T> numerator, Vec<T> denominator) {
      const Vec<T> sv = load(s.source + i);
      store(s.out + i, maximum(sv, numerator) * (minimum(sv, numerator) / denominator));
    });
    unstage_row(g, s.out, result + n * g.torch_e_row(), false);
  });
}

// First backward pass of one update: dS = g * N / D into grad_source; dX += F(gN), W += F(gD) and
// the filter gradient terms of (gN, X) and (gD, Y).
template <typename T>
void backward_pointwise_pass(Kernel<T>& k, const T* grad, const T* source, const T* y, T* grad_source,
                             T* grad_observation, T* w) {
  const Geometry& g = k.g;
  for_rows_scattering(k, [&](int64_t n, Scratch<T>& s) {
    const int count = neighbour_rows(g, n, s.taps.data());
    stage_row(g, grad + n * g.torch_e_row(), s.grad);
    stage_row(g, source + n * g.torch_e_row(), s.source);
    for_numerator_denominator(k, s, count, y, [&](int64_t i, Vec<T> numerator, Vec<T> denominator) {
      const Vec<T> gv = load(s.grad + i), inv_den = broadcast(T(1)) / denominator;
      const Vec<T> grad_num = saturate<T>(gv * (load(s.source + i) * inv_den));
      store(s.out + i, saturate<T>(gv * (numerator * inv_den)));
      store(s.grad_numerator + i, grad_num);
      store(s.grad_denominator + i, -saturate<T>((grad_num * inv_den) * numerator));
    });
    unstage_row(g, s.out, grad_source + n * g.torch_e_row(), false);
    if (s.filter_grad != nullptr) {
      accumulate_filter_grad(g, s.taps.data(), count, s.grad_numerator, k.x(), s.filter_grad);
      accumulate_filter_grad(g, s.taps.data(), count, s.grad_denominator, y, s.filter_grad);
    }
    if (grad_observation != nullptr)
      scatter_forward_model(g, s.taps.data(), count, s.grad_numerator, k.v(), grad_observation);
    scatter_forward_model(g, s.taps.data(), count, s.grad_denominator, k.v(), w);
  });
}

// Second backward pass: dS += A(W) and the filter gradient term of (S, W).
template <typename T>
void backward_adjoint_pass(Kernel<T>& k, const T* source, const T* w, T* grad_source) {
  const Geometry& g = k.g;
  const T* inputs[1] = {w};
  for_rows(k, [&](int64_t n, Scratch<T>& s) {
    const int count = neighbour_rows(g, n, s.taps.data());
    for (int64_t r = 0; r < g.ratio; ++r)
      for (int64_t b = 0; b < g.blocks; ++b)
        for (int64_t w0 = 0; w0 < g.tiled_width(); w0 += kTile) {
          Vec<T> acc[1][kTile] = {};
          adjoint_tile<T, 1>(g, s.taps.data(), count, inputs, k.v(), w0, r, b, acc);
          const int64_t tile = g.e_block(r, b) + (w0 + g.mw) * kLanes<T>;
          for (int t = 0; t < kTile; ++t) store(s.out + tile + t * kLanes<T>, acc[0][t]);
        }
    unstage_row(g, s.out, grad_source + n * g.torch_e_row(), true);
    if (s.filter_grad != nullptr) {
      stage_row(g, source + n * g.torch_e_row(), s.source);
      accumulate_filter_grad(g, s.taps.data(), count, s.source, w, s.filter_grad);
    }
  });
}

// One update of eq. (7) on a channels-last E-channel tensor; y is scratch (a padded C-channel tensor).
template <typename T>
at::Tensor update_step(Kernel<T>& k, const at::Tensor& source, at::Tensor& y) {
  y.zero_();
  forward_model_pass(k, source.data_ptr<T>(), y.data_ptr<T>());
  at::Tensor result = huge_page_channels_last(source, source.size(1));
  update_pass(k, source.data_ptr<T>(), y.data_ptr<T>(), result.data_ptr<T>());
  return result;
}

void check_inputs(const at::Tensor& observation, const at::Tensor& source, const at::Tensor& filters) {
  const auto format = observation.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast;
  TORCH_CHECK(observation.dim() == 4 || observation.dim() == 5, "ndc_cpu: 2-D or 3-D inputs only");
  TORCH_CHECK(observation.device().is_cpu() && source.device().is_cpu() && filters.device().is_cpu(), "ndc_cpu: CPU only");
  TORCH_CHECK(observation.scalar_type() == source.scalar_type() && source.scalar_type() == filters.scalar_type(),
              "ndc_cpu: one dtype for all inputs");
  TORCH_CHECK(observation.is_contiguous(format) && source.is_contiguous(format), "ndc_cpu: channels-last inputs");
  TORCH_CHECK(filters.is_contiguous() && filters.dim() == observation.dim(), "ndc_cpu: contiguous (C, R, *kernel) filters");
  TORCH_CHECK(filters.size(0) == observation.size(1) && source.size(1) == filters.size(0) * filters.size(1),
              "ndc_cpu: G = C filters (C, R, *kernel) and R * C source channels");
  for (int64_t i = 2; i < filters.dim(); ++i) TORCH_CHECK(filters.size(i) % 2 == 1, "ndc_cpu: odd kernel sizes");
}

template <typename T>
at::Tensor forward_impl(const at::Tensor& observation, const at::Tensor& source, const at::Tensor& filters,
                        int64_t iterations, double eps) {
  Kernel<T> k = make_kernel<T>(observation, filters, eps, false);
  at::Tensor y = k.padded_c_tensor();
  at::Tensor out = source;
  for (int64_t i = 0; i < iterations; ++i) out = update_step(k, out, y);
  return out;
}

template <typename T>
std::vector<at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& observation, const at::Tensor& source,
                                      const at::Tensor& filters, int64_t iterations, double eps,
                                      bool need_observation, bool need_filters) {
  Kernel<T> k = make_kernel<T>(observation, filters, eps, need_filters);
  at::Tensor y = k.padded_c_tensor(), w = k.padded_c_tensor();
  at::Tensor grad_observation = need_observation ? k.padded_c_tensor() : at::Tensor();
  std::vector<at::Tensor> sources{source};  // intermediate sources, held during this backward only
  for (int64_t i = 1; i < iterations; ++i) sources.push_back(update_step(k, sources.back(), y));
  at::Tensor grad_source = grad;
  for (int64_t i = iterations - 1; i >= 0; --i) {
    const T* s = sources[i].data_ptr<T>();
    y.zero_();
    w.zero_();
    forward_model_pass(k, s, y.data_ptr<T>());
    at::Tensor next = huge_page_channels_last(sources[i], sources[i].size(1));
    backward_pointwise_pass(k, grad_source.data_ptr<T>(), s, y.data_ptr<T>(), next.data_ptr<T>(),
                            need_observation ? grad_observation.data_ptr<T>() : nullptr, w.data_ptr<T>());
    backward_adjoint_pass(k, s, w.data_ptr<T>(), next.data_ptr<T>());
    grad_source = next;
    sources.pop_back();
  }
  at::Tensor grad_x, grad_v;
  if (need_observation) {
    grad_x = huge_page_channels_last(observation, observation.size(1));
    unpad_rows(k.g, grad_observation.data_ptr<T>(), grad_x.data_ptr<T>());
  }
  if (need_filters) {
    grad_v = at::empty_like(filters);
    reduce_filter_grad(k, grad_v);
  }
  return {grad_x, grad_source, grad_v};
}

at::Tensor ndc_forward(const at::Tensor& observation, const at::Tensor& source, const at::Tensor& filters,
                       int64_t iterations, double eps) {
  check_inputs(observation, source, filters);
  TORCH_CHECK(iterations >= 1, "ndc_cpu: iterations >= 1");
  return AT_DISPATCH_FLOATING_TYPES(observation.scalar_type(), "ndc_forward", [&] {
    return forward_impl<scalar_t>(observation, source, filters, iterations, eps);
  });
}

std::vector<at::Tensor> ndc_backward(const at::Tensor& grad, const at::Tensor& observation, const at::Tensor& source,
                                     const at::Tensor& filters, int64_t iterations, double eps, bool need_observation,
                                     bool need_filters) {
  check_inputs(observation, source, filters);
  TORCH_CHECK(grad.sizes() == source.sizes() && grad.scalar_type() == source.scalar_type() &&
                  grad.is_contiguous(source.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast),
              "ndc_cpu: grad like the source, channels-last");
  TORCH_CHECK(iterations >= 1, "ndc_cpu: iterations >= 1");
  return AT_DISPATCH_FLOATING_TYPES(observation.scalar_type(), "ndc_backward", [&] {
    return backward_impl<scalar_t>(grad, observation, source, filters, iterations, eps, need_observation, need_filters);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused CPU NDC update, eq. (7) of the Deconver paper, for G = C (depthwise with multiplier R)";
  m.def("forward", &ndc_forward, "S^(iterations) of eq. (7)");
  m.def("backward", &ndc_backward, "(dL/dX, dL/dS0, dL/dV) of eq. (7); undefined tensors for gradients not needed");
}
