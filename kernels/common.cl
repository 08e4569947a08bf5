// common.cl -- prepended to every clconv kernel file.
//
// Element type: REAL is the tensor type (float, double or half), ACC the
// accumulator type (half accumulates in float, as TensorFlow's CPU kernels do).
// Every tensor is addressed through an element offset and four element
// strides, so one kernel serves NHWC and NCHW, strided pyopencl views, and
// the rotated / in-out-swapped filter view of the via_forward algorithm
// (negative strides).

#ifdef REAL_IS_DOUBLE
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif
#ifdef REAL_IS_HALF
#pragma OPENCL EXTENSION cl_khr_fp16 : enable
#endif

#ifndef REAL
#define REAL float // tensor element type
#endif
#ifndef ACC
#define ACC float // accumulator type
#endif

// A tensor reaches a kernel as a buffer, an element offset and four element
// strides in the order of its logical axes (activations: n, h, w, c; filters:
// kh, kw, in, out).  TENSOR_ARGS declares them; AT computes an index.
#define TENSOR_ARGS(p) int p##_off, int p##_s0, int p##_s1, int p##_s2, int p##_s3
#define AT(p, i0, i1, i2, i3) \
    (p##_off + (i0) * p##_s0 + (i1) * p##_s1 + (i2) * p##_s2 + (i3) * p##_s3)
