// backprop_via_forward.cl -- the input gradient as a forward convolution.
//
// The backward pass of a conv is itself a conv: dilate dy by the stride
// (stride-1 zeros between pixels), pad it "fully" by k_eff-1-pad before (the
// rest after, so the result has in_h + k_eff - 1 rows), then run a stride-1
// VALID forward conv (conv2d_direct.cl) with the filter rotated by 180 degrees
// and its in/out axes swapped.  This file holds the first step; the host
// passes conv2d_direct a negative-stride view of the filter for the rotation.
//
//   p[n,t,u,c] = dy[n, (t-PBH)/SH, (u-PBW)/SW, c]  when t-PBH and u-PBW are
//                non-negative multiples of the stride inside dy, else 0.
//
// dy: [batch, out_h, out_w, chans] through offset + strides;
// p:  [batch, p_h, p_w, chans], dense NHWC.  PBH/PBW may be negative (explicit
// padding larger than the kernel crops instead of padding).
// NDRange: one work-item per element of p.

__kernel void dilate_pad(
    __global const REAL *dy, TENSOR_ARGS(dy), int out_h, int out_w, int chans,
    __global REAL *p, int p_h, int p_w, int batch,
    int stride_h, int stride_w, int pad_before_h, int pad_before_w)
{
    const IDX index = (IDX)get_global_id(0);
    const IDX pixel = index / chans;
    if (pixel >= (IDX)batch * p_h * p_w)
        return;
    const int c = (int)(index - pixel * chans);
    const int u = (int)(pixel % p_w);
    const int t = (int)((pixel / p_w) % p_h);
    const int n = (int)(pixel / ((IDX)p_w * p_h));

    const int th = t - pad_before_h;
    const int tw = u - pad_before_w;
    ACC value = (ACC)0;
    if (th >= 0 && tw >= 0 && th % stride_h == 0 && tw % stride_w == 0) {
        const int oh = th / stride_h;
        const int ow = tw / stride_w;
        if (oh < out_h && ow < out_w)
            value = LOAD(dy, AT(dy, n, oh, ow, c));
    }
    STORE(value, p, index);
}
