// bias.cl -- y[n, c, ...] += bias[c] over a contiguous NC* tensor (PyTorch's layout):
// element i of y is channel (i / inner) % channels.  Summed in ACC, rounded once.
__kernel void add_bias(__global REAL *y, IDX y_off, int channels, int inner,
                       __global const REAL *bias)
{
    const IDX i = (IDX)get_global_id(0);
    const ACC sum = LOAD(y, y_off + i) + LOAD(bias, (int)((i / inner) % channels));
    STORE(sum, y, y_off + i);
}
