// col2im.cl -- the input gradient (conv2d_transpose) as one GEMM and a sum over taps.
//
// dx[R, C, co] = sum over dy pixels (r, c) and taps (a, b) with r*s_h - pad_top + a = R and
// c*s_w - pad_left + b = C of dy[r, c, :] . w[a, b, co, :].  Algorithm "col2im" computes
// it in two launches:
//
//   1. cols[r, c, (a*k_w + b)*co_count + co] = sum_k dy[r, c, k] * w[a, b, co, k]: a GEMM of
//      M = dy's pixels, K = dy's channels and N = k_h*k_w*co_count, which is a 1x1 conv
//      of dy; gemm_implicit.cl runs it over the filter pack_columns packs below.
//   2. col2im (below) adds, for each dx pixel, the columns of the (dy pixel, tap) pairs
//      that land on it.
//
// Where the gather form (backprop_direct.cl) and the per-phase GEMM compute a transpose
// to few channels (an RGB output layer: N = 3) with mostly idle vector lanes, here N is
// every tap's channels (48 for a k4 transpose to RGB) and the GEMM's lanes are whole.
// The price is the columns' memory: written once, read once.
//
// IEEE parity with TensorFlow: only the pairs that land on a real dx pixel are summed,
// and every product in them multiplies a real dy pixel, as TF's Conv2DBackpropInput
// does; columns of taps that land outside dx are computed and never read.

// packed[(nb*K + k)*TN + j] = w[a, b, co, k] for n = nb*TN + j = (a*k_w + b)*co_count + co,
// 0 past n_out: the per-tile panels gemm_implicit.cl reads for a one-tap GEMM.
// NDRange: (K, n_padded / TN).
__kernel void pack_columns(
    __global const REAL *filt, TENSOR_ARGS(filt), __global ACC *packed,
    int k_count, int k_w, int co_count, int n_out, int n_padded)
{
    const int k = (int)get_global_id(0);
    const int nb = (int)get_global_id(1);
    if (k >= k_count || nb * TN >= n_padded)
        return;
    __global ACC *to = packed + ((IDX)nb * k_count + k) * TN;
    for (int j = 0; j < TN; ++j) {
        const int n = nb * TN + j;
        ACC v = (ACC)0;
        if (n < n_out) {
            const int tap = n / co_count, co = n % co_count;
            v = LOAD(filt, AT(filt, tap / k_w, tap % k_w, co, k));
        }
        to[j] = v;
    }
}

// Floor division and modulo for a possibly negative numerator (a negative padding:
// an output larger than the full transposed conv).
static inline int floor_mod(int a, int b) { return (a % b + b) % b; }

// The sum is built for its geometry (the host defines them): CO dx channels, K_H x K_W
// taps, strides S_H, S_W and UNIT_DILATION; with them constant, the index arithmetic
// per dx value is a few multiplications, where with runtime values (divisions by
// co_count and the strides) it took 3.8 ms for a 128 x 128 x 3 x 8 output that reads
// 6.3 MB of columns, against 0.55 ms built for it (Zen 3, Debian PoCL).
//
// A work-item: CB channels (from cb * CB) of pixel (R, C) = (rq*S_H + ph, cq*S_W + pw) of
// image img, where the phase (ph, pw) comes from dimension 2, so that every work-item
// of a group shares its taps: undilated, a = a0 + i*S_H reads dy row r0 - i (and the
// same along the columns), with no division per tap.  A dilated filter (ONNX allows
// dilations with strides) tests every tap.
// NDRange: (cdiv(CO, CB) * cdiv(dx_w, S_W), cdiv(dx_h, S_H), batch * S_H * S_W).
#ifdef CO // the packing's build has no geometry
#define CB (CO < 8 ? CO : 8)
#define BLOCKS ((CO + CB - 1) / CB)
__kernel void col2im(
    __global const REAL *cols, __global REAL *dx, TENSOR_ARGS(dx),
    int dx_h, int dx_w, int dy_h, int dy_w, int dil_h, int dil_w, int pad_top,
    int pad_left, int batch)
{
    const int n_cols = K_H * K_W * CO;
    const int i = (int)get_global_id(0);
    const int cq = i / BLOCKS, c_first = i % BLOCKS * CB;
    const int rq = (int)get_global_id(1);
    const int z = (int)get_global_id(2);
    const int img = z / (S_H * S_W), ph = z / S_W % S_H, pw = z % S_W;
    const int R = rq * S_H + ph, C = cq * S_W + pw;
    if (R >= dx_h || C >= dx_w || img >= batch)
        return;
    __global const REAL *image = cols + (IDX)img * dy_h * dy_w * n_cols + c_first;
    ACC acc[CB];
    #pragma unroll
    for (int j = 0; j < CB; ++j)
        acc[j] = (ACC)0;
#ifdef UNIT_DILATION
    const int a0 = floor_mod(ph + pad_top, S_H), b0 = floor_mod(pw + pad_left, S_W);
    const int r0 = rq + (ph + pad_top - a0) / S_H; // an exact division
    const int c0 = cq + (pw + pad_left - b0) / S_W;
    for (int a = a0, r = r0; a < K_H; a += S_H, --r) {
        if (r < 0)
            break; // the rows only go down from here
        if (r >= dy_h)
            continue;
        __global const REAL *row = image + (IDX)r * dy_w * n_cols + a * K_W * CO;
        for (int b = b0, c = c0; b < K_W; b += S_W, --c) {
            if (c < 0)
                break;
            if (c < dy_w) {
                __global const REAL *at = row + (IDX)c * n_cols + b * CO;
                #pragma unroll
                for (int j = 0; j < CB; ++j)
                    if (c_first + j < CO)
                        acc[j] += LOAD(at, j);
            }
        }
    }
#else
    for (int a = 0; a < K_H; ++a) {
        const int from_r = R + pad_top - a * dil_h; // r * S_H for the dy row r it reads
        if (from_r < 0)
            break;
        if (from_r % S_H != 0 || from_r / S_H >= dy_h)
            continue;
        __global const REAL *row = image + (IDX)(from_r / S_H) * dy_w * n_cols + a * K_W * CO;
        for (int b = 0; b < K_W; ++b) {
            const int from_c = C + pad_left - b * dil_w;
            if (from_c < 0)
                break;
            if (from_c % S_W == 0 && from_c / S_W < dy_w) {
                __global const REAL *at = row + (IDX)(from_c / S_W) * n_cols + b * CO;
                #pragma unroll
                for (int j = 0; j < CB; ++j)
                    if (c_first + j < CO)
                        acc[j] += LOAD(at, j);
            }
        }
    }
#endif
    #pragma unroll
    for (int j = 0; j < CB; ++j)
        if (c_first + j < CO)
            STORE(acc[j], dx, AT(dx, img, R, C, c_first + j));
}
#endif
