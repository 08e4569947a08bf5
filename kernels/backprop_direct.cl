// backprop_direct.cl -- gradient of conv2d with respect to its input, gather form.
//
// For the forward conv  y[n,oh,ow,co] = sum x[n, oh*SH-PT+a*DH, ow*SW-PL+b*DW, ci] w[a,b,ci,co]
// this computes
//   dx[n,h,w,ci] = sum over taps (a,b) with h + PT - a*DH = oh*SH and w + PL - b*DW = ow*SW,
//                  0 <= oh < out_h, 0 <= ow < out_w, of  sum_co dy[n,oh,ow,co] * w[a,b,ci,co]
// i.e. each input pixel sums only the filter taps that land on a real dy pixel:
// the zeros a stride would insert are never visited.  conv2d_transpose is this
// op with its input as dy.
//
// dx: [batch, in_h, in_w, in_c], w: [k_h, k_w, in_c/groups, out_c], dy: [batch, out_h, out_w,
// out_c].  With groups > 1 (a grouped or depthwise conv), dx channel ci of group
// g = ci / (in_c/groups) sums only that group's dy channels g*(out_c/groups) ... and reads
// filter row ci - g*(in_c/groups).
// NDRange: dimension 0 walks blocks of CI_BLOCK input channels, groups * cdiv(in_c/groups,
// CI_BLOCK) of them (a block never straddles two groups), dimension 1 the dx pixels
// n*in_h*in_w.

#ifndef CI_BLOCK
#define CI_BLOCK 4 // input channels computed by one work-item
#endif
#if CI_BLOCK < 1 || CI_BLOCK > 64
#error "CI_BLOCK must be 1 to 64 channels (its accumulators live in registers)"
#endif

// CO_VEC > 1: the sum over dy channels runs CO_VEC channels at a time, in vectors
// (VLOADN: any alignment, as in a borrowed numpy array), where dy's and the filter's
// channels are contiguous and each group's count is a multiple of CO_VEC; otherwise
// the scalar loop runs.  A transpose to a few channels (a GAN's last layer to RGB: 128
// dy channels, 3 dx channels) spends nearly all its time in this sum.
#ifndef CO_VEC
#define CO_VEC 1
#endif
#if CO_VEC != 1 && CO_VEC != 2 && CO_VEC != 4 && CO_VEC != 8 && CO_VEC != 16
#error "CO_VEC must be an OpenCL vector width: 1, 2, 4, 8 or 16"
#endif
#if CO_VEC > 1
#define CO_VECTORS
#define VCO CAT(ACC, CO_VEC)

// The sum of a vector's lanes, halving it.  By address: a float16 value argument draws
// clang's "changes the ABI" warning on a CPU without AVX-512, in every build log.
static inline ACC lane_sum(const VCO *vp)
{
    const VCO v = *vp;
#if CO_VEC == 16
    const CAT(ACC, 8) v8 = v.lo + v.hi;
#elif CO_VEC == 8
    const CAT(ACC, 8) v8 = v;
#endif
#if CO_VEC >= 8
    const CAT(ACC, 4) v4 = v8.lo + v8.hi;
#elif CO_VEC == 4
    const CAT(ACC, 4) v4 = v;
#endif
#if CO_VEC >= 4
    const CAT(ACC, 2) v2 = v4.lo + v4.hi;
#else
    const CAT(ACC, 2) v2 = v;
#endif
    return v2.x + v2.y;
}
#endif

__kernel void backprop_direct(
    __global REAL *dx, TENSOR_ARGS(dx), int in_h, int in_w, int in_c,
    __global const REAL *w, TENSOR_ARGS(w), int k_h, int k_w,
    __global const REAL *dy, TENSOR_ARGS(dy), int out_h, int out_w, int out_c,
    int batch, int stride_h, int stride_w, int dil_h, int dil_w, int pad_top, int pad_left,
    int groups)
{
    const int in_per_group = in_c / groups, out_per_group = out_c / groups;
    const int blocks_per_group = (in_per_group + CI_BLOCK - 1) / CI_BLOCK;
    const int block = (int)get_global_id(0);
    const int pixel = (int)get_global_id(1);
    if (block >= groups * blocks_per_group || pixel >= batch * in_h * in_w)
        return;
    const int group = block / blocks_per_group;
    const int group_ci = group * in_per_group; // the group's first dx channel
    const int ci0 = group_ci + (block % blocks_per_group) * CI_BLOCK;
    const int co_begin = group * out_per_group;
    const int iw = pixel % in_w;
    const int ih = (pixel / in_w) % in_h;
    const int n = pixel / (in_w * in_h);

    int row[CI_BLOCK]; // each channel's row of the filter's in axis
    ACC acc[CI_BLOCK]; // `#pragma unroll` on every loop over them keeps them in registers
    #pragma unroll
    for (int j = 0; j < CI_BLOCK; ++j) {
        row[j] = MIN_INT(ci0 + j, group_ci + in_per_group - 1) - group_ci;
        acc[j] = (ACC)0;
    }
#ifdef CO_VECTORS
    // Whole vectors of contiguous channels, or the scalar loop (the same answer for
    // every work-item of a launch).
    const bool vectors = dy_s3 == 1 && w_s3 == 1 && out_per_group % CO_VEC == 0;
    VCO part[CI_BLOCK];
    #pragma unroll
    for (int j = 0; j < CI_BLOCK; ++j)
        part[j] = (VCO)0;
#endif

    // The taps whose dy pixel is real.  With unit dilation along an axis they are every
    // stride-th tap from (ih + pad_top) % stride_h, one dy row apart: one division per
    // work-item and axis instead of two per tap, which is most of a work-item's time
    // where there are few channels to sum (a transpose from 32 channels to 1).
    const int th0 = ih + pad_top, tw0 = iw + pad_left;
    const bool unit_h = dil_h == 1, unit_w = dil_w == 1;
    const int a_step = unit_h ? stride_h : 1, b_step = unit_w ? stride_w : 1;
    // th0 < 0 (a negative leading padding: ONNX's output_shape past the full transposed
    // conv) reaches no dy row; a0 >= 0 all the same, or the loop would read tap -1.
    const int a0 = unit_h ? (th0 % stride_h + stride_h) % stride_h : 0;
    const int b0 = unit_w ? (tw0 % stride_w + stride_w) % stride_w : 0;
    int oh = unit_h ? th0 / stride_h : 0; // the dy row of tap a (unit dilation)
    for (int a = a0; a < k_h; a += a_step, --oh) {
        const int th = th0 - a * dil_h; // = oh * stride_h for a real dy row
        if (th < 0) // th falls as a grows
            break;
        if (!unit_h) {
            if (th % stride_h != 0)
                continue;
            oh = th / stride_h;
        }
        if (oh >= out_h)
            continue;
        int ow = unit_w ? tw0 / stride_w : 0;
        for (int b = b0; b < k_w; b += b_step, --ow) {
            const int tw = tw0 - b * dil_w;
            if (tw < 0)
                break;
            if (!unit_w) {
                if (tw % stride_w != 0)
                    continue;
                ow = tw / stride_w;
            }
            if (ow >= out_w)
                continue;
            const IDX dy_base = AT(dy, n, oh, ow, 0);
            const IDX w_base = AT(w, a, b, 0, 0);
#ifdef CO_VECTORS
            if (vectors) {
                for (int co = co_begin; co < co_begin + out_per_group; co += CO_VEC) {
                    const VCO g = VLOADN(CO_VEC, dy, dy_base + co);
                    #pragma unroll
                    for (int j = 0; j < CI_BLOCK; ++j)
                        part[j] += g * VLOADN(CO_VEC, w, w_base + co + row[j] * w_s2);
                }
                continue;
            }
#endif
            for (int co = co_begin; co < co_begin + out_per_group; ++co) {
                const ACC g = LOAD(dy, dy_base + co * dy_s3);
                const IDX w_col = w_base + co * w_s3;
                #pragma unroll
                for (int j = 0; j < CI_BLOCK; ++j)
                    acc[j] += g * LOAD(w, w_col + row[j] * w_s2);
            }
        }
    }

#ifdef CO_VECTORS
    #pragma unroll
    for (int j = 0; j < CI_BLOCK; ++j)
        acc[j] += lane_sum(&part[j]);
#endif
    #pragma unroll
    for (int j = 0; j < CI_BLOCK; ++j)
        if (ci0 + j < group_ci + in_per_group)
            STORE(acc[j], dx, AT(dx, n, ih, iw, ci0 + j));
}
