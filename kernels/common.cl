// common.cl -- prepended to every clconv kernel file.
//
// Element type: REAL is the tensor type (float, double or half), ACC the
// accumulator type (half accumulates in float, as TensorFlow's CPU kernels do).
// Half is storage only: every tensor element is read with LOAD and written with
// STORE, which for half are vload_half / vstore_half_rte - core OpenCL 1.2, so
// float16 runs on every device, cl_khr_fp16 or not (a half* may point at a
// buffer; only half arithmetic needs the extension, and none is done).
// Every tensor is addressed through an element offset and four element
// strides, so one kernel serves NHWC and NCHW, strided pyopencl views, and
// the rotated / in-out-swapped filter view of the via_forward algorithm
// (negative strides).

#ifdef REAL_IS_DOUBLE
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
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
#ifdef REAL_IS_HALF
#define LOAD(p, i) vload_half((i), (p))
#define STORE(v, p, i) vstore_half_rte((v), (i), (p))
#else
#define LOAD(p, i) ((ACC)(p)[i])
#define STORE(v, p, i) ((p)[i] = (REAL)(v))
#endif

// IDX, the type of element offsets and strides: int, or long in a build for tensors
// past 2^31 - 1 elements (the host defines INDEX_64 for those plans only: 64-bit
// arithmetic costs registers and time on GPUs).  Pixel and channel counts stay int.
#ifdef INDEX_64
typedef long IDX;
#else
typedef int IDX;
#endif
#define TENSOR_ARGS(p) IDX p##_off, IDX p##_s0, IDX p##_s1, IDX p##_s2, IDX p##_s3
#define AT(p, i0, i1, i2, i3) \
    (p##_off + (i0) * p##_s0 + (i1) * p##_s1 + (i2) * p##_s2 + (i3) * p##_s3)

// The GEMM families' tables (gemm_implicit.cl's header describes them; gemm_tiled.cl
// reads the same): ints per phase and per tap, and the depths of a phase, which a
// 2-D build (no DEPTH_TAPS) neither stores nor reads.
#define PHASE_INTS 11
#define TAP_INTS 7
#ifdef DEPTH_TAPS
#define PHASE_DEPTHS(phase) ((phase)[8])
#else
#define PHASE_DEPTHS(phase) 1
#endif
