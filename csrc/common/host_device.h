// FASTAD_HOST_DEVICE: marks a function compiled for both the host and the device, so the CPU and
// CUDA kernels of an op share one definition of its arithmetic.
#pragma once

#ifdef __CUDACC__
#define FASTAD_HOST_DEVICE __host__ __device__
#else
#define FASTAD_HOST_DEVICE
#endif
