// Fused GroupNorm (+ optional swish) for CPU: forward and backward in two passes over
// the activations each, instead of the ~10 (forward) and ~20 (backward) elementwise
// kernels the TF composition in diffusion_tf/nn.py runs. Same arithmetic as that
// composition: accurate (two-pass quality) statistics, biased variance, rstd = 1/sqrt(var + eps), gamma/beta
// folded into one per-(example, channel) scale and shift, Eigen's logistic for swish, and
// the closed-form GroupNorm gradient. Sums are accumulated in double in fixed row chunks
// and combined in a fixed order, so results do not depend on thread scheduling.
//
// x is viewed as [B, S, C] (S = product of the spatial dims, channels last); groups are
// C / G contiguous channels. Statistics and all arithmetic are float32 for every T.

#include <type_traits>

#include "kernel_common.h"

namespace diffusion_tf {

using ArrayF = Eigen::Array<float, Eigen::Dynamic, 1>;
using MapF = Eigen::Map<ArrayF>;
using CMapF = Eigen::Map<const ArrayF>;

REGISTER_OP("DiffusionGroupNorm")
    .Input("x: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Output("y: T")
    .Output("mean: float")
    .Output("rstd: float")
    .Attr("T: {float, bfloat16, half}")
    .Attr("num_groups: int >= 1")
    .Attr("epsilon: float")
    .Attr("swish: bool")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      int64_t g;
      TF_RETURN_IF_ERROR(c->GetAttr("num_groups", &g));
      c->set_output(0, c->input(0));
      shape_inference::ShapeHandle stats = c->Matrix(c->Dim(c->input(0), 0), g);
      c->set_output(1, stats);
      c->set_output(2, stats);
      return tensorflow::OkStatus();
    });

REGISTER_OP("DiffusionGroupNormGrad")
    .Input("dy: T")
    .Input("x: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("mean: float")
    .Input("rstd: float")
    .Output("dx: T")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .Attr("T: {float, bfloat16, half}")
    .Attr("num_groups: int >= 1")
    .Attr("swish: bool")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      c->set_output(2, c->input(2));
      return tensorflow::OkStatus();
    });

namespace {

// Dimensions of x as [B, S, C] plus the row chunking used for the reductions.
struct Dims {
  int64_t B, S, C, G, cg, chunk_rows, num_chunks;
};

Status GetDims(const Tensor& x, int64_t num_groups, Dims* d) {
  if (x.dims() < 2) return InvalidArgument("group norm needs rank >= 2, got ", x.shape().DebugString());
  d->B = x.dim_size(0);
  d->C = x.dim_size(x.dims() - 1);
  d->S = d->C == 0 || d->B == 0 ? 0 : x.NumElements() / (d->B * d->C);
  d->G = num_groups;
  if (d->C % d->G) return InvalidArgument(d->C, " channels are not divisible into ", d->G, " groups");
  d->cg = d->C / d->G;
  // ~8k elements per chunk: small enough to spread over threads at batch 1, large
  // enough that the per-chunk partial sums stay a small fraction of the work.
  d->chunk_rows = std::max<int64_t>(1, 8192 / std::max<int64_t>(d->C, 1));
  d->num_chunks = d->S == 0 ? 0 : (d->S + d->chunk_rows - 1) / d->chunk_rows;
  return tensorflow::OkStatus();
}

template <typename T>
inline void LoadRow(const T* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}
template <>
inline void LoadRow<float>(const float* src, int64_t n, float* dst) {
  std::copy(src, src + n, dst);
}

template <typename T>
inline void StoreRow(const float* src, int64_t n, T* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

// Runs fn(b, row_begin, row_end, partial) for every (example, chunk) in parallel, where
// partial points at k zeroed doubles per channel owned by that (example, chunk), then
// combines them per (example, channel) in chunk order into out[(b*k + j)*C + c]:
// summed, or with merge=true (k = 2, partial = chunk mean, chunk M2 per channel) merged
// into the mean and M2 over all S rows.
template <typename Fn>
std::vector<double> ChunkedChannelSums(OpKernelContext* ctx, const Dims& d, int k, Fn fn,
                                       bool merge = false) {
  std::vector<double> partial(d.B * d.num_chunks * k * d.C, 0.0);
  auto work = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / d.num_chunks, j = i % d.num_chunks;
      const int64_t r0 = j * d.chunk_rows, r1 = std::min(d.S, r0 + d.chunk_rows);
      fn(b, r0, r1, partial.data() + i * k * d.C);
    }
  };
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(d.B * d.num_chunks, d.chunk_rows * d.C * 4 * k, work);
  std::vector<double> out(d.B * k * d.C, 0.0);
  for (int64_t b = 0; b < d.B; ++b) {
    double* o = out.data() + b * k * d.C;
    double n_acc = 0;
    for (int64_t j = 0; j < d.num_chunks; ++j) {
      const double* p = partial.data() + (b * d.num_chunks + j) * k * d.C;
      if (!merge) {
        for (int64_t c = 0; c < k * d.C; ++c) o[c] += p[c];
        continue;
      }
      const double nb = static_cast<double>(std::min(d.S, (j + 1) * d.chunk_rows) - j * d.chunk_rows);
      const double n = n_acc + nb;
      for (int64_t c = 0; c < d.C; ++c) {
        const double delta = p[c] - o[c];
        o[c] += delta * nb / n;
        o[d.C + c] += p[d.C + c] + delta * delta * n_acc * nb / n;
      }
      n_acc = n;
    }
  }
  return out;
}

// Per-(example, channel) scale = rstd * gamma and shift = beta - mean * scale, [B, C].
void FoldAffine(const Dims& d, const float* mean, const float* rstd, const float* gamma,
                const float* beta, std::vector<float>* scale, std::vector<float>* shift) {
  scale->resize(d.B * d.C);
  shift->resize(d.B * d.C);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t c = 0; c < d.C; ++c) {
      const int64_t bg = b * d.G + c / d.cg, bc = b * d.C + c;
      (*scale)[bc] = rstd[bg] * gamma[c];
      (*shift)[bc] = beta[c] - mean[bg] * (*scale)[bc];
    }
}

template <typename T>
class GroupNormOp : public OpKernel {
 public:
  explicit GroupNormOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_groups", &num_groups_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &eps_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("swish", &swish_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x_t = ctx->input(0);
    const Tensor& gamma_t = ctx->input(1);
    const Tensor& beta_t = ctx->input(2);
    Dims d;
    OP_REQUIRES_OK(ctx, GetDims(x_t, num_groups_, &d));
    OP_REQUIRES(ctx, gamma_t.NumElements() == d.C && beta_t.NumElements() == d.C,
                InvalidArgument("gamma and beta need ", d.C, " elements"));
    Tensor *y_t, *mean_t, *rstd_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x_t.shape(), &y_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({d.B, d.G}), &mean_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({d.B, d.G}), &rstd_t));
    if (x_t.NumElements() == 0) return;
    const T* x = x_t.flat<T>().data();
    T* y = y_t->flat<T>().data();
    float* mean = mean_t->flat<float>().data();
    float* rstd = rstd_t->flat<float>().data();
    const int64_t C = d.C;

    // Pass 1: statistics. Each chunk of rows is read twice while it is in cache: its
    // per-channel sums, then its squared deviations from its own channel means. Chunks,
    // then the channels of a group, are merged with Chan et al.'s pairwise update
    // (M2 = M2_a + M2_b + delta^2 n_a n_b / n), as accurate as two passes over x.
    std::vector<double> sums = ChunkedChannelSums(ctx, d, 2, [&](int64_t b, int64_t r0, int64_t r1, double* acc) {
      std::vector<float> row(C);
      for (int64_t r = r0; r < r1; ++r) {
        LoadRow(x + (b * d.S + r) * C, C, row.data());
        for (int64_t c = 0; c < C; ++c) acc[c] += row[c];
      }
      const double inv = 1.0 / static_cast<double>(r1 - r0);
      std::vector<float> m(C);
      for (int64_t c = 0; c < C; ++c) m[c] = static_cast<float>(acc[c] * inv);
      for (int64_t r = r0; r < r1; ++r) {
        LoadRow(x + (b * d.S + r) * C, C, row.data());
        for (int64_t c = 0; c < C; ++c) {
          const float dev = row[c] - m[c];
          acc[C + c] += dev * dev;
        }
      }
      for (int64_t c = 0; c < C; ++c) acc[c] = m[c];  // the chunk mean the M2 is around
    }, /*merge=*/true);
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t grp = 0; grp < d.G; ++grp) {
        // Merge the group's channels (each over S rows) into one mean and M2.
        double n_acc = 0, m_acc = 0, m2_acc = 0;
        for (int64_t c = grp * d.cg; c < (grp + 1) * d.cg; ++c) {
          const double nb = static_cast<double>(d.S), mb = sums[b * 2 * C + c];
          const double m2b = sums[b * 2 * C + C + c];
          const double n = n_acc + nb, delta = mb - m_acc;
          m_acc += delta * nb / n;
          m2_acc += m2b + delta * delta * n_acc * nb / n;
          n_acc = n;
        }
        mean[b * d.G + grp] = static_cast<float>(m_acc);
        rstd[b * d.G + grp] = 1.0f / std::sqrt(static_cast<float>(m2_acc / n_acc) + eps_);
      }
    std::vector<float> scale, shift;
    FoldAffine(d, mean, rstd, gamma_t.flat<float>().data(), beta_t.flat<float>().data(), &scale, &shift);

    // Pass 3: y = x * scale + shift (then y * sigmoid(y)), row by row.
    auto normalize = [&](int64_t begin, int64_t end) {
      ArrayF row(C), out(C);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / d.S;
        LoadRow(x + i * C, C, row.data());
        out = row * CMapF(scale.data() + b * C, C) + CMapF(shift.data() + b * C, C);
        if (swish_) out = out * out.logistic();
        StoreRow(out.data(), C, y + i * C);
      }
    };
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(d.B * d.S, C * (swish_ ? 24 : 6), normalize);
  }

 private:
  int64_t num_groups_;
  float eps_;
  bool swish_;
};

template <typename T>
class GroupNormGradOp : public OpKernel {
 public:
  explicit GroupNormGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_groups", &num_groups_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("swish", &swish_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy_t = ctx->input(0);
    const Tensor& x_t = ctx->input(1);
    const Tensor& gamma_t = ctx->input(2);
    const Tensor& beta_t = ctx->input(3);
    const Tensor& mean_t = ctx->input(4);
    const Tensor& rstd_t = ctx->input(5);
    Dims d;
    OP_REQUIRES_OK(ctx, GetDims(x_t, num_groups_, &d));
    OP_REQUIRES(ctx, dy_t.shape() == x_t.shape(), InvalidArgument("dy and x shapes differ"));
    OP_REQUIRES(ctx, gamma_t.NumElements() == d.C && beta_t.NumElements() == d.C,
                InvalidArgument("gamma and beta need ", d.C, " elements"));
    OP_REQUIRES(ctx, mean_t.NumElements() == d.B * d.G && rstd_t.NumElements() == d.B * d.G,
                InvalidArgument("mean and rstd need ", d.B * d.G, " elements"));
    Tensor *dx_t, *dgamma_t, *dbeta_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x_t.shape(), &dx_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, gamma_t.shape(), &dgamma_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, gamma_t.shape(), &dbeta_t));
    float* dgamma = dgamma_t->flat<float>().data();
    float* dbeta = dbeta_t->flat<float>().data();
    std::fill(dgamma, dgamma + d.C, 0.f);
    std::fill(dbeta, dbeta + d.C, 0.f);
    if (x_t.NumElements() == 0) return;
    const T* dy = dy_t.flat<T>().data();
    const T* x = x_t.flat<T>().data();
    T* dx = dx_t->flat<T>().data();
    const float* gamma = gamma_t.flat<float>().data();
    const float* mean = mean_t.flat<float>().data();
    const float* rstd = rstd_t.flat<float>().data();
    const int64_t C = d.C;
    std::vector<float> scale, shift;
    FoldAffine(d, mean, rstd, gamma, beta_t.flat<float>().data(), &scale, &shift);

    // g = dL/d(normalised x): dy, or through swish dy * (s + y s (1 - s)), s = sigmoid(y).
    auto grad_in = [&](int64_t i, ArrayF* xr, ArrayF* g) {
      const int64_t b = i / d.S;
      LoadRow(x + i * C, C, xr->data());
      LoadRow(dy + i * C, C, g->data());
      if (swish_) {
        const ArrayF yy = *xr * CMapF(scale.data() + b * C, C) + CMapF(shift.data() + b * C, C);
        const ArrayF s = yy.logistic();
        *g = *g * s + (*g * yy) * (s * (1.f - s));
      }
    };
    // For float32, pass 1 parks g in dx's buffer so pass 2 does not recompute the sigmoid.
    constexpr bool kParkG = std::is_same<T, float>::value;
    const bool park_g = kParkG && swish_;
    // Pass 1: per-(example, channel) sum g and sum g * x.
    std::vector<double> sums = ChunkedChannelSums(ctx, d, 2, [&](int64_t b, int64_t r0, int64_t r1, double* acc) {
      ArrayF xr(C), g(C);
      for (int64_t r = r0; r < r1; ++r) {
        grad_in(b * d.S + r, &xr, &g);
        if (park_g) StoreRow(g.data(), C, dx + (b * d.S + r) * C);
        for (int64_t c = 0; c < C; ++c) {
          acc[c] += g[c];
          acc[C + c] += g[c] * xr[c];
        }
      }
    });
    // dx = rstd * (gamma g - mean_group(gamma g) - xhat * mean_group(gamma g xhat))
    //    = (rstd gamma) g + coef_x[b, grp] x + coef_0[b, grp].
    const float n = static_cast<float>(d.S * d.cg);
    std::vector<float> coef_x(d.B * d.C), coef_0(d.B * d.C);
    std::vector<double> dgamma_acc(d.C, 0.0), dbeta_acc(d.C, 0.0);
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t grp = 0; grp < d.G; ++grp) {
        const int64_t bg = b * d.G + grp;
        double a = 0, dd = 0;
        for (int64_t c = grp * d.cg; c < (grp + 1) * d.cg; ++c) {
          const float s1 = static_cast<float>(sums[b * 2 * C + c]);
          const float s2 = static_cast<float>(sums[b * 2 * C + C + c]);
          const float sum_dy_xhat = rstd[bg] * (s2 - mean[bg] * s1);
          dgamma_acc[c] += sum_dy_xhat;
          dbeta_acc[c] += s1;
          a += gamma[c] * s1;
          dd += gamma[c] * sum_dy_xhat;
        }
        const float am = static_cast<float>(a) / n, dm = static_cast<float>(dd) / n;
        const float cx = -rstd[bg] * rstd[bg] * dm;
        const float c0 = rstd[bg] * (mean[bg] * rstd[bg] * dm - am);
        for (int64_t c = grp * d.cg; c < (grp + 1) * d.cg; ++c) {
          coef_x[b * C + c] = cx;
          coef_0[b * C + c] = c0;
        }
      }
    for (int64_t c = 0; c < d.C; ++c) {
      dgamma[c] = static_cast<float>(dgamma_acc[c]);
      dbeta[c] = static_cast<float>(dbeta_acc[c]);
    }
    // Pass 2: dx; g is read back (float32) or recomputed (no [B, S, C] float temporary).
    auto write_dx = [&](int64_t begin, int64_t end) {
      ArrayF xr(C), g(C), out(C);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / d.S;
        if (park_g) {
          LoadRow(x + i * C, C, xr.data());
          LoadRow(dx + i * C, C, g.data());
        } else {
          grad_in(i, &xr, &g);
        }
        out = g * CMapF(scale.data() + b * C, C) + xr * CMapF(coef_x.data() + b * C, C) +
              CMapF(coef_0.data() + b * C, C);
        StoreRow(out.data(), C, dx + i * C);
      }
    };
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(d.B * d.S, C * (swish_ ? 40 : 8), write_dx);
  }

 private:
  int64_t num_groups_;
  bool swish_;
};

}  // namespace

#define REGISTER(T)                                                                   \
  REGISTER_KERNEL_BUILDER(                                                            \
      Name("DiffusionGroupNorm").Device(DEVICE_CPU).TypeConstraint<T>("T"),          \
      GroupNormOp<T>);                                                                \
  REGISTER_KERNEL_BUILDER(                                                            \
      Name("DiffusionGroupNormGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),      \
      GroupNormGradOp<T>);
REGISTER(float)
REGISTER(Eigen::bfloat16)
REGISTER(Eigen::half)
#undef REGISTER

}  // namespace diffusion_tf
