// Fused optimizer update for CPU: gradient clipping scale, TF1 Adam and the EMA of the
// weights in one pass over each variable, for all variables in one op. The TF ops it
// replaces (Mul by the clip scale, ResourceApplyAdam, Sub and ResourceApplyGradientDescent
// for the EMA) read and write every weight-sized array 16 times per step and dispatch ~4
// kernels per variable; this reads 5 arrays and writes 4, once.
//
// Same float32 arithmetic, in the same order, as those kernels (TF's ApplyAdamNonCuda and
// ApplyGradientDescent), so results are bit-identical when compiled without FMA contraction
// (the build uses -ffp-contract=off):
//   g = grad * grad_scale
//   m += (g - m) * (1 - beta1);  v += (g * g - v) * (1 - beta2)
//   var -= (m * alpha) / (sqrt(v) + epsilon),  alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
//   shadow -= (shadow - var) * ema_alpha       (ema_alpha = 1 - decay)

#include "kernel_common.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/kernels/training_op_helpers.h"

namespace diffusion_tf {

using tensorflow::Var;
using CPUDevice = Eigen::ThreadPoolDevice;

REGISTER_OP("DiffusionAdamEma")
    .Input("var: N * resource")
    .Input("m: N * resource")
    .Input("v: N * resource")
    .Input("shadow: N * resource")
    .Input("grad: N * float")
    .Input("grad_scale: float")
    .Input("lr: float")
    .Input("beta1_power: float")
    .Input("beta2_power: float")
    .Input("ema_alpha: float")
    .Attr("N: int >= 1")
    .Attr("beta1: float")
    .Attr("beta2: float")
    .Attr("epsilon: float")
    .SetIsStateful()
    .SetShapeFn(tensorflow::shape_inference::NoOutputs);

namespace {

constexpr int64_t kChunk = 1 << 14;  // elements per work item: ~0.6 MB of traffic

struct Slot {  // one variable's four arrays and its gradient
  float *var, *m, *v, *shadow;
  const float* grad;
  int64_t size;
};

class AdamEmaOp : public OpKernel {
 public:
  explicit AdamEmaOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &n_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("beta1", &beta1_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("beta2", &beta2_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int n = n_;
    float scalars[5];  // grad_scale, lr, beta1_power, beta2_power, ema_alpha
    for (int k = 0; k < 5; ++k) {
      const Tensor& t = ctx->input(5 * n + k);
      OP_REQUIRES(ctx, t.NumElements() == 1, InvalidArgument("scalar input ", k, " has shape ",
                                                             t.shape().DebugString()));
      scalars[k] = t.flat<float>()(0);
    }
    const float scale = scalars[0], lr = scalars[1], b1p = scalars[2], b2p = scalars[3];
    const float ema_alpha = scalars[4];

    // Look the 4n variables up and lock them (in address order: no deadlock with another op
    // locking an overlapping set).
    std::vector<tensorflow::core::RefCountPtr<Var>> vars(4 * n);
    for (int i = 0; i < 4 * n; ++i) {
      OP_REQUIRES_OK(ctx, LookupResource(ctx, HandleFromInput(ctx, i), &vars[i]));
    }
    std::vector<tensorflow::mutex*> mus;
    for (auto& var : vars) mus.push_back(var->mu());
    std::sort(mus.begin(), mus.end());
    mus.erase(std::unique(mus.begin(), mus.end()), mus.end());
    for (auto* mu : mus) mu->lock();
    struct Unlock {
      std::vector<tensorflow::mutex*>& mus;
      ~Unlock() {
        for (auto it = mus.rbegin(); it != mus.rend(); ++it) (*it)->unlock();
      }
    } unlock{mus};

    std::vector<Slot> slots(n);
    for (int i = 0; i < n; ++i) {
      const Tensor& grad = ctx->input(4 * n + i);
      float* arrays[4];
      for (int k = 0; k < 4; ++k) {
        Var* var = vars[k * n + i].get();
        Tensor* t = var->tensor();
        OP_REQUIRES(ctx, t->IsInitialized() && t->dtype() == tensorflow::DT_FLOAT,
                    InvalidArgument("variable ", k * n + i, " is uninitialised or not float32"));
        OP_REQUIRES(ctx, t->shape() == grad.shape(),
                    InvalidArgument("variable ", k * n + i, " has shape ", t->shape().DebugString(),
                                    ", its gradient ", grad.shape().DebugString()));
        // Copy first if a reader still holds the buffer (as TF's own Apply* kernels do).
        OP_REQUIRES_OK(ctx, tensorflow::PrepareToUpdateVariable<CPUDevice, float>(
                                ctx, t, var->copy_on_read_mode.load()));
        arrays[k] = var->tensor()->flat<float>().data();
      }
      slots[i] = Slot{arrays[0], arrays[1], arrays[2], arrays[3], grad.flat<float>().data(),
                      grad.NumElements()};
    }

    const float omb1 = 1.f - beta1_, omb2 = 1.f - beta2_, eps = epsilon_;
    const float alpha = lr * std::sqrt(1.f - b2p) / (1.f - b1p);
    std::vector<std::pair<int, int64_t>> items;  // (variable, first element)
    for (int i = 0; i < n; ++i)
      for (int64_t b = 0; b < slots[i].size; b += kChunk) items.emplace_back(i, b);

    auto work = [&](int64_t first, int64_t last) {
      for (int64_t w = first; w < last; ++w) {
        const Slot& s = slots[items[w].first];
        const int64_t b = items[w].second, e = std::min(b + kChunk, s.size);
        float* __restrict var = s.var;
        float* __restrict m = s.m;
        float* __restrict v = s.v;
        float* __restrict shadow = s.shadow;
        const float* __restrict grad = s.grad;
        for (int64_t j = b; j < e; ++j) {
          const float g = grad[j] * scale;
          const float mj = m[j] + (g - m[j]) * omb1;
          const float vj = v[j] + (g * g - v[j]) * omb2;
          const float pj = var[j] - (mj * alpha) / (std::sqrt(vj) + eps);
          m[j] = mj;
          v[j] = vj;
          var[j] = pj;
          shadow[j] = shadow[j] - (shadow[j] - pj) * ema_alpha;
        }
      }
    };
    // ~9 floats of traffic and ~12 flops per element.
    ctx->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(
        static_cast<int64_t>(items.size()), kChunk * 40, work);
  }

 private:
  int n_;
  float beta1_, beta2_, epsilon_;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("DiffusionAdamEma").Device(DEVICE_CPU), AdamEmaOp);

}  // namespace diffusion_tf
