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

// One dx value a work-item: channel co of pixel (R, C) = (rq*s_h + ph, cq*s_w + pw) of
// image img, where the phase (ph, pw) comes from dimension 2, so that every work-item
// of a group shares its taps: undilated, a = a0 + i*s_h reads dy row r0 - i (and the
// same along the columns), with no division per tap.  A dilated filter (ONNX allows
// dilations with strides) tests every tap.
// NDRange: (co_count * cdiv(dx_w, s_w), cdiv(dx_h, s_h), batch * s_h * s_w).
__kernel void col2im(
    __global const REAL *cols, int n_cols, __global REAL *dx, TENSOR_ARGS(dx),
    int dx_h, int dx_w, int co_count, int dy_h, int dy_w, int k_h, int k_w,
    int s_h, int s_w, int dil_h, int dil_w, int pad_top, int pad_left, int batch)
{
    const int i = (int)get_global_id(0);
    const int co = i % co_count, cq = i / co_count;
    const int rq = (int)get_global_id(1);
    const int z = (int)get_global_id(2);
    const int img = z / (s_h * s_w), ph = z / s_w % s_h, pw = z % s_w;
    const int R = rq * s_h + ph, C = cq * s_w + pw;
    if (R >= dx_h || C >= dx_w || img >= batch)
        return;
    __global const REAL *image = cols + (IDX)img * dy_h * dy_w * n_cols + co;
    ACC acc = (ACC)0;
    if (dil_h == 1 && dil_w == 1) {
        const int a0 = floor_mod(ph + pad_top, s_h), b0 = floor_mod(pw + pad_left, s_w);
        const int r0 = rq + (ph + pad_top - a0) / s_h; // an exact division
        const int c0 = cq + (pw + pad_left - b0) / s_w;
        for (int a = a0, r = r0; a < k_h; a += s_h, --r) {
            if (r < 0)
                break; // the rows only go down from here
            if (r >= dy_h)
                continue;
            __global const REAL *row = image + (IDX)r * dy_w * n_cols + a * k_w * co_count;
            for (int b = b0, c = c0; b < k_w; b += s_w, --c) {
                if (c < 0)
                    break;
                if (c < dy_w)
                    acc += LOAD(row, (IDX)c * n_cols + b * co_count);
            }
        }
    } else {
        for (int a = 0; a < k_h; ++a) {
            const int from_r = R + pad_top - a * dil_h; // r * s_h for the dy row r it reads
            if (from_r < 0)
                break;
            if (from_r % s_h != 0 || from_r / s_h >= dy_h)
                continue;
            __global const REAL *row = image + (IDX)(from_r / s_h) * dy_w * n_cols
                                       + a * k_w * co_count;
            for (int b = 0; b < k_w; ++b) {
                const int from_c = C + pad_left - b * dil_w;
                if (from_c < 0)
                    break;
                if (from_c % s_w == 0 && from_c / s_w < dy_w)
                    acc += LOAD(row, (IDX)(from_c / s_w) * n_cols + b * co_count);
            }
        }
    }
    STORE(acc, dx, AT(dx, img, R, C, co));
}
