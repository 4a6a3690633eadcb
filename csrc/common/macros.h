// Shared qualifier macro: functions in csrc/common are compiled for the host by g++ and for
// both host and device by nvcc.
#pragma once

#if defined(__CUDACC__)
#define CURVFAST_HD __host__ __device__ __forceinline__
#else
#define CURVFAST_HD inline
#endif
