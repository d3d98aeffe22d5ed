// What every kernel source of diffusion_tf/ops includes and names: the TF op and kernel
// framework, Eigen's thread pool, and the handful of TF types the kernels use unqualified.
#ifndef DIFFUSION_TF_OPS_KERNEL_COMMON_H_
#define DIFFUSION_TF_OPS_KERNEL_COMMON_H_

#define EIGEN_USE_THREADS
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace diffusion_tf {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
namespace shape_inference = tensorflow::shape_inference;

}  // namespace diffusion_tf

#endif  // DIFFUSION_TF_OPS_KERNEL_COMMON_H_
