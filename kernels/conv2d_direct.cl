// conv2d_direct.cl -- forward 2-D convolution, direct form.
//
//   y[n,oh,ow,co] = sum_{a,b,ci} x[n, oh*SH - PT + a*DH, ow*SW - PL + b*DW, ci] * w[a,b,ci,co]
//
// x: [batch, in_h, in_w, in_c], w: [k_h, k_w, in_c/groups, out_c], y: [batch, out_h, out_w, out_c],
// each through offset + strides (see common.cl), so NHWC, NCHW and filter views all work.
// A tap is *real* where it lands inside x on the lattice of real pixels
//   ih = before_h + k * lattice_h, 0 <= k < rows (likewise for columns);
// for a plain conv the lattice is every pixel of x (1, 0, in_h).  via_forward runs
// this kernel over the dilated, padded dy, whose lattice is dy's own pixels, so the
// zeros a stride inserts are skipped like the padding.  What a tap that is not real
// adds: with pad_products, 0 * w (TF's conv2d multiplies its zero padding, so an
// infinite weight there gives NaN); otherwise nothing (TF's input gradient).  With groups > 1
// (TF's grouped conv) output channel co of group g = co / (out_c/groups) reads only
// the input channels g*(in_c/groups) ... (g+1)*(in_c/groups)-1.
//
// NDRange: dimension 0 walks blocks of CO_BLOCK output channels (never straddling
// a group), dimension 1 the output pixels n*out_h*out_w; both may be rounded up to
// the work-group size.

#ifndef CO_BLOCK
#define CO_BLOCK 4 // output channels computed by one work-item
#endif
#if CO_BLOCK < 1 || CO_BLOCK > 64
#error "CO_BLOCK must be 1 to 64 channels (its accumulators live in registers)"
#endif

__kernel void conv2d_direct(
    __global const REAL *x, TENSOR_ARGS(x), int in_h, int in_w, int in_c,
    __global const REAL *w, TENSOR_ARGS(w), int k_h, int k_w,
    __global REAL *y, TENSOR_ARGS(y), int out_h, int out_w, int out_c,
    int batch, int stride_h, int stride_w, int dil_h, int dil_w, int pad_top, int pad_left,
    int groups, int pad_products, int lattice_h, int lattice_w, int before_h, int before_w,
    int rows, int cols)
{
    const int out_per_group = out_c / groups;
    const int in_per_group = in_c / groups;
    const int blocks_per_group = (out_per_group + CO_BLOCK - 1) / CO_BLOCK;
    const int block = (int)get_global_id(0);
    const int pixel = (int)get_global_id(1);
    if (block >= groups * blocks_per_group || pixel >= batch * out_h * out_w)
        return;
    const int group = block / blocks_per_group;
    const int co0 = group * out_per_group + (block % blocks_per_group) * CO_BLOCK;
    const int co_end = (group + 1) * out_per_group;
    const int ow = pixel % out_w;
    const int oh = (pixel / out_w) % out_h;
    const int n = pixel / (out_w * out_h);

    // Channels past the group's end read a valid channel (its last) and are never stored,
    // so the inner loop needs no bounds test.
    int co[CO_BLOCK];
    ACC acc[CO_BLOCK];
    for (int j = 0; j < CO_BLOCK; ++j) {
        co[j] = MIN_INT(co0 + j, co_end - 1);
        acc[j] = (ACC)0;
    }

    for (int a = 0; a < k_h; ++a) {
        const int ih = oh * stride_h - pad_top + a * dil_h;
        const int lh = ih - before_h;
        const bool real_h = ih >= 0 && ih < in_h && lh >= 0 && lh % lattice_h == 0
                            && lh / lattice_h < rows;
        for (int b = 0; b < k_w; ++b) {
            const int iw = ow * stride_w - pad_left + b * dil_w;
            const int lw = iw - before_w;
            const bool real = real_h && iw >= 0 && iw < in_w && lw >= 0
                              && lw % lattice_w == 0 && lw / lattice_w < cols;
            const IDX w_base = AT(w, a, b, 0, 0);
            if (!real) {
                if (pad_products) // a padded tap adds 0 * w, as TF's conv2d does
                    for (int ci = 0; ci < in_per_group; ++ci)
                        for (int j = 0; j < CO_BLOCK; ++j)
                            acc[j] += (ACC)0 * LOAD(w, w_base + ci * w_s2 + co[j] * w_s3);
                continue;
            }
            const IDX x_base = AT(x, n, ih, iw, group * in_per_group);
            for (int ci = 0; ci < in_per_group; ++ci) {
                const ACC xv = LOAD(x, x_base + ci * x_s3);
                const IDX w_row = w_base + ci * w_s2;
                for (int j = 0; j < CO_BLOCK; ++j)
                    acc[j] += xv * LOAD(w, w_row + co[j] * w_s3);
            }
        }
    }

    for (int j = 0; j < CO_BLOCK; ++j)
        if (co0 + j < co_end)
            STORE(acc[j], y, AT(y, n, oh, ow, co0 + j));
}
