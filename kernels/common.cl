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

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

// VLOADN(N, p, i) / VSTOREN(N, v, p, i): N consecutive elements from p + i, any
// alignment, as vloadN / vstoreN (vload_halfN / vstore_halfN_rte for half storage).
// For float and double they are pointer casts to vector types declared with the
// element's alignment: pip PoCL 3.0 on an AVX2 CPU calls vloadN as a function (its
// builtin library is not inlined into the kernel), which spilled every accumulator
// around each call and ran the gather kernels 2-4x slower than Debian's PoCL.
#ifdef REAL_IS_HALF
#define VLOADN(N, p, i) CAT(vload_half, N)(0, (p) + (i))
#define VSTOREN(N, v, p, i) CAT(CAT(vstore_half, N), _rte)((v), 0, (p) + (i))
#else
#define UNALIGNED_VECTORS(T, A)                                                        \
    typedef T##2 T##2_ua __attribute__((aligned(A)));                                  \
    typedef T##4 T##4_ua __attribute__((aligned(A)));                                  \
    typedef T##8 T##8_ua __attribute__((aligned(A)));                                  \
    typedef T##16 T##16_ua __attribute__((aligned(A)));
#ifdef REAL_IS_DOUBLE
UNALIGNED_VECTORS(double, 8)
#else
UNALIGNED_VECTORS(float, 4)
#endif
#define VLOADN(N, p, i) (*(const __global CAT(CAT(REAL, N), _ua) *)((p) + (i)))
#define VSTOREN(N, v, p, i) (*(__global CAT(CAT(REAL, N), _ua) *)((p) + (i)) = (v))
#endif

// The smaller of two ints.  pip PoCL 3.0 on an AVX2 CPU calls the builtin min() as a
// function (see VLOADN); a comparison is inlined everywhere.
#define MIN_INT(a, b) ((a) < (b) ? (a) : (b))

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
