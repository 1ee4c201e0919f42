// dense_prefill.cu: fused causal flash attention for MLA in MHA mode (dense prefill).
//
// Geometry: qk dim 192, v dim 128, any number of heads, bf16 inputs, fp32 accumulation,
// online softmax, tensor cores through mma.sync m16n8k16 (bf16).
//
// A chunk of `q_len` queries at positions [L - q_len, L) attends causally to L keys: query i
// sees keys 0 ..= L - q_len + i.
//
// Layouts (made on the device by gen_bf16, head-major):
//   Q [B, H, q_len, 192], K [B, H, L, 192], V [B, H, L, 128]   (bf16)
//   O [B, q_len, H, 128]                                         (bf16, ctxcost's output order)
//
// One CTA = PF_WARPS warps = 16*PF_WARPS query rows of one (sequence, head); each warp owns 16 rows and keeps
// its Q fragments in registers. Keys stream through shared memory in tiles of PF_BN: the V tile
// load overlaps Q*K^T and the next K tile load overlaps P*V. Shared-memory rows are padded by
// 16 bytes so that ldmatrix reads of 8 rows hit 8 different bank groups. Tiles wholly in the
// future of every row of the CTA are skipped; only tiles that cross the diagonal are masked.
// CTAs are ordered heaviest query tile first within a head, and the heads of one sequence run
// one after the other, so concurrent CTAs share one head's K/V in L2.

// Tile shape, chosen by the engine with -D options (the engine's default is 8 warps with
// 128-key tiles; the macros below default to 8 x 64 for standalone compiles):
// PF_WARPS warps of 16 query rows each, PF_BN keys per tile, PF_MIN_BLOCKS CTAs per SM.
#ifndef PF_WARPS
#define PF_WARPS 8
#endif
#ifndef PF_BN
#define PF_BN 64
#endif
#ifndef PF_MIN_BLOCKS
#define PF_MIN_BLOCKS 1
#endif
#define PF_BM (16 * PF_WARPS)
#define PF_THREADS (32 * PF_WARPS)
#define PF_DQK 192
#define PF_DV 128
#define PF_QK_LD 200  // smem row stride (elements): 192 + 8 padding = 400 bytes
#define PF_V_LD 136   // 128 + 8 = 272 bytes

#define PF_SMEM_Q (PF_BM * PF_QK_LD)
#define PF_SMEM_K (PF_BN * PF_QK_LD)
#define PF_SMEM_V (PF_BN * PF_V_LD)

__device__ __forceinline__ void pf_load_rows(u32 smem_base, int ld, const u16* src, int row_elems, int first_row,
                                             int rows, int valid_rows, int tid) {
    // rows x row_elems bf16 from src (row-major, row_elems per row) into smem with stride ld;
    // rows at or past valid_rows are zero-filled.
    const int chunks = row_elems / 8;
    for (int c = tid; c < rows * chunks; c += PF_THREADS) {
        int r = c / chunks, ch = c - r * chunks;
        int gr = first_row + r;
        bool ok = gr < valid_rows;
        const u16* g = src + (size_t)(ok ? gr : 0) * row_elems + ch * 8;
        cp_async16(smem_base + (u32)(r * ld + ch * 8) * 2, g, ok ? 16u : 0u);
    }
}

extern "C" __global__ void __launch_bounds__(PF_THREADS, PF_MIN_BLOCKS)
    dense_prefill_bf16(const u16* __restrict__ Q, const u16* __restrict__ K, const u16* __restrict__ V,
                       u16* __restrict__ O, int H, int L, int q_len, float scale_log2) {
    extern __shared__ __align__(16) u16 smem[];
    u16* sQ = smem;
    u16* sK = sQ + PF_SMEM_Q;
    u16* sV = sK + PF_SMEM_K;
    const u32 aQ = smem_u32(sQ), aK = smem_u32(sK), aV = smem_u32(sV);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int n_qt = (q_len + PF_BM - 1) / PF_BM;
    const int qt = n_qt - 1 - (int)blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z;
    const int i0 = qt * PF_BM;
    const int pos0 = L - q_len;

    const size_t bh = (size_t)b * H + h;
    const u16* Qb = Q + bh * q_len * PF_DQK;
    const u16* Kb = K + bh * L * PF_DQK;
    const u16* Vb = V + bh * L * PF_DV;

    // Positions of this thread's two rows (rows past q_len are padding: they see every key,
    // their output is not stored).
    const int r0 = i0 + warp * 16 + g, r1 = r0 + 8;
    const int p_r0 = r0 < q_len ? pos0 + r0 : L - 1;
    const int p_r1 = r1 < q_len ? pos0 + r1 : L - 1;
    const int p_min = pos0 + i0;
    const int p_max = pos0 + min(i0 + PF_BM, q_len) - 1;
    const int n_tiles = p_max / PF_BN + 1;
    const int first_masked = (p_min + 1) / PF_BN;

    // Prologue: Q tile, then K tile 0.
    pf_load_rows(aQ, PF_QK_LD, Qb, PF_DQK, i0, PF_BM, q_len, tid);
    cp_async_commit();
    pf_load_rows(aK, PF_QK_LD, Kb, PF_DQK, 0, PF_BN, L, tid);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    u32 qf[PF_DQK / 16][4];
#pragma unroll
    for (int ks = 0; ks < PF_DQK / 16; ks++) {
        u32 addr = aQ + (u32)((warp * 16 + (lane & 15)) * PF_QK_LD + ks * 16 + (lane >> 4) * 8) * 2;
        ldsm_x4(addr, qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3]);
    }

    float o[PF_DV / 8][4];
#pragma unroll
    for (int i = 0; i < PF_DV / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;

    // ldmatrix lane offsets (elements) within a K tile (non-transposed, B operand of Q*K^T)
    // and a V tile (transposed, B operand of P*V).
    const u32 k_lane = (u32)(((lane & 7) + ((lane >> 4) << 3)) * PF_QK_LD + ((lane >> 3) & 1) * 8);
    const u32 v_lane = (u32)(((lane & 7) + ((lane >> 3) & 1) * 8) * PF_V_LD + (lane >> 4) * 8);

    for (int j = 0; j < n_tiles; j++) {
        cp_async_wait<0>();
        __syncthreads();  // K tile j is in; every warp is done with V tile j-1
        pf_load_rows(aV, PF_V_LD, Vb, PF_DV, j * PF_BN, PF_BN, L, tid);
        cp_async_commit();

        float s[PF_BN / 8][4];
#pragma unroll
        for (int i = 0; i < PF_BN / 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < PF_DQK / 16; ks++) {
#pragma unroll
            for (int kk = 0; kk < PF_BN / 16; kk++) {
                u32 b0, b1, b2, b3;
                ldsm_x4(aK + (k_lane + (u32)(kk * 16 * PF_QK_LD + ks * 16)) * 2, b0, b1, b2, b3);
                mma_bf16(s[2 * kk], qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3], b0, b1);
                mma_bf16(s[2 * kk + 1], qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3], b2, b3);
            }
        }

        if (j >= first_masked) {
#pragma unroll
            for (int nt = 0; nt < PF_BN / 8; nt++) {
                int key = j * PF_BN + nt * 8 + 2 * t;
                if (key > p_r0) s[nt][0] = NEG_INF;
                if (key + 1 > p_r0) s[nt][1] = NEG_INF;
                if (key > p_r1) s[nt][2] = NEG_INF;
                if (key + 1 > p_r1) s[nt][3] = NEG_INF;
            }
        }

        // Online softmax (scores kept unscaled; the scale is folded into exp2).
        float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < PF_BN / 8; nt++) {
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
        mx0 = quad_max(mx0);
        mx1 = quad_max(mx1);
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);  // finite: tile 0 holds key 0
        const float alpha0 = fast_exp2((m0 - mn0) * scale_log2);
        const float alpha1 = fast_exp2((m1 - mn1) * scale_log2);
        m0 = mn0;
        m1 = mn1;
        const float ms0 = mn0 * scale_log2, ms1 = mn1 * scale_log2;
        float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
        for (int nt = 0; nt < PF_BN / 8; nt++) {
            s[nt][0] = fast_exp2(fmaf(s[nt][0], scale_log2, -ms0));
            s[nt][1] = fast_exp2(fmaf(s[nt][1], scale_log2, -ms0));
            s[nt][2] = fast_exp2(fmaf(s[nt][2], scale_log2, -ms1));
            s[nt][3] = fast_exp2(fmaf(s[nt][3], scale_log2, -ms1));
            rs0 += s[nt][0] + s[nt][1];
            rs1 += s[nt][2] + s[nt][3];
        }
        l0 = l0 * alpha0 + rs0;
        l1 = l1 * alpha1 + rs1;
#pragma unroll
        for (int i = 0; i < PF_DV / 8; i++) {
            o[i][0] *= alpha0;
            o[i][1] *= alpha0;
            o[i][2] *= alpha1;
            o[i][3] *= alpha1;
        }

        cp_async_wait<0>();
        __syncthreads();  // V tile j is in; every warp is done with K tile j
        if (j + 1 < n_tiles) {
            pf_load_rows(aK, PF_QK_LD, Kb, PF_DQK, (j + 1) * PF_BN, PF_BN, L, tid);
            cp_async_commit();
        }

#pragma unroll
        for (int kk = 0; kk < PF_BN / 16; kk++) {
            const u32 a0 = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
            const u32 a1 = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
            const u32 a2 = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            const u32 a3 = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int vn = 0; vn < PF_DV / 16; vn++) {
                u32 b0, b1, b2, b3;
                ldsm_x4_t(aV + (v_lane + (u32)(kk * 16 * PF_V_LD + vn * 16)) * 2, b0, b1, b2, b3);
                mma_bf16(o[2 * vn], a0, a1, a2, a3, b0, b1);
                mma_bf16(o[2 * vn + 1], a0, a1, a2, a3, b2, b3);
            }
        }
    }

    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
    if (r0 < q_len) {
        u16* out = O + (((size_t)b * q_len + r0) * H + h) * PF_DV + 2 * t;
#pragma unroll
        for (int i = 0; i < PF_DV / 8; i++)
            *reinterpret_cast<u32*>(out + i * 8) = pack_bf16x2(o[i][0] * inv0, o[i][1] * inv0);
    }
    if (r1 < q_len) {
        u16* out = O + (((size_t)b * q_len + r1) * H + h) * PF_DV + 2 * t;
#pragma unroll
        for (int i = 0; i < PF_DV / 8; i++)
            *reinterpret_cast<u32*>(out + i * 8) = pack_bf16x2(o[i][2] * inv1, o[i][3] * inv1);
    }
}
