// gemm_implicit.cl -- convolutions as register-blocked implicit GEMMs over a packed filter.
//
// One kernel pair serves the forward conv and the input gradient (conv2d_transpose):
//
//   Y[m, n] = sum_k A[m, k] * B[k, n]
//     m: an output pixel (img, r, c) of one "phase" (see below), n: an output channel,
//     k = t * CH + ch: filter tap t of the phase and source channel ch.
//     A[m, k] = src[img, r*SRC_MUL_H + off_h[t], c*SRC_MUL_W + off_w[t], ch], 0 outside src
//             (A is never materialised: rows outside src read `zero`, a row of CH zeros).
//     B[k, n] = filt[a[t], b[t], ch, n], packed by pack_filter as [N/TN][K][TN] panels
//             (contiguous per tile, so the inner loop loads whole vectors).
//
// Forward conv2d: a single phase covering every output pixel; off = -pad + tap*dilation,
// SRC_MUL = stride.  Input gradient: one phase per stride residue (ph, pw), i.e. the
// output pixels R = ph + s*r: only the taps that land on real dy pixels belong to it,
// so no work is spent on the zeros a stride would insert; off = (ph + pad - a*d) / s,
// SRC_MUL = 1, and the filter view has in/out swapped.  A phase with no taps writes 0
// (pixels no input reaches).
//
// A 3-D conv (built with DEPTH_TAPS) is the same GEMM over depth planes: src and y
// are seen as batches of planes [N * src_depth, H, W, C] and [N * out_depth, ...], a
// phase also has depths (its count, first and step: the output depths d_start +
// j * d_step), and each tap a depth offset: the phase's j-th depth of image img reads
// source depth j * src_mul_d + off_d[t], 0 outside [0, src_depth).  The forward conv
// is one phase of every output depth (src_mul_d = stride); the input gradient one
// phase per depth residue too, as along the rows (src_mul_d = 1).  So the 3-D ops read
// their source in place instead of stacking the depths each tap reads into a copy kd
// times larger.  2-D builds ignore the depth fields and compile exactly the 2-D code
// (the depth arithmetic sits in the tap loop, which the few-channel layers feel).
//
// A grouped conv2d (built with GROUP_OUT, its output channels per group): CH is a
// group's input channels, the filter [kh, kw, CH, N] packs as an ungrouped one, and
// a tile, which lies inside one group (the host checks), reads its group's channels
// of src from channel (n / GROUP_OUT) * CH.
//
// Tables (int buffers):
//   phases[p*PHASE_INTS + ...] = rows, cols, row_start, row_step, col_start, col_step,
//                                tap_begin, tap_count, depths, d_start, d_step
//   taps[t*TAP_INTS + ...]     = off_h, off_w, a, b, phase tap_begin, phase tap_count, off_d
// The packed filter of phase p starts at tap_begin * CH * n_padded.
//
// Each work-item computes a TM x TN tile (TM pixels x TN channels) held in TM*TN/VEC
// vector accumulators; the inner loop is plain `acc += a * b` on vectors loaded through
// pointer casts (some PoCL builds do not inline vloadN/mad/fma, and the resulting calls
// spill every accumulator).  NDRange: (n_padded/TN, max m-tiles over phases, phases).
//
// IEEE parity with TensorFlow: TF's conv2d multiplies its zero padding (an infinite
// weight on a padded tap gives NaN); its input gradient skips the taps that land
// outside dy.  gemm_implicit multiplies (outside rows read zero), which is conv2d's
// answer, and the gradient's whenever the filter is finite; a gradient's tile does skip
// a tap whose rows all fall outside dy (SKIP_OUTSIDE_TAPS: one test a tap, and less
// work).  Skipping row by row costs a slower loop at the edges, so it runs only when
// needed, as a second kernel the host enqueues for the gradient: pack_filter raises
// *nonfinite to the call's stamp (a number the host never reuses for a buffer) when
// the filter holds an Inf or NaN, and then gemm_implicit_careful recomputes the tiles
// (see the end of the file).  On CPUs a tile may also ask for its output's cache
// lines before computing (PREFETCH_OUTPUT, where clconv.gemm.prefetches_output says).

#ifndef TM
#define TM 6 // pixels per work-item tile
#endif
#ifndef TN
#define TN 16 // output channels per work-item tile (a multiple of VEC)
#endif
#ifndef VEC
#define VEC 8 // vector width of the accumulators and filter loads
#endif

// The kernel guards its own tunables: a configuration from anywhere (a tuning
// database copied between machines) fails to build rather than run wrongly.
#if VEC != 1 && VEC != 2 && VEC != 4 && VEC != 8 && VEC != 16
#error "VEC must be an OpenCL vector width: 1, 2, 4, 8 or 16"
#endif
#if TN < VEC || TN % VEC != 0
#error "TN must be a positive multiple of VEC"
#endif
#if TM < 1 || TM > 32
#error "TM must be 1 to 32 pixels"
#endif
#if TN > 64
#error "TN must be at most 64 channels"
#endif

#define VACC CAT(ACC, VEC) // accumulators and packed-filter vectors (float for half)
#define NV (TN / VEC)

// Packed filter (in ACC: float for a half filter, so the GEMM loads whole float vectors):
//   packed[tap_begin*CH*n_padded + (nb*K + (t-tap_begin)*CH + ch)*TN + j]
//   = filt[a, b, ch, nb*TN + j] (0 past n_out), K = tap_count*CH.
// NDRange: (CH, n_padded/TN, taps).  Each work-item writes one whole TN-wide row
// (a cache line or two) and consecutive work-items read consecutive ch, so neither
// side of this transpose is scattered whichever filter axis has unit stride.
__kernel void pack_filter(
    __global const REAL *filt, TENSOR_ARGS(filt), __global const int *taps,
    __global ACC *packed, int ch_count, int n_out, int n_padded,
    __global int *nonfinite, int stamp)
{
    const int ch = (int)get_global_id(0);
    const int nb = (int)get_global_id(1);
    const int t = (int)get_global_id(2);
    if (ch >= ch_count || nb * TN >= n_padded) // a range padded to its work-groups
        return;
    __global const int *tap = taps + t * TAP_INTS;
    const int tap_begin = tap[4];
    const int k_phase = tap[5] * ch_count;
    const int k = (t - tap_begin) * ch_count + ch;
    __global const REAL *from = filt + AT(filt, tap[2], tap[3], ch, 0);
    __global ACC *to = packed + tap_begin * ch_count * n_padded + (nb * k_phase + k) * TN;
    // `finite` folds `v - v == 0` (false for Inf and NaN; isfinite() is a call, not
    // inlined, on some PoCL builds) with a bitwise & and the channel bound is tested
    // once per tile, not per element: with a short-circuit && and a per-element bound
    // the packing ran at half the speed (an 8 MB filter, Zen 5: 1.8 -> 0.9 ms).
    int finite = 1;
    if (nb * TN + TN <= n_out) {
        #pragma unroll
        for (int j = 0; j < TN; ++j) {
            const ACC v = LOAD(from, (nb * TN + j) * filt_s3);
            to[j] = v;
            finite &= v - v == (ACC)0;
        }
    } else { // the last tile, past n_out: zeros
        #pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int n = nb * TN + j;
            const ACC v = n < n_out ? LOAD(from, n * filt_s3) : (ACC)0;
            to[j] = v;
            finite &= v - v == (ACC)0;
        }
    }
    if (!finite) // this packing holds an Inf or NaN: see gemm_implicit_careful
        atomic_max(nonfinite, stamp);
}

// The first `lanes` channels of one pixel's accumulators, to channels `to[0..lanes)`
// of a contiguous output.  `lanes` is a build-time constant at every call (TN or
// OUT_TAIL), so each inlined call is straight-line stores, no bound tested per lane.
static inline void store_contiguous(__global REAL *to, const VACC *accs, const int lanes)
{
    #pragma unroll
    for (int v = 0; v < NV; ++v) {
        union { VACC vector; ACC lane[VEC]; } u;
        u.vector = accs[v];
        #pragma unroll
        for (int e = 0; e < VEC; ++e)
            if (v * VEC + e < lanes)
                STORE(u.lane[e], to, v * VEC + e);
    }
}

// Where a tile's pixel (its index `m` among the phase's pixels, its image, row and
// column within the phase) writes its channel 0.
static inline __global REAL *output_pixel(
    __global REAL *y, TENSOR_ARGS(y), __global const int *phase, int out_depth,
    int m, int img, int r, int c)
{
#ifdef DEPTH_TAPS
    const int plane = m / (phase[0] * phase[1]);
    const int out_plane = plane / PHASE_DEPTHS(phase) * out_depth + phase[9]
                          + plane % PHASE_DEPTHS(phase) * phase[10];
#else
    const int out_plane = img;
#endif
    return y + AT(y, out_plane, phase[2] + r * phase[3], phase[4] + c * phase[5], 0);
}

// The GEMM of one work-item's tile.  `careful` (a constant in each kernel below, so
// the compiler keeps only one of the two inner loops) skips the rows that fall outside
// the source instead of multiplying them by zero.
static inline void gemm_tile(
    __global const REAL *src, TENSOR_ARGS(src), int src_h, int src_w, int ch_count,
    __global const ACC *packed, __global const REAL *zero,
    __global REAL *y, TENSOR_ARGS(y),
    int batch, int n_out, int n_padded, int src_mul_h, int src_mul_w,
    int src_depth, int out_depth, int src_mul_d,
    __global const int *phases, __global const int *taps, const bool careful)
{
    const int nb = (int)get_global_id(0);
    const int mb = (int)get_global_id(1);
    __global const int *phase = phases + (int)get_global_id(2) * PHASE_INTS;
    const int rows = phase[0], cols = phase[1];
    const int depths = PHASE_DEPTHS(phase);
    const int m_count = batch * depths * rows * cols;
    if (nb * TN >= n_padded || mb * TM >= m_count)
        return;
    const int tap_begin = phase[6], tap_count = phase[7];
    const int k_phase = tap_count * ch_count;

    // Where each of the tile's TM pixels lives: its image (with depth taps, the
    // image's first source plane and the depth its depth taps start from), row, column.
    // The first pixel by division, the others by stepping along the rows: TM x 3
    // integer divisions cost as much as a 1x1 conv's short K loop (see
    // docs/cpu-performance.md).  Pixels past the end repeat the last one: computed,
    // not stored.
    int img[TM], r[TM], c[TM];
#ifdef DEPTH_TAPS
    int depth0[TM];
#endif
    const int m_first = mb * TM;
    const int first_row_index = m_first / cols; // over every image's rows
    int plane_at = first_row_index / rows;
    int r_at = first_row_index - plane_at * rows;
    int c_at = m_first - first_row_index * cols;
    #pragma unroll
    for (int i = 0; i < TM; ++i) {
        img[i] = plane_at;
        r[i] = r_at;
        c[i] = c_at;
        if (m_first + i + 1 < m_count && ++c_at == cols) {
            c_at = 0;
            if (++r_at == rows) {
                r_at = 0;
                ++plane_at;
            }
        }
#ifdef DEPTH_TAPS
        depth0[i] = img[i] % depths * src_mul_d;
        img[i] = img[i] / depths * src_depth;
#endif
    }

#if defined(PREFETCH_OUTPUT) && defined(__SSE2__)
    // Ask for the cache lines this tile will write now, so they arrive while the tile
    // computes.  A stride phase's pixels lie `stride` apart in the output (fcn8s_up8:
    // 84 bytes every 672), a pattern the CPU's prefetchers did not follow: each first
    // store to a line waited for it, and fcn8s_up8 ran 1.4x the time of a conv doing
    // the same GEMM over adjacent pixels (docs/cpu-performance.md).  The host decides
    // where (clconv.gemm.prefetches_output); x86 code only (Clang's __SSE2__), as the
    // builtin is an x86 instruction there and an unresolved call in Oclgrind's SPIR.
    if (y_s3 == 1) {
        #pragma unroll
        for (int i = 0; i < TM; ++i) { // pixels past the end: the last one's lines again
            __global REAL *to = output_pixel(y, y_off, y_s0, y_s1, y_s2, y_s3, phase,
                                             out_depth, min(m_first + i, m_count - 1),
                                             img[i], r[i], c[i])
                                + nb * TN;
            #pragma unroll
            for (int j = 0; j < TN; j += 64 / sizeof(REAL)) // a cache line
                __builtin_prefetch(to + j, 1, 3);
            __builtin_prefetch(to + TN - 1, 1, 3); // the tile's last line, if unaligned
        }
    }
#endif
    VACC acc[TM][NV];
    #pragma unroll
    for (int i = 0; i < TM; ++i)
        #pragma unroll
        for (int v = 0; v < NV; ++v)
            acc[i][v] = (VACC)0;

    __global const ACC *panel = packed + tap_begin * ch_count * n_padded + nb * k_phase * TN;
#ifdef GROUP_OUT
    // A grouped conv2d: GROUP_OUT output channels a group, a tile inside one group (the
    // host checks), reading that group's ch_count input channels.
    const int ch0 = nb * TN / GROUP_OUT * ch_count;
#else
    const int ch0 = 0;
#endif
    for (int t = 0; t < tap_count; ++t) {
        __global const int *tap = taps + (tap_begin + t) * TAP_INTS;
        __global const REAL *row[TM];
        IDX step[TM];
        bool inside[TM];
        bool all_inside = true;
        #pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int sh = r[i] * src_mul_h + tap[0];
            const int sw = c[i] * src_mul_w + tap[1];
#ifdef DEPTH_TAPS
            const int sd = depth0[i] + tap[6];
            const int plane = img[i] + sd;
            inside[i] = sd >= 0 && sd < src_depth && sh >= 0 && sh < src_h && sw >= 0
                        && sw < src_w;
#else
            const int plane = img[i];
            inside[i] = sh >= 0 && sh < src_h && sw >= 0 && sw < src_w;
#endif
            all_inside = all_inside && inside[i];
            row[i] = inside[i] ? src + AT(src, plane, sh, sw, ch0) : zero;
            step[i] = inside[i] ? src_s3 : 0;
        }
#ifdef SKIP_OUTSIDE_TAPS
        // An input gradient (the host defines this for it only): a tap whose rows all
        // fall outside dy adds nothing, as in TF's gradient, which skips such taps, so
        // it is not run.  Near the borders of a small dy that is much of the work: a
        // 5x5 gradient over 14 x 14 pixels has 64 of its 70 taps a row inside.  conv2d
        // must multiply its zero padding (TF's does: an infinite weight there is NaN).
        bool any_inside = false;
        #pragma unroll
        for (int i = 0; i < TM; ++i)
            any_inside = any_inside || inside[i];
        if (!any_inside) {
            panel += ch_count * TN;
            continue;
        }
#endif
        // In the careful kernel, rows of this tap that fall outside the source add
        // nothing at all (not 0 * w, which is NaN for an infinite weight).  `careful`
        // is a constant in each kernel, so the fast one compiles to the plain loop.
        const bool skip_outside = careful && !all_inside;
#ifdef CH_INDEX_LOOP
        if (!careful && src_s3 == 1) {
            // Channels contiguous (NHWC, the common case): one index for every row,
            // so the loop bumps one register instead of TM row pointers, each with
            // its own step register (TM > 6 ran out of general registers and spilled;
            // see docs/cpu-performance.md).  Outside rows read `zero`, which holds
            // ch_count zeros.  CPU builds only, and not for tiles of three vectors a
            // row (the host defines it: clconv.gemm.uses_channel_index_loop says where
            // it lost).
            for (int ch = 0; ch < ch_count; ++ch) {
                VACC b[NV];
                #pragma unroll
                for (int v = 0; v < NV; ++v)
                    b[v] = *(__global const VACC *)(panel + v * VEC);
                panel += TN;
                #pragma unroll
                for (int i = 0; i < TM; ++i) {
                    const ACC a = LOAD(row[i], ch);
                    #pragma unroll
                    for (int v = 0; v < NV; ++v)
                        acc[i][v] += a * b[v];
                }
            }
            continue;
        }
#endif
        for (int ch = 0; ch < ch_count; ++ch) {
            VACC b[NV];
            #pragma unroll
            for (int v = 0; v < NV; ++v)
                b[v] = *(__global const VACC *)(panel + v * VEC);
            panel += TN;
            #pragma unroll
            for (int i = 0; i < TM; ++i) {
                const ACC a = LOAD(row[i], 0);
                row[i] += step[i];
                if (!skip_outside || inside[i]) {
                    #pragma unroll
                    for (int v = 0; v < NV; ++v)
                        acc[i][v] += a * b[v];
                }
            }
        }
    }

    #pragma unroll
    for (int i = 0; i < TM; ++i) {
        if (m_first + i < m_count) {
            __global REAL *out = output_pixel(y, y_off, y_s0, y_s1, y_s2, y_s3, phase,
                                              out_depth, m_first + i, img[i], r[i], c[i]);
            if (y_s3 == 1 && nb * TN + TN <= n_out) {
                // A whole tile of contiguous channels: stores without a bound per lane,
                // which the compiler merges into vector stores.
                store_contiguous(out + nb * TN, acc[i], TN);
                continue;
            }
#ifdef OUT_TAIL
            if (y_s3 == 1) {
                // The last tile of contiguous channels, OUT_TAIL = n_out % TN of them
                // (fcn8s_up8's 21 channels in a tile of 24): which lanes to store is
                // known at build time, so this is straight-line stores.  A bound per
                // lane (below) kept each lane's offset on the stack and branched twice
                // per lane in Debian PoCL's object: for that 6 x 24 tile 288 branches,
                // against 84 channel steps.
                store_contiguous(out + nb * TN, acc[i], OUT_TAIL);
                continue;
            }
#endif
            #pragma unroll
            for (int v = 0; v < NV; ++v) {
                union { VACC vector; ACC lane[VEC]; } u;
                u.vector = acc[i][v];
                #pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    const int n = nb * TN + v * VEC + e;
                    if (n < n_out)
                        STORE(u.lane[e], out, n * y_s3);
                }
            }
        }
    }
}

#define GEMM_ARGS_DECL \
    __global const REAL *src, TENSOR_ARGS(src), int src_h, int src_w, int ch_count, \
    __global const ACC *packed, __global const REAL *zero, \
    __global REAL *y, TENSOR_ARGS(y), \
    int batch, int n_out, int n_padded, int src_mul_h, int src_mul_w, \
    int src_depth, int out_depth, int src_mul_d, \
    __global const int *phases, __global const int *taps
#define GEMM_ARGS_PASS \
    src, src_off, src_s0, src_s1, src_s2, src_s3, src_h, src_w, ch_count, packed, zero, \
    y, y_off, y_s0, y_s1, y_s2, y_s3, batch, n_out, n_padded, src_mul_h, src_mul_w, \
    src_depth, out_depth, src_mul_d, phases, taps

// Every tap's rows multiplied as they are: outside rows read zero.  What conv2d is
// (TF multiplies its zero padding), and the input gradient's answer whenever the
// filter is finite.
__kernel void gemm_implicit(GEMM_ARGS_DECL)
{
    gemm_tile(GEMM_ARGS_PASS, false);
}

// The input gradient's second pass, enqueued after gemm_implicit: when this call's
// packing found an Inf or NaN in the filter (pack_filter raised *nonfinite to `stamp`),
// recompute every tile skipping the outside rows, as TF's gradient does; otherwise
// every work-item returns at once.
__kernel void gemm_implicit_careful(GEMM_ARGS_DECL, __global const int *nonfinite, int stamp)
{
    if (*nonfinite != stamp)
        return;
    gemm_tile(GEMM_ARGS_PASS, true);
}
