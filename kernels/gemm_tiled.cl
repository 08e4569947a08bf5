// gemm_tiled.cl -- convolutions as work-group-tiled implicit GEMMs, written for GPUs.
//
// The same GEMM as gemm_implicit.cl (read its header for the phases, taps and the
// packed filter), shaped for a GPU's memory system instead of a CPU's registers:
//
//   - one work-group of NDIMC x MDIMC work-items computes an MWG pixels x NWG channels
//     tile of one stride phase (a transposed conv still spends nothing on inserted
//     zeros), stepping through the phase's K = taps * channels in chunks of KWG;
//   - each chunk is staged in __local memory, loaded cooperatively: consecutive
//     work-items read consecutive k, which within a tap are consecutive channels of one
//     pixel (contiguous in NHWC), and consecutive floats of the packed filter panel, so
//     a warp's or wave's loads fall into a few whole cache lines (the register-tiled
//     kernel reads one useful value per 32-byte sector on a GPU);
//   - each work-item then accumulates an MWI x NWI sub-tile from local memory, its
//     pixels and channels strided by MDIMC and NDIMC: neighbouring work-items read
//     neighbouring local words (no bank conflicts) and store neighbouring channels
//     (coalesced writes);
//   - PAD extra words per local row keep the transposing activation stores (lanes
//     writing rows MWG + PAD apart) off a single bank.
//
// The filter is the packing of gemm_implicit.cl's pack_filter with TN = NWG (one panel
// per work-group column, read as one contiguous KWG x NWG block per chunk).  Barriers:
// no work-item returns before one, and every loop around a barrier has the same trip
// count in all work-items of a group (a group with nothing to do runs zero chunks).  IEEE parity with TF's
// gradient for Inf/NaN filters: gemm_tiled_careful, enqueued after gemm_tiled exactly as
// gemm_implicit_careful after gemm_implicit (see that file's header).
//
// NDRange: (n_padded / NWG * NDIMC, cdiv(pixels of the largest phase, MWG) * MDIMC,
// phases), work-group (NDIMC, MDIMC, 1).

#ifndef MWG
#define MWG 64 // pixels of a work-group's tile
#endif
#ifndef NWG
#define NWG 64 // output channels of a work-group's tile
#endif
#ifndef KWG
#define KWG 16 // K (tap x channel) values staged in local memory per step
#endif
#ifndef MDIMC
#define MDIMC 16 // work-items along the pixels
#endif
#ifndef NDIMC
#define NDIMC 16 // work-items along the channels
#endif
#ifndef PAD
#define PAD 1 // extra words per local row against bank conflicts
#endif

#if MWG % MDIMC != 0 || NWG % NDIMC != 0
#error "MWG must be a multiple of MDIMC and NWG of NDIMC"
#endif
#if (MWG * KWG) % (MDIMC * NDIMC) != 0 || (NWG * KWG) % (MDIMC * NDIMC) != 0
#error "the group must load each local tile in whole rounds: MDIMC*NDIMC divides MWG*KWG and NWG*KWG"
#endif
#if MWG > 256 || NWG > 64 || KWG > 64 || PAD < 0 || PAD > 4
#error "tile out of range: MWG <= 256, NWG <= 64 (the filter packing's widest panel), KWG <= 64, PAD 0-4"
#endif

#define MWI (MWG / MDIMC) // pixels per work-item
#define NWI (NWG / NDIMC) // channels per work-item
#define GROUP (MDIMC * NDIMC)
// With DEPTH_TAPS (a 3-D forward conv: see gemm_implicit.cl) each tile pixel also
// keeps the depth its depth taps start from.
#ifdef DEPTH_TAPS
#define DEPTH_TAPS_MWG MWG
#else
#define DEPTH_TAPS_MWG 1
#endif

// Local memory of one work-group, declared by each kernel (OpenCL C allows __local
// variables only at kernel scope) and passed to tiled_gemm.
#define TILED_LOCALS \
    __local int pix_img[MWG], pix_depth[DEPTH_TAPS_MWG], pix_r[MWG], pix_c[MWG]; \
    __local ACC a_tile[KWG][MWG + PAD]; \
    __local ACC b_tile[KWG][NWG + PAD]

// The GEMM of one work-group's tile, if `active`.  `careful` (a constant in each kernel
// below, so the fast kernel compiles without it) skips the products of activation values
// that fall outside the source instead of multiplying them by zero; a_in (careful only)
// marks the staged values that are real.
static inline void tiled_gemm(
    __global const REAL *src, TENSOR_ARGS(src), int src_h, int src_w, int ch_count,
    __global const ACC *packed, __global REAL *y, TENSOR_ARGS(y),
    int batch, int n_out, int n_padded, int src_mul_h, int src_mul_w,
    int src_depth, int out_depth, int src_mul_d,
    __global const int *phases, __global const int *taps,
    __local int *pix_img, __local int *pix_depth, __local int *pix_r, __local int *pix_c,
    __local ACC (*a_tile)[MWG + PAD], __local ACC (*b_tile)[NWG + PAD],
    __local uchar (*a_in)[MWG + PAD], bool active, const bool careful)
{
    const int lx = (int)get_local_id(0), ly = (int)get_local_id(1);
    const int lid = ly * NDIMC + lx;
    const int nb = (int)get_group_id(0), mb = (int)get_group_id(1);
    __global const int *phase = phases + (int)get_group_id(2) * PHASE_INTS;
    const int rows = phase[0], cols = phase[1];
    const int depths = PHASE_DEPTHS(phase);
    const int m_count = batch * depths * rows * cols;
    // A group past its phase's pixels (phases smaller than the NDRange's largest), or a
    // careful pass with nothing to redo, runs no chunk and stores nothing.  It does not
    // return: a return ahead of a barrier, even one the whole group takes, is where
    // PoCL's work-item loops have had bugs (pocl/pocl#2182, #2239).
    active = active && mb * MWG < m_count;
    const int tap_begin = phase[6], tap_count = phase[7];
    const int k_phase = active ? tap_count * ch_count : 0;

    // Each tile pixel's image (-1: past the end; with depth taps, the image's first
    // source plane, and the depth its depth taps start from), row and column.
    for (int i = lid; i < MWG; i += GROUP) {
        const int m = mb * MWG + i;
        const bool real = active && m < m_count;
#ifdef DEPTH_TAPS
        const int plane = m / (rows * cols);
        pix_img[i] = real ? plane / depths * src_depth : -1;
        pix_depth[i] = real ? plane % depths * src_mul_d : 0;
#else
        pix_img[i] = real ? m / (rows * cols) : -1;
#endif
        pix_r[i] = real ? (m / cols) % rows : 0;
        pix_c[i] = real ? m % cols : 0;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    ACC acc[MWI][NWI];
    #pragma unroll
    for (int i = 0; i < MWI; ++i)
        #pragma unroll
        for (int j = 0; j < NWI; ++j)
            acc[i][j] = (ACC)0;

    __global const ACC *panel = packed + tap_begin * ch_count * n_padded + nb * k_phase * NWG;
    for (int k0 = 0; k0 < k_phase; k0 += KWG) {
        // Activations: element e of the MWG x KWG chunk is k = k0 + e % KWG of pixel
        // e / KWG, so consecutive work-items read consecutive channels of a pixel.
        // Not force-unrolled: PoCL 3.0 and 3.1 computed garbage and corrupted the heap
        // now and then with these loops fully unrolled (MWG 64, KWG 16, 4 x 4 items).
        for (int round = 0; round < MWG * KWG / GROUP; ++round) {
            const int e = round * GROUP + lid;
            const int kl = e % KWG, ml = e / KWG;
            const int k = k0 + kl;
            const int img = pix_img[ml];
            ACC v = (ACC)0;
            bool inside = false;
            if (k < k_phase && img >= 0) {
                const int t = k / ch_count;
                __global const int *tap = taps + (tap_begin + t) * TAP_INTS;
                const int sh = pix_r[ml] * src_mul_h + tap[0];
                const int sw = pix_c[ml] * src_mul_w + tap[1];
#ifdef DEPTH_TAPS
                const int sd = pix_depth[ml] + tap[6];
                const int plane = img + sd;
                inside = sd >= 0 && sd < src_depth && sh >= 0 && sh < src_h && sw >= 0
                         && sw < src_w;
#else
                const int plane = img;
                inside = sh >= 0 && sh < src_h && sw >= 0 && sw < src_w;
#endif
                if (inside)
                    v = LOAD(src, AT(src, plane, sh, sw, k - t * ch_count));
            }
            a_tile[kl][ml] = v;
            if (careful)
                a_in[kl][ml] = inside;
        }
        // Filter: the chunk is one contiguous KWG x NWG block of the panel.
        for (int round = 0; round < NWG * KWG / GROUP; ++round) {
            const int e = round * GROUP + lid;
            const int nl = e % NWG, kl = e / NWG;
            b_tile[kl][nl] = k0 + kl < k_phase ? panel[(k0 + kl) * NWG + nl] : (ACC)0;
        }
        barrier(CLK_LOCAL_MEM_FENCE); // the chunk is staged

        #pragma unroll 4
        for (int kl = 0; kl < KWG; ++kl) {
            ACC a[MWI], b[NWI];
            bool real[MWI];
            #pragma unroll
            for (int i = 0; i < MWI; ++i) {
                a[i] = a_tile[kl][ly + i * MDIMC];
                real[i] = !careful || a_in[kl][ly + i * MDIMC];
            }
            #pragma unroll
            for (int j = 0; j < NWI; ++j)
                b[j] = b_tile[kl][lx + j * NDIMC];
            #pragma unroll
            for (int i = 0; i < MWI; ++i)
                if (real[i])
                    #pragma unroll
                    for (int j = 0; j < NWI; ++j)
                        acc[i][j] += a[i] * b[j];
        }
        barrier(CLK_LOCAL_MEM_FENCE); // every work-item is done with the chunk
    }

    const int row_start = phase[2], row_step = phase[3];
    const int col_start = phase[4], col_step = phase[5];
    #pragma unroll
    for (int i = 0; i < MWI; ++i) {
        const int ml = ly + i * MDIMC;
        if (pix_img[ml] < 0)
            continue;
#ifdef DEPTH_TAPS
        const int plane = (mb * MWG + ml) / (rows * cols);
        const int out_plane = plane / depths * out_depth + phase[9]
                                  + plane % depths * phase[10];
#else
        const int out_plane = pix_img[ml];
#endif
        __global REAL *out = y + AT(y, out_plane, row_start + pix_r[ml] * row_step,
                                    col_start + pix_c[ml] * col_step, 0);
        #pragma unroll
        for (int j = 0; j < NWI; ++j) {
            const int n = nb * NWG + lx + j * NDIMC;
            if (n < n_out)
                STORE(acc[i][j], out, n * y_s3);
        }
    }
}

#define TILED_ARGS_DECL \
    __global const REAL *src, TENSOR_ARGS(src), int src_h, int src_w, int ch_count, \
    __global const ACC *packed, __global const REAL *zero, \
    __global REAL *y, TENSOR_ARGS(y), \
    int batch, int n_out, int n_padded, int src_mul_h, int src_mul_w, \
    int src_depth, int out_depth, int src_mul_d, \
    __global const int *phases, __global const int *taps
#define TILED_ARGS_PASS \
    src, src_off, src_s0, src_s1, src_s2, src_s3, src_h, src_w, ch_count, packed, \
    y, y_off, y_s0, y_s1, y_s2, y_s3, batch, n_out, n_padded, src_mul_h, src_mul_w, \
    src_depth, out_depth, src_mul_d, phases, taps, pix_img, pix_depth, pix_r, pix_c, a_tile, \
    b_tile

// One kernel per program (the host builds the careful pass with TILED_CAREFUL defined):
// Oclgrind charges a program's every __local array to each of its kernels.
#ifndef TILED_CAREFUL
// Outside values multiplied as zeros: conv2d's answer (TF multiplies its padding) and
// the gradient's whenever the filter is finite.  (`zero` is unused: the argument list
// is gemm_implicit's, so the host binds both families alike.)
__kernel __attribute__((reqd_work_group_size(NDIMC, MDIMC, 1)))
void gemm_tiled(TILED_ARGS_DECL)
{
    TILED_LOCALS;
    __local uchar unused[1][MWG + PAD];
    tiled_gemm(TILED_ARGS_PASS, unused, true, false);
}
#else

// The gradient's second pass, as gemm_implicit_careful: it redoes the tiles only when
// this call's packing found an Inf or NaN.
__kernel __attribute__((reqd_work_group_size(NDIMC, MDIMC, 1)))
void gemm_tiled_careful(TILED_ARGS_DECL, __global const int *nonfinite, int stamp)
{
    TILED_LOCALS;
    __local uchar a_in[KWG][MWG + PAD];
    tiled_gemm(TILED_ARGS_PASS, a_in, *nonfinite == stamp, true);
}
#endif
