// grouped_direct.cl -- grouped and depthwise convolutions with few channels per group.
//
//   forward:  y[n,oh,ow,co] = sum_{a,b,j} x[n, oh*SH - PT + a*DH, ow*SW - PL + b*DW, g*IPG + j]
//                                        * w[a, b, j, co],   g = co / OPG
//   backprop: dx[n,ih,iw,ci] = sum over the taps (a, b) and the group's output channels
//             co of dy[n, oh, ow, co] * w[a, b, ci % IPG, co], where
//             ih = oh*SH - PT + a*DH and iw = ow*SW - PL + b*DW (real dy pixels only, or
//             with ALL_TAPS every tap, a dy pixel left out counting as 0: see below)
//
// IPG = in_c / groups and OPG = out_c / groups: a depthwise conv has IPG = 1.
// Why a kernel of its own: the GEMM kernels are ungrouped, and the direct ones
// block CO_BLOCK output channels of one group per work-item, which for a
// depthwise conv (one output channel per group) leaves 7 of 8 accumulators idle
// and spends integer divisions on every tap for one multiply-add each (30-50x
// slower than TensorFlow on MobileNet's layers, Zen 4).
//
// One work-item computes VEC consecutive channels at TW consecutive pixels of a
// row: a filter vector loaded once serves TW pixels, and divisions happen once per
// work-item.  VEC > 1 (a depthwise conv with multiplier 1, channels a multiple of
// VEC, every operand's channels contiguous: the host checks) uses explicit vector
// loads.  GROUP_VEC (forward only; VEC dividing the output channels per group) makes
// the vector VEC output channels of one group instead: each input value, loaded once,
// multiplies a vector of weights (a ResNeXt 3x3 with 32 groups of 4 channels over
// 8x56x56x128 ran 36 ms one channel a work-item, Zen 5, against TF's 5.6).  Why explicit: left to PoCL's vectorisation across work-items, the same
// loop ran 3-6x slower (its padding tests keep it scalar), and a channel stride
// that is a kernel argument turns every load into a gather.  VEC = 1 is the
// general path: any grouping, any strides (NCHW, views).  The TW loops are unrolled
// so the accumulators stay in registers.
//
// A vector build of conv2d whose filter width, column stride and dilation are
// compiled in (WINDOW 1) runs window_forward instead (below): each input value
// loaded once for every tap of its filter row.
//
// Tensors go through offset + strides (common.cl).
// Forward NDRange: (out_c / VEC, batch * out_h * cdiv(out_w, TW)).  A tap on padding
// multiplies 0 * w, as TensorFlow's conv2d does (an infinite weight gives NaN).
// Backprop NDRange: (in_c / VEC, batch * in_h * SW * cdiv(cdiv(in_w, SW), TW)): a run
// is TW pixels of one column phase (iw = phase + SW * i), so every pixel of a run
// takes the same taps; only real dy pixels contribute, as in TF's Conv2DBackpropInput,
// or with ALL_TAPS every tap, a dy pixel that padding or the stride leave out counting
// as 0, as in TF's depthwise gradient (ConvGeometry.padded_products).

#ifndef TW
#define TW 4 // output pixels along a row per work-item
#endif
#ifndef VEC
#define VEC 1 // channels per work-item, in one vector
#endif
#if TW < 1 || TW > 16
#error "TW must be 1 to 16 pixels (its accumulators live in registers)"
#endif
#if VEC != 1 && VEC != 2 && VEC != 4 && VEC != 8 && VEC != 16
#error "VEC must be 1, 2, 4, 8 or 16 (an OpenCL vector width)"
#endif

#if VEC > 1
#define VACC CAT(ACC, VEC)
// Channel index c of a pixel whose channels are contiguous (the host checked).
#define AT_V(p, i0, i1, i2, c) (p##_off + (i0) * p##_s0 + (i1) * p##_s1 + (i2) * p##_s2 + (c))
#define LOADV(p, i) VLOADN(VEC, p, i)
#define STOREV(v, p, i) VSTOREN(VEC, v, p, i)
#define ZERO ((VACC)0)
#ifdef GROUP_VEC
// VEC output channels of one group: they read the same input channel, one scalar
// multiplying the vector of their weights.
#define X_AT(n, h, w, c) LOAD(x, AT(x, n, h, w, c))
#else
#define X_AT(n, h, w, c) LOADV(x, AT_V(x, n, h, w, c))
#endif
#define W_AT(a, b, j, c) LOADV(w, AT_V(w, a, b, j, c))
#define DY_AT(n, h, w, c) LOADV(dy, AT_V(dy, n, h, w, c))
#define PUT(v, p, n, h, w, c) STOREV(v, p, AT_V(p, n, h, w, c))
#else
#define VACC ACC
#define ZERO ((ACC)0)
#define X_AT(n, h, w, c) LOAD(x, AT(x, n, h, w, c))
#define W_AT(a, b, j, c) LOAD(w, AT(w, a, b, j, c))
#define DY_AT(n, h, w, c) LOAD(dy, AT(dy, n, h, w, c))
#define PUT(v, p, n, h, w, c) STORE(v, p, AT(p, n, h, w, c))
#endif

// The conv2d kernels' arguments (clconv.direct.window_args): input, filter, output,
// then the window.  RUN_START zeroes a run's TW accumulators, RUN_PUT stores those of
// its pixels inside the row.
#define FORWARD_ARGS_DECL                                                              \
    __global const REAL *x, TENSOR_ARGS(x), int in_h, int in_w, int in_c,              \
    __global const REAL *w, TENSOR_ARGS(w), int k_h, int k_w,                          \
    __global REAL *y, TENSOR_ARGS(y), int out_h, int out_w, int out_c,                 \
    int batch, int stride_h, int stride_w, int dil_h, int dil_w, int pad_top, int pad_left, \
    int groups
#define RUN_START(acc)                                                                 \
    VACC acc[TW];                                                                      \
    _Pragma("unroll") for (int t = 0; t < TW; ++t)                                     \
        acc[t] = ZERO;
#define RUN_PUT(acc, n, oh, ow0, co)                                                   \
    _Pragma("unroll") for (int t = 0; t < TW; ++t)                                     \
        if ((ow0) + t < out_w)                                                         \
            PUT(acc[t], y, n, oh, (ow0) + t, co);

__kernel void grouped_forward(FORWARD_ARGS_DECL)
{
    const int co = (int)get_global_id(0) * VEC;
    const int run = (int)get_global_id(1);
    const int runs_per_row = (out_w + TW - 1) / TW;
    if (co >= out_c || run >= batch * out_h * runs_per_row)
        return;
    const int ow0 = (run % runs_per_row) * TW;
    const int oh = (run / runs_per_row) % out_h;
    const int n = run / (runs_per_row * out_h);
    const int ipg = in_c / groups;
    const int ci0 = (co / (out_c / groups)) * ipg;

    RUN_START(acc)
    for (int a = 0; a < k_h; ++a) {
        const int ih = oh * stride_h - pad_top + a * dil_h;
        const bool real_h = ih >= 0 && ih < in_h;
        for (int b = 0; b < k_w; ++b) {
            const int iw0 = ow0 * stride_w - pad_left + b * dil_w;
            // Most runs read real pixels only: no test per pixel there (a ResNeXt
            // 3x3 with 32 groups of 4: 9.8 -> ... ms, Zen 5).
            const bool inside = real_h && iw0 >= 0 && iw0 + (TW - 1) * stride_w < in_w;
            for (int j = 0; j < ipg; ++j) {
                const VACC wv = W_AT(a, b, j, co);
                if (inside) {
                    #pragma unroll
                    for (int t = 0; t < TW; ++t)
                        acc[t] += X_AT(n, ih, iw0 + t * stride_w, ci0 + j) * wv;
                    continue;
                }
                #pragma unroll
                for (int t = 0; t < TW; ++t) {
                    const int iw = iw0 + t * stride_w;
                    if (real_h && iw >= 0 && iw < in_w)
                        acc[t] += X_AT(n, ih, iw, ci0 + j) * wv;
                    else
                        acc[t] += ZERO * wv; // a padded tap: 0 * w, as TF's conv2d
                }
            }
        }
    }
    RUN_PUT(acc, n, oh, ow0, co)
}

#if defined(WIN_KW) && VEC > 1
// window_forward: grouped_forward's conv2d with vectors (a depthwise conv's VEC
// groups, with GROUP_VEC VEC output channels of one group, or with GROUP_SPAN too the
// outputs of GROUP_SPAN groups of GROUP_OPG: x vectors made of their broadcast
// inputs, where grouped_forward takes only as many lanes as a group has) and the filter's
// width, column stride and column dilation known when the kernel is built (WIN_KW,
// WIN_SW, WIN_DW: one build per such triple).  Two things grouped_forward cannot do
// with them run-time values:
// - each input value of a filter row is loaded once and multiplied by every tap
//   that reaches it (a 3x3 s1 run of 8 pixels: 10 loads a row and input channel,
//   not 24), the unrolled loops deciding at compile time which accumulator a tap
//   feeds;
// - a three-dimensional NDRange (channel vectors, runs of TW pixels, batch x rows)
//   leaves one division a row, which PoCL's work-item loops hoist out of the
//   inner two dimensions, where grouped_forward divides three times a work-item
//   (the divisions and one load a multiply-add kept MobileNet's 3x3 layers at
//   13-17 GFLOP/s, Zen 5, a third of TF's speed).
// An accumulator takes its taps row by row, then input channel by channel, then
// column by column (grouped_forward: rows, columns, channels; a depthwise conv has
// one channel, so there both give the same sums); a tap on padding adds 0 * w.
// A depthwise conv's input gradient at stride 1 runs here too, as the forward conv
// over dy with the filter turned (clconv.grouped.gradient_conv; WIN_REAL_ONLY).
#define WIN_SPAN ((TW - 1) * WIN_SW + (WIN_KW - 1) * WIN_DW + 1) // input pixels a run reads
#if defined(GROUP_SPAN)
// GROUP_SPAN groups of GROUP_OPG outputs each in one vector (a ResNeXt 3x3 with groups
// of 4 outputs as vectors of 8): each group's input channel broadcast over its lanes.
#define XACC VACC
#define SUBV CAT(ACC, GROUP_OPG)
#define X1(n, h, w, c) LOAD(x, AT(x, n, h, w, c))
#if (GROUP_SPAN != 2 && GROUP_SPAN != 4) || (GROUP_SPAN == 4 && VEC != 8)
#error "GROUP_SPAN must be 2 groups a vector, or 4 in a vector of 8"
#endif
// Lane l holds group l / GROUP_OPG's input channel: one load per group, its value in
// every lane of the group, set by halves or quarters (Oclgrind's uninitialised-value
// check crashes on a vector built by the constructor from shorter vectors).
#if GROUP_SPAN == 2
inline VACC group_lanes(ACC x0, ACC x1)
{
    VACC r;
    r.lo = (SUBV)(x0);
    r.hi = (SUBV)(x1);
    return r;
}
#define WIN_X(n, h, w, c) group_lanes(X1(n, h, w, c), X1(n, h, w, (c) + ipg))
#else // four groups of two lanes in a vector of 8
inline VACC group_lanes(ACC x0, ACC x1, ACC x2, ACC x3)
{
    VACC r;
    r.s01 = (SUBV)(x0);
    r.s23 = (SUBV)(x1);
    r.s45 = (SUBV)(x2);
    r.s67 = (SUBV)(x3);
    return r;
}
#define WIN_X(n, h, w, c) group_lanes(X1(n, h, w, c), X1(n, h, w, (c) + ipg), \
                                      X1(n, h, w, (c) + 2 * ipg), X1(n, h, w, (c) + 3 * ipg))
#endif
#elif defined(GROUP_VEC)
#define XACC ACC // one input channel, broadcast over the vector of weights
#define WIN_X X_AT
#else
#define XACC VACC
#define WIN_X X_AT
#endif

// acc[t] += the input at pixel p of the run's window times each tap b that reaches
// output pixel t from it (p = t * WIN_SW + b * WIN_DW): compile-time tests.
#define WIN_TAPS(p, xv)                                                         \
    _Pragma("unroll") for (int b = 0; b < WIN_KW; ++b) {                        \
        const int d = (p) - b * WIN_DW;                                         \
        if (d >= 0 && d % WIN_SW == 0 && d / WIN_SW < TW)                       \
            acc[d / WIN_SW] += (xv) * wv[b];                                    \
    }

__kernel void window_forward(FORWARD_ARGS_DECL)
{
    const int co = (int)get_global_id(0) * VEC;
    const int ow0 = (int)get_global_id(1) * TW;
    const int row = (int)get_global_id(2);
    if (co >= out_c || ow0 >= out_w || row >= batch * out_h)
        return;
    const int oh = row % out_h;
    const int n = row / out_h;
    const int iw0 = ow0 * WIN_SW - pad_left;
    const bool inside_w = iw0 >= 0 && iw0 + WIN_SPAN <= in_w;
#ifdef GROUP_VEC
    const int ipg = in_c / groups;
    const int ci0 = (co / (out_c / groups)) * ipg;
#else
    const int ipg = 1, ci0 = co; // VEC groups of one channel each
#endif

    RUN_START(acc)
    for (int a = 0; a < k_h; ++a) {
        const int ih = oh * stride_h - pad_top + a * dil_h;
        const bool real_h = ih >= 0 && ih < in_h;
        for (int j = 0; j < ipg; ++j) {
            VACC wv[WIN_KW];
            #pragma unroll
            for (int b = 0; b < WIN_KW; ++b)
                wv[b] = W_AT(a, b, j, co);
            if (real_h && inside_w) {
                #pragma unroll
                for (int p = 0; p < WIN_SPAN; ++p) {
                    const XACC xv = WIN_X(n, ih, iw0 + p, ci0 + j);
                    WIN_TAPS(p, xv)
                }
            } else {
#ifdef WIN_REAL_ONLY
                // An input gradient (dx from dy, the taps turned): a tap off dy adds
                // nothing, as in TF's gradient (an infinite weight gives no NaN there).
                if (!real_h)
                    continue;
                #pragma unroll
                for (int p = 0; p < WIN_SPAN; ++p) {
                    const int iw = iw0 + p;
                    if (iw >= 0 && iw < in_w) {
                        const XACC xv = WIN_X(n, ih, iw, ci0 + j);
                        WIN_TAPS(p, xv)
                    }
                }
#else
                #pragma unroll
                for (int p = 0; p < WIN_SPAN; ++p) {
                    const int iw = iw0 + p;
                    const XACC xv = real_h && iw >= 0 && iw < in_w
                        ? WIN_X(n, ih, iw, ci0 + j) : (XACC)0;
                    WIN_TAPS(p, xv)
                }
#endif
            }
        }
    }
    RUN_PUT(acc, n, oh, ow0, co)
}
#endif

// (a % m + m) % m for any sign of a: C's % keeps the sign of a.
#define MOD(a, m) ((((a) % (m)) + (m)) % (m))

__kernel void grouped_backprop(
    __global REAL *dx, TENSOR_ARGS(dx), int in_h, int in_w, int in_c,
    __global const REAL *w, TENSOR_ARGS(w), int k_h, int k_w,
    __global const REAL *dy, TENSOR_ARGS(dy), int out_h, int out_w, int out_c,
    int batch, int stride_h, int stride_w, int dil_h, int dil_w, int pad_top, int pad_left,
    int groups)
{
    const int ci = (int)get_global_id(0) * VEC;
    const int run = (int)get_global_id(1);
    const int per_phase = (in_w + stride_w - 1) / stride_w; // pixels of phase 0
    const int runs_per_phase = (per_phase + TW - 1) / TW;
    const int runs_per_row = stride_w * runs_per_phase;
    if (ci >= in_c || run >= batch * in_h * runs_per_row)
        return;
    const int phase = (run % runs_per_row) / runs_per_phase;
    const int i0 = (run % runs_per_phase) * TW; // index within the phase's pixels
    const int ih = (run / runs_per_row) % in_h;
    const int n = run / (runs_per_row * in_h);
    const int ipg = in_c / groups;
    const int opg = out_c / groups;
    const int co0 = (ci / ipg) * opg;
    const int j = ci % ipg;

    VACC acc[TW];
    #pragma unroll
    for (int t = 0; t < TW; ++t)
        acc[t] = ZERO;
#ifdef ALL_TAPS
    // TF's depthwise gradient multiplies every tap, a dy pixel left out counting as
    // 0.  A tap every pixel of the run misses adds 0 * w to each: the sum of those
    // products, +-0 or NaN (a weight that is not finite), is added once at the end,
    // which changes no finite sum (acc starts at +0 and so is never -0).
    VACC missed = ZERO;
#endif
    for (int a = 0; a < k_h; ++a) {
        const int rows = ih + pad_top - a * dil_h;
        const int oh = rows / stride_h; // exact where rows is a multiple of the stride
        if (MOD(rows, stride_h) != 0 || oh < 0 || oh >= out_h) {
#ifdef ALL_TAPS
            for (int b = 0; b < k_w; ++b)
                for (int k = 0; k < opg; ++k)
                    missed += ZERO * W_AT(a, b, j, co0 + k);
#endif
            continue;
        }
        for (int b = 0; b < k_w; ++b) {
            // iw = phase + stride_w * (i0 + t); ow = (iw + pad_left - b * dil_w) / stride_w
            const int cols = phase + pad_left - b * dil_w;
            if (MOD(cols, stride_w) != 0) { // no pixel of this phase takes tap b
#ifdef ALL_TAPS
                for (int k = 0; k < opg; ++k)
                    missed += ZERO * W_AT(a, b, j, co0 + k);
#endif
                continue;
            }
            const int ow0 = cols / stride_w + i0;
            for (int k = 0; k < opg; ++k) {
                const VACC wv = W_AT(a, b, j, co0 + k);
                #pragma unroll
                for (int t = 0; t < TW; ++t) {
                    const int ow = ow0 + t;
                    if (ow >= 0 && ow < out_w)
                        acc[t] += DY_AT(n, oh, ow, co0 + k) * wv;
#ifdef ALL_TAPS
                    else // this pixel's tap falls on padding
                        acc[t] += ZERO * wv;
#endif
                }
            }
        }
    }
#ifdef ALL_TAPS
    #pragma unroll
    for (int t = 0; t < TW; ++t)
        acc[t] += missed;
#endif
    #pragma unroll
    for (int t = 0; t < TW; ++t) {
        const int iw = phase + stride_w * (i0 + t);
        if (iw < in_w)
            PUT(acc[t], dx, n, ih, iw, ci);
    }
}
