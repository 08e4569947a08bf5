// pad_columns.cl -- a few-channel input with its columns padded, for the GEMM that
// reads a conv's width taps as one run of channels (clconv.column_merge).
//
//   p[n, h, u, c] = x[n, h, u - pad_left, c]  when 0 <= u - pad_left < in_w, else 0
//
// x: [batch, in_h, in_w, chans] through offset + strides (any layout);
// p: [batch, in_h, p_w, chans], dense.
// NDRange: (cdiv(p_w, PAD_PIXELS), rows = batch * in_h): one work-item writes PAD_PIXELS
// consecutive pixels of one padded row, every channel of each.  Not one work-item an
// element: the 64-bit index arithmetic per element (backprop_via_forward.cl's
// dilate_pad) took 3.4-3.6 ms for an RGB stem's 2.5 MB on a 2-core Zen 5, and
// rectangular buffer copies, fast themselves, left PoCL running the GEMM launched
// after them on one of its two threads every other call.

#ifndef PAD_PIXELS
#define PAD_PIXELS 32
#endif

__kernel void pad_columns(
    __global const REAL *x, TENSOR_ARGS(x), int in_h, int in_w, int chans,
    __global REAL *p, int p_w, int pad_left, int rows)
{
    const int first = (int)get_global_id(0) * PAD_PIXELS;
    const int row = (int)get_global_id(1);  // n * in_h + h
    if (first >= p_w || row >= rows)  // the range may be rounded up to whole groups
        return;
    const int n = row / in_h;
    const int h = row - n * in_h;
    const int end = MIN_INT(first + PAD_PIXELS, p_w);
    const IDX out_row = (IDX)row * p_w * chans;
    if (x_s3 == 1 && x_s2 == chans) {
        // A dense source row: the padded row is zeros, the row's in_w * chans
        // elements, zeros; three plain loops over this item's share of it.
        const IDX from = AT(x, n, h, 0, 0) - (IDX)pad_left * chans;
        const int e0 = first * chans, e1 = end * chans;
        const int lo = clamp(pad_left * chans, e0, e1);
        const int hi = clamp((pad_left + in_w) * chans, lo, e1);
        for (int e = e0; e < lo; ++e)
            STORE((ACC)0, p, out_row + e);
        for (int e = lo; e < hi; ++e)
            STORE(LOAD(x, from + e), p, out_row + e);
        for (int e = hi; e < e1; ++e)
            STORE((ACC)0, p, out_row + e);
        return;
    }
    for (int u = first; u < end; ++u) {
        const int col = u - pad_left;
        const IDX at = out_row + (IDX)u * chans;
        if (col >= 0 && col < in_w) {
            const IDX from = AT(x, n, h, col, 0);
            for (int c = 0; c < chans; ++c)
                STORE(LOAD(x, from + c * x_s3), p, at + c);
        } else {
            for (int c = 0; c < chans; ++c)
                STORE((ACC)0, p, at + c);
        }
    }
}
