// Winograd F(4x4, 3x3) transforms for the 3x3 stride-1 'SAME' convolutions of the U-Net on
// CPU (Lavin & Gray 2016). A convolution becomes
//   y = A^T [ (G w G^T) ⊙ (B^T d B) ] A
// on 6x6 input tiles d taken every 4 pixels (4x4 output tiles): 36 independent channel
// matrix products (TF's batched MatMul, between the kernels here) per 16 output pixels instead
// of 9 per pixel, 4x fewer multiplications. The four kernels are the two transforms and their
// transposes (for the gradient); the filter transform G w G^T is a small matmul in Python
// (diffusion_tf/nn.py). Everything is float32.
//
// Layouts: images are NHWC [N, H, W, C]; tiles are [36, T, C] with T = N * TH * TW,
// TH = ceil(H / 4), TW = ceil(W / 4), tile t = (n * TH + ti) * TW + tj, and position
// p = 6 * a + b for row a, column b of the 6x6 tile. Input tile (ti, tj) starts at pixel
// (4 ti - 1, 4 tj - 1) (one pixel of zero padding); output tile at (4 ti, 4 tj).
// Channels are processed 16 at a time (one AVX-512 vector) so every tile transform is a
// short sequence of vector adds and multiplies.

#include <cstring>

#include "kernel_common.h"

namespace diffusion_tf {

namespace {

constexpr int kLanes = 16;  // channels per block
constexpr int kTile = 6;    // input tile size
constexpr int kOut = 4;     // output tile size
constexpr int kPositions = kTile * kTile;

// The 1-D transforms, applied to kLanes channels at once. `in` and `out` hold their
// elements `stride` floats apart. Each is one matrix of F(4, 3):
//   InputT:  t = B^T d   (6 -> 6)       OutputT:    y = A^T m  (6 -> 4)
//   InputTT: d = B t     (6 -> 6)       OutputTT:   m = A y    (4 -> 6)
// with B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
// 0 4 0 -5 0 1] and A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
struct InputT {
  static constexpr int kIn = 6, kOutLen = 6;
  static inline void Apply(const float* in, int64_t is, float* out, int64_t os) {
#pragma GCC ivdep
    for (int l = 0; l < kLanes; ++l) {
      const float d0 = in[l], d1 = in[is + l], d2 = in[2 * is + l], d3 = in[3 * is + l],
                  d4 = in[4 * is + l], d5 = in[5 * is + l];
      out[l] = 4.f * d0 - 5.f * d2 + d4;
      out[os + l] = (d3 + d4) - 4.f * (d1 + d2);
      out[2 * os + l] = 4.f * (d1 - d2) + (d4 - d3);
      out[3 * os + l] = 2.f * (d3 - d1) + (d4 - d2);
      out[4 * os + l] = 2.f * (d1 - d3) + (d4 - d2);
      out[5 * os + l] = 4.f * d1 - 5.f * d3 + d5;
    }
  }
};

struct InputTT {
  static constexpr int kIn = 6, kOutLen = 6;
  static inline void Apply(const float* in, int64_t is, float* out, int64_t os) {
#pragma GCC ivdep
    for (int l = 0; l < kLanes; ++l) {
      const float t0 = in[l], t1 = in[is + l], t2 = in[2 * is + l], t3 = in[3 * is + l],
                  t4 = in[4 * is + l], t5 = in[5 * is + l];
      out[l] = 4.f * t0;
      out[os + l] = 4.f * (t2 - t1) + 2.f * (t4 - t3) + 4.f * t5;
      out[2 * os + l] = -5.f * t0 - 4.f * (t1 + t2) - (t3 + t4);
      out[3 * os + l] = (t1 - t2) + 2.f * (t3 - t4) - 5.f * t5;
      out[4 * os + l] = t0 + (t1 + t2) + (t3 + t4);
      out[5 * os + l] = t5;
    }
  }
};

struct OutputT {
  static constexpr int kIn = 6, kOutLen = 4;
  static inline void Apply(const float* in, int64_t is, float* out, int64_t os) {
#pragma GCC ivdep
    for (int l = 0; l < kLanes; ++l) {
      const float m0 = in[l], m1 = in[is + l], m2 = in[2 * is + l], m3 = in[3 * is + l],
                  m4 = in[4 * is + l], m5 = in[5 * is + l];
      const float s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
      out[l] = m0 + s12 + s34;
      out[os + l] = d12 + 2.f * d34;
      out[2 * os + l] = s12 + 4.f * s34;
      out[3 * os + l] = d12 + 8.f * d34 + m5;
    }
  }
};

struct OutputTT {
  static constexpr int kIn = 4, kOutLen = 6;
  static inline void Apply(const float* in, int64_t is, float* out, int64_t os) {
#pragma GCC ivdep
    for (int l = 0; l < kLanes; ++l) {
      const float y0 = in[l], y1 = in[is + l], y2 = in[2 * is + l], y3 = in[3 * is + l];
      const float e1 = y0 + y2, o1 = y1 + y3, e2 = y0 + 4.f * y2, o2 = 2.f * y1 + 8.f * y3;
      out[l] = y0;
      out[os + l] = e1 + o1;
      out[2 * os + l] = e1 - o1;
      out[3 * os + l] = e2 + o2;
      out[4 * os + l] = e2 - o2;
      out[5 * os + l] = y3;
    }
  }
};

// 2-D transform of a K x K block of lane vectors (row-major, in[r * K + s]) into a
// L x L block: out = M in M^T, M being the 1-D transform F (K -> L).
template <typename F>
inline void Transform2D(const float* in, float* tmp, float* out) {
  constexpr int K = F::kIn, L = F::kOutLen;
  for (int s = 0; s < K; ++s)  // columns: tmp[i][s] = sum_r M[i][r] in[r][s]
    F::Apply(in + s * kLanes, K * kLanes, tmp + s * kLanes, K * kLanes);
  for (int i = 0; i < L; ++i)  // rows: out[i][j] = sum_s tmp[i][s] M[j][s]
    F::Apply(tmp + i * K * kLanes, kLanes, out + i * L * kLanes, kLanes);
}

// Copies (or adds, or adds the bias while copying) n <= kLanes floats; the common case,
// a whole block, has a constant trip count so it compiles to one vector load and store.
inline void CopyLanes(float* dst, const float* src, int64_t n) {
  if (n == kLanes) {
    for (int l = 0; l < kLanes; ++l) dst[l] = src[l];
  } else {
    std::memcpy(dst, src, n * sizeof(float));
  }
}
inline void AddLanes(float* dst, const float* src, int64_t n) {
  if (n == kLanes) {
    for (int l = 0; l < kLanes; ++l) dst[l] += src[l];
  } else {
    for (int64_t l = 0; l < n; ++l) dst[l] += src[l];
  }
}
inline void CopyLanesPlus(float* dst, const float* src, const float* bias, int64_t n) {
  if (n == kLanes) {
    for (int l = 0; l < kLanes; ++l) dst[l] = src[l] + bias[l];
  } else {
    for (int64_t l = 0; l < n; ++l) dst[l] = src[l] + bias[l];
  }
}

struct Geometry {
  int64_t N, H, W, C, TH, TW, T, blocks;  // blocks: channel blocks of kLanes
  Geometry(int64_t n, int64_t h, int64_t w, int64_t c)
      : N(n), H(h), W(w), C(c), TH((h + kOut - 1) / kOut), TW((w + kOut - 1) / kOut),
        T(n * TH * TW), blocks((c + kLanes - 1) / kLanes) {}
};

void ParallelFor(OpKernelContext* ctx, int64_t n, int64_t cost, std::function<void(int64_t, int64_t)> fn) {
  ctx->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(n, cost, std::move(fn));
}

// Image [N, H, W, C] -> tiles [36, T, C]: the K x K patch at (4 ti + off, 4 tj + off)
// (zero outside the image) transformed by F (K -> 6). A work item is one row of tiles;
// channel blocks are the innermost loop so all 36 tile streams are written contiguously.
template <typename F>
void ImageToTiles(OpKernelContext* ctx, const Geometry& g, int off, const float* img, float* tiles) {
  constexpr int K = F::kIn;
  static_assert(F::kOutLen == kTile, "tiles are 6x6");
  auto work = [&](int64_t begin, int64_t end) {
    alignas(64) float patch[K * K * kLanes], tmp[kTile * K * kLanes], out[kPositions * kLanes];
    for (int64_t row = begin; row < end; ++row) {  // row = n * TH + ti
      const int64_t n = row / g.TH, ti = row % g.TH;
      const bool rows_inside = kOut * ti + off >= 0 && kOut * ti + off + K <= g.H;
      for (int64_t tj = 0; tj < g.TW; ++tj) {
        const int64_t t = row * g.TW + tj;
        const bool inside = rows_inside && kOut * tj + off >= 0 && kOut * tj + off + K <= g.W;
        for (int64_t c0 = 0; c0 < g.C; c0 += kLanes) {
          const int64_t cb = std::min<int64_t>(kLanes, g.C - c0);
          // Patches that reach past the image (or a partial channel block) get zeros there.
          if (!inside || cb < kLanes) std::memset(patch, 0, sizeof(patch));
          for (int r = 0; r < K; ++r) {
            const int64_t h = kOut * ti + off + r;
            if (h < 0 || h >= g.H) continue;
            for (int s = 0; s < K; ++s) {
              const int64_t w = kOut * tj + off + s;
              if (w < 0 || w >= g.W) continue;
              CopyLanes(patch + (r * K + s) * kLanes, img + ((n * g.H + h) * g.W + w) * g.C + c0, cb);
            }
          }
          Transform2D<F>(patch, tmp, out);
          for (int p = 0; p < kPositions; ++p)
            CopyLanes(tiles + (p * g.T + t) * g.C + c0, out + p * kLanes, cb);
        }
      }
    }
  };
  ParallelFor(ctx, g.N * g.TH, g.TW * g.blocks * kPositions * kLanes * 8, work);
}

// Tiles [36, T, C] -> image [N, H, W, C]: each tile transformed by F (6 -> K) into the
// K x K patch at (4 ti + off, 4 tj + off), parts outside the image dropped, `bias` (or
// null) added. Patches that overlap (K > 4: rows of tiles overlap by K - 4 < 4 pixels) are
// summed into a zeroed image in two rounds, even rows of tiles then odd ones, so no two
// threads ever write the same element.
template <typename F>
void TilesToImage(OpKernelContext* ctx, const Geometry& g, int off, const float* tiles,
                  const float* bias, float* img) {
  constexpr int K = F::kOutLen;
  static_assert(F::kIn == kTile, "tiles are 6x6");
  constexpr bool overlap = K > kOut;
  static_assert(K - kOut < kOut, "only neighbouring rows of tiles may overlap");
  const int64_t cost = g.TW * g.blocks * kPositions * kLanes * 8;
  auto rows = [&](int64_t first, int64_t step) {
    return [&, first, step](int64_t begin, int64_t end) {
      alignas(64) float in[kPositions * kLanes] = {}, tmp[K * kTile * kLanes], patch[K * K * kLanes];
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / ((g.TH - first + step - 1) / step);
        const int64_t ti = first + step * (i % ((g.TH - first + step - 1) / step));
        for (int64_t tj = 0; tj < g.TW; ++tj) {
          const int64_t t = (n * g.TH + ti) * g.TW + tj;
          for (int64_t c0 = 0; c0 < g.C; c0 += kLanes) {
            const int64_t cb = std::min<int64_t>(kLanes, g.C - c0);
            for (int p = 0; p < kPositions; ++p)
              CopyLanes(in + p * kLanes, tiles + (p * g.T + t) * g.C + c0, cb);
            Transform2D<F>(in, tmp, patch);
            for (int r = 0; r < K; ++r) {
              const int64_t h = kOut * ti + off + r;
              if (h < 0 || h >= g.H) continue;
              for (int s = 0; s < K; ++s) {
                const int64_t w = kOut * tj + off + s;
                if (w < 0 || w >= g.W) continue;
                float* dst = img + ((n * g.H + h) * g.W + w) * g.C + c0;
                const float* src = patch + (r * K + s) * kLanes;
                if (overlap) {
                  AddLanes(dst, src, cb);
                } else if (bias != nullptr) {
                  CopyLanesPlus(dst, src, bias + c0, cb);
                } else {
                  CopyLanes(dst, src, cb);
                }
              }
            }
          }
        }
      }
    };
  };
  if (!overlap) {
    ParallelFor(ctx, g.N * g.TH, cost, rows(0, 1));
    return;
  }
  const int64_t image = g.H * g.W * g.C;
  ParallelFor(ctx, g.N, image, [&](int64_t begin, int64_t end) {
    std::memset(img + begin * image, 0, (end - begin) * image * sizeof(float));
  });
  for (int64_t first = 0; first < 2 && first < g.TH; ++first)
    ParallelFor(ctx, g.N * ((g.TH - first + 1) / 2), cost, rows(first, 2));
}

Status CheckImage(const Tensor& t, const char* name) {
  if (t.dims() != 4) return InvalidArgument(name, " must be [N, H, W, C], got ", t.shape().DebugString());
  return tensorflow::OkStatus();
}

// Geometry of tiles [36, T, C] for an image of height x width; N = T / (TH * TW).
Status TilesGeometry(const Tensor& t, int64_t height, int64_t width, Geometry* g) {
  if (t.dims() != 3 || t.dim_size(0) != kPositions)
    return InvalidArgument("tiles must be [36, T, C], got ", t.shape().DebugString());
  const Geometry per_image(1, height, width, t.dim_size(2));
  if (per_image.T == 0 || t.dim_size(1) % per_image.T)
    return InvalidArgument(t.dim_size(1), " tiles do not make whole ", height, "x", width, " images");
  *g = Geometry(t.dim_size(1) / per_image.T, height, width, t.dim_size(2));
  return tensorflow::OkStatus();
}

// x [N, H, W, C] -> tiles [36, T, C], with F (K -> 6) on the patches at offset `off`.
template <typename F, int kOffset>
class ImageToTilesOp : public OpKernel {
 public:
  explicit ImageToTilesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    OP_REQUIRES_OK(ctx, CheckImage(x, "x"));
    const Geometry g(x.dim_size(0), x.dim_size(1), x.dim_size(2), x.dim_size(3));
    Tensor* v;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({kPositions, g.T, g.C}), &v));
    if (v->NumElements() == 0) return;
    ImageToTiles<F>(ctx, g, kOffset, x.flat<float>().data(), v->flat<float>().data());
  }
};

// tiles [36, T, C] (+ bias [C]) -> image [N, height, width, C], with F (6 -> K).
template <typename F, int kOffset, bool kBias>
class TilesToImageOp : public OpKernel {
 public:
  explicit TilesToImageOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("height", &height_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("width", &width_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& m = ctx->input(0);
    Geometry g(0, 0, 0, 0);
    OP_REQUIRES_OK(ctx, TilesGeometry(m, height_, width_, &g));
    const float* bias = nullptr;
    if (kBias) {
      const Tensor& b = ctx->input(1);
      OP_REQUIRES(ctx, b.dims() == 1 && b.dim_size(0) == g.C,
                  InvalidArgument("bias must be [", g.C, "], got ", b.shape().DebugString()));
      bias = b.flat<float>().data();
    }
    Tensor* y;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({g.N, g.H, g.W, g.C}), &y));
    if (y->NumElements() == 0) return;
    TilesToImage<F>(ctx, g, kOffset, m.flat<float>().data(), bias, y->flat<float>().data());
  }

 private:
  int64_t height_, width_;
};

Status TilesShape(shape_inference::InferenceContext* c) {
  shape_inference::ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  auto tiles = [&](int d) -> shape_inference::DimensionHandle {
    const int64_t v = c->Value(c->Dim(x, d));
    return v < 0 ? c->UnknownDim() : c->MakeDim((v + kOut - 1) / kOut);
  };
  shape_inference::DimensionHandle t;
  TF_RETURN_IF_ERROR(c->Multiply(c->Dim(x, 0), tiles(1), &t));
  TF_RETURN_IF_ERROR(c->Multiply(t, tiles(2), &t));
  c->set_output(0, c->MakeShape({c->MakeDim(kPositions), t, c->Dim(x, 3)}));
  return tensorflow::OkStatus();
}

Status ImageShape(shape_inference::InferenceContext* c) {
  shape_inference::ShapeHandle m;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &m));
  int64_t h, w;
  TF_RETURN_IF_ERROR(c->GetAttr("height", &h));
  TF_RETURN_IF_ERROR(c->GetAttr("width", &w));
  const int64_t per_image = ((h + kOut - 1) / kOut) * ((w + kOut - 1) / kOut);
  shape_inference::DimensionHandle n;
  TF_RETURN_IF_ERROR(c->Divide(c->Dim(m, 1), per_image, /*evenly_divisible=*/true, &n));
  c->set_output(0, c->MakeShape({n, c->MakeDim(h), c->MakeDim(w), c->Dim(m, 2)}));
  return tensorflow::OkStatus();
}

}  // namespace

REGISTER_OP("DiffusionWinogradInput")
    .Input("x: float")
    .Output("tiles: float")
    .SetShapeFn(TilesShape)
    .Doc("x [N, H, W, C] -> B^T d B for every 6x6 input tile d: [36, T, C].");

REGISTER_OP("DiffusionWinogradOutputGrad")
    .Input("dy: float")
    .Output("tiles: float")
    .SetShapeFn(TilesShape)
    .Doc("Transpose of DiffusionWinogradOutput: dy [N, H, W, C] -> A dy_tile A^T [36, T, C].");

REGISTER_OP("DiffusionWinogradOutput")
    .Input("tiles: float")
    .Input("bias: float")
    .Output("y: float")
    .Attr("height: int >= 1")
    .Attr("width: int >= 1")
    .SetShapeFn(ImageShape)
    .Doc("A^T m A + bias for every tile m of [36, T, C] -> y [N, height, width, C].");

REGISTER_OP("DiffusionWinogradInputGrad")
    .Input("tiles: float")
    .Output("dx: float")
    .Attr("height: int >= 1")
    .Attr("width: int >= 1")
    .SetShapeFn(ImageShape)
    .Doc("Transpose of DiffusionWinogradInput: [36, T, C] -> dx [N, height, width, C].");

REGISTER_KERNEL_BUILDER(Name("DiffusionWinogradInput").Device(DEVICE_CPU),
                        ImageToTilesOp<InputT, -1>);
REGISTER_KERNEL_BUILDER(Name("DiffusionWinogradOutputGrad").Device(DEVICE_CPU),
                        ImageToTilesOp<OutputTT, 0>);
REGISTER_KERNEL_BUILDER(Name("DiffusionWinogradOutput").Device(DEVICE_CPU),
                        TilesToImageOp<OutputT, 0, true>);
REGISTER_KERNEL_BUILDER(Name("DiffusionWinogradInputGrad").Device(DEVICE_CPU),
                        TilesToImageOp<InputTT, -1, false>);

}  // namespace diffusion_tf
