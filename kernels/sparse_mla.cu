// sparse_mla.cu: DSA's attention, MLA in MQA mode over the top-k selected latents of each query.
//
// Each query token has its own selection (from topk.cu: positions ascending, -1 padding at the end; the
// first min(k, p + 1) entries are valid). Its 128 heads attend, with an online softmax, to the gathered
// 576-dim latents (512 latent + 64 RoPE); the value is the first 512 dims. bf16 operands, fp32
// accumulation, mma.sync m16n8k16. The cache is bf16 (1152 bytes a token) or FP8 (656 bytes a token:
// 512 e4m3 + 4 fp32 block scales + 64 bf16 RoPE dims, dequantised to bf16 in shared memory).
//
// Layouts: Q [B, q_len, H, 576] bf16; cache [B, L, 576] bf16 or [B, L, 656] bytes;
//          idx [B, q_len, k] int32; out [B, q_len, H, 512] bf16.
//
// One CTA = 64 heads of one query (grid: H/64, q_len, B; the two head blocks of a query are adjacent, so
// the second reads the gathered rows from L2). Keys come in tiles of 64 selected rows, gathered by
// cp.async (double-buffered for bf16; for FP8 a raw staging copy of the next tile overlaps the work on the
// current one). Eight warps split each tile twice:
//   S = Q K^T: warp (mi = w%4, ni = w/4) computes rows 16mi..+15 x keys 32ni..+31 (ldmatrix + mma);
//   the two key halves exchange row maxima, write P (bf16) to shared memory and the new running maxima;
//   O += P V: warp (ri = w%2, di = w/2) accumulates rows 32ri..+31 x value dims 128di..+127
//   (128 fp32 registers a thread); its rescale factors come from the old and new maxima in shared memory.
// The 32 x 128 output tile per warp reads each V fragment for two row blocks, which halves the
// shared-memory traffic of the value product against 16-row tiles. Shared-memory rows are XOR-swizzled
// in 16-byte chunks (chunk ^ row&7), so ldmatrix is conflict free.

#define SM_BM 64      // heads per CTA
#define SM_BN 64      // keys per tile
#define SM_D 576
#define SM_DV 512
#define SM_CH 72      // 16-byte chunks in a bf16 latent row
#define SM_FP8_ROW 656
#define SM_FP8_CH 41  // 16-byte chunks in an FP8 latent row
#define SM_THREADS 256

#define SM_TILE_ELEMS (SM_BN * SM_D)
// Shared memory (bytes): Q | K tile(s) | [FP8 staging] | P | red_max[2][64] | red_sum[2][64] | m_run[2][64]
#define SM_STATS_BYTES (6 * SM_BM * 4)
#define SM_SMEM_BF16 ((3 * SM_TILE_ELEMS + SM_BM * SM_BN) * 2 + SM_STATS_BYTES)
#define SM_SMEM_FP8 ((2 * SM_TILE_ELEMS + SM_BM * SM_BN) * 2 + SM_BN * SM_FP8_ROW + SM_STATS_BYTES)

// D = A * B + D, m16n8k16 bf16, f32 accumulators. Not volatile: it touches registers only, so the
// compiler may interleave it with the shared-memory loads of the next fragments.
__device__ __forceinline__ void sm_mma(float* d, const u32* a, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// e4m3 code `i` (byte) of `w` as an f32 equal to the code's value times 2^-120: the byte goes to the top
// of the word, an arithmetic shift by 4 puts its 7 magnitude bits in the f32 exponent/mantissa field
// (bits 26..20) while keeping the sign, and the smeared sign copies in bits 30..27 are cleared.
__device__ __forceinline__ float sm_e4m3_scaled_down(u32 w, int i) {
    const u32 top = __byte_perm(w, 0u, 0x0444u | ((u32)i << 12));
    return __uint_as_float(((u32)((int)top >> 4)) & 0x87FFFFFFu);
}

// Element offset of (row, 16-byte chunk) in a swizzled bf16 tile of `chunks` chunks a row.
__device__ __forceinline__ u32 sm_swz(int row, int chunk, int chunks) {
    return (u32)(row * chunks + ((chunk & ~7) | ((chunk ^ row) & 7))) * 8;
}

// Gather one tile (64 selected entries) into shared memory: bf16 straight into a swizzled compute tile,
// FP8 into the raw staging rows. Warp w copies rows 8w..8w+7; lane i < 8 holds in `key` the cache
// position of row 8w+i (negative: a padding entry, zero-filled), so no load waits on an index.
template <bool FP8>
__device__ __forceinline__ void sm_gather(u32 dst, const u8* cache_b, int key, int warp, int lane) {
    constexpr int CH = FP8 ? SM_FP8_CH : SM_CH;
    constexpr int ROWB = FP8 ? SM_FP8_ROW : SM_D * 2;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int r = warp * 8 + i;
        const int kr = __shfl_sync(0xffffffffu, key, i);
        const bool ok = kr >= 0;
        const u8* src = cache_b + (size_t)(ok ? kr : 0) * ROWB;
#pragma unroll
        for (int ch = lane; ch < CH; ch += 32) {
            const u32 at = FP8 ? dst + (u32)(r * SM_FP8_ROW + ch * 16) : dst + sm_swz(r, ch, SM_CH) * 2;
            cp_async16(at, src + ch * 16, ok ? 16u : 0u);
        }
    }
}

// The cache position of entry 8w + lane of tile j for lanes < 8 (-1 past the valid entries or the
// context), for sm_gather.
__device__ __forceinline__ int sm_tile_key(const int* idx_row, int j, int n_valid, int L, int warp, int lane) {
    const int e = j * SM_BN + warp * 8 + lane;
    int key = -1;
    if (lane < 8 && e < n_valid) key = __ldg(idx_row + e);
    return key < L ? key : -1;
}

// FP8 staging rows -> swizzled bf16 tile: value = bf16(e4m3 * block scale), RoPE dims copied.
// sm_e4m3_scaled_down gives the code's value times 2^-120 and the 2^120 is folded into the scale,
// so the product equals the reference's f32 round_e4m3(x / s) * s before the bf16 rounding.
__device__ __forceinline__ void sm_dequant_tile(u16* sK, const u8* stage, int tid) {
    for (int c = tid; c < SM_BN * SM_CH; c += SM_THREADS) {
        const int r = c / SM_CH, ch = c - r * SM_CH;
        const u8* row = stage + r * SM_FP8_ROW;
        uint4 o;
        if (ch < 64) {
            const uint2 codes = *reinterpret_cast<const uint2*>(row + ch * 8);
            const float sc = reinterpret_cast<const float*>(row + 512)[ch >> 4] * __uint_as_float(0x7B800000u);
            u32 wd[4];
#pragma unroll
            for (int m = 0; m < 4; m++) {
                const u32 word = m < 2 ? codes.x : codes.y;
                const int i = (m & 1) * 2;
                wd[m] = pack_bf16x2(sm_e4m3_scaled_down(word, i) * sc, sm_e4m3_scaled_down(word, i + 1) * sc);
            }
            o = make_uint4(wd[0], wd[1], wd[2], wd[3]);
        } else {
            o = *reinterpret_cast<const uint4*>(row + 528 + (ch - 64) * 16);
        }
        *reinterpret_cast<uint4*>(sK + sm_swz(r, ch, SM_CH)) = o;
    }
}

template <bool FP8>
__device__ __forceinline__ void sparse_mla_body(const u16* __restrict__ Q, const u8* __restrict__ cache,
                                                const int* __restrict__ idx, u16* __restrict__ out, int H, int L,
                                                int q_len, int k, float scale_log2) {
    extern __shared__ __align__(128) u16 smem[];
    u16* sQ = smem;
    u16* sK0 = sQ + SM_TILE_ELEMS;
    u16* sK1 = sK0 + SM_TILE_ELEMS;                             // bf16 only
    u8* stage = reinterpret_cast<u8*>(sK0 + SM_TILE_ELEMS);     // FP8 only (in sK1's place)
    u16* sP = FP8 ? reinterpret_cast<u16*>(stage + SM_BN * SM_FP8_ROW) : sK1 + SM_TILE_ELEMS;
    float* red_max = reinterpret_cast<float*>(sP + SM_BM * SM_BN);  // [2][64]
    float* red_sum = red_max + 2 * SM_BM;                           // [2][64]
    float* m_run = red_sum + 2 * SM_BM;                             // [2][64], by tile parity

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int hb = blockIdx.x, i = blockIdx.y, b = blockIdx.z;
    const int p = L - q_len + i;
    const int n_valid = min(k, p + 1);
    const int n_tiles = (n_valid + SM_BN - 1) / SM_BN;
    const size_t qrow = (size_t)b * q_len + i;
    const size_t row0 = qrow * H + (size_t)hb * SM_BM;  // global row of local row 0
    const int* idx_row = idx + qrow * (size_t)k;
    constexpr size_t ROWB = FP8 ? SM_FP8_ROW : SM_D * 2;
    const u8* cache_b = cache + (size_t)b * L * ROWB;

    const u32 aQ = smem_u32(sQ), aK0 = smem_u32(sK0), aK1 = smem_u32(sK1), aStage = smem_u32(stage),
              aP = smem_u32(sP);

    {
        const u16* qsrc = Q + row0 * SM_D;
        for (int c = tid; c < SM_BM * SM_CH; c += SM_THREADS) {
            const int r = c / SM_CH, ch = c - r * SM_CH;
            cp_async16(aQ + sm_swz(r, ch, SM_CH) * 2, qsrc + (size_t)r * SM_D + ch * 8, 16u);
        }
        if (tid < SM_BM) m_run[tid] = NEG_INF;
    }
    sm_gather<FP8>(FP8 ? aStage : aK0, cache_b, sm_tile_key(idx_row, 0, n_valid, L, warp, lane), warp, lane);
    cp_async_commit();
    int next_key = sm_tile_key(idx_row, 1, n_valid, L, warp, lane);  // indices run one tile ahead

    // S-phase roles.
    const int mi = warp & 3, ni = warp >> 2;
    const int lr0 = mi * 16 + g, lr1 = lr0 + 8;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
    // PV-phase roles.
    const int ri = warp & 1, di = warp >> 1;
    float o[2][16][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 16; nt++) o[mt][nt][0] = o[mt][nt][1] = o[mt][nt][2] = o[mt][nt][3] = 0.0f;

    for (int j = 0; j < n_tiles; j++) {
        u32 aK;
        if (FP8) {
            cp_async_wait<0>();
            __syncthreads();  // staging holds tile j; every warp is done with sK0
            sm_dequant_tile(sK0, stage, tid);
            __syncthreads();  // sK0 ready, staging free
            if (j + 1 < n_tiles) {
                sm_gather<true>(aStage, cache_b, next_key, warp, lane);
                cp_async_commit();
                next_key = sm_tile_key(idx_row, j + 2, n_valid, L, warp, lane);
            }
            aK = aK0;
        } else {
            if (j + 1 < n_tiles) {
                sm_gather<false>((j & 1) ? aK0 : aK1, cache_b, next_key, warp, lane);
                cp_async_commit();
                next_key = sm_tile_key(idx_row, j + 2, n_valid, L, warp, lane);
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
            __syncthreads();  // tile j is in
            aK = (j & 1) ? aK1 : aK0;
        }

        // S = Q K^T: rows 16mi.., keys 32ni.. of the tile.
        float s[4][4];
#pragma unroll
        for (int nt = 0; nt < 4; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
        {
            const int qr = mi * 16 + (lane & 15);
            const int kr = ni * 32 + (lane & 7) + ((lane >> 4) << 3);
            const int khalf = (lane >> 3) & 1;
            // Fragments of k-step ks into buffer (fa, fb): Q rows 16mi.., keys 32ni.. (two 16-key halves).
            u32 fa0[4], fb0[2][4], fa1[4], fb1[2][4];
#define SM_LOAD_S(FA, FB, KS)                                                                                    \
    do {                                                                                                         \
        ldsm_x4(aQ + sm_swz(qr, 2 * (KS) + (lane >> 4), SM_CH) * 2, FA[0], FA[1], FA[2], FA[3]);              \
        ldsm_x4(aK + sm_swz(kr, 2 * (KS) + khalf, SM_CH) * 2, FB[0][0], FB[0][1], FB[0][2], FB[0][3]);         \
        ldsm_x4(aK + sm_swz(kr + 16, 2 * (KS) + khalf, SM_CH) * 2, FB[1][0], FB[1][1], FB[1][2], FB[1][3]);    \
    } while (0)
#define SM_MMA_S(FA, FB)                                                                                         \
    do {                                                                                                         \
        sm_mma(s[0], FA, FB[0][0], FB[0][1]);                                                                    \
        sm_mma(s[1], FA, FB[0][2], FB[0][3]);                                                                    \
        sm_mma(s[2], FA, FB[1][0], FB[1][1]);                                                                    \
        sm_mma(s[3], FA, FB[1][2], FB[1][3]);                                                                    \
    } while (0)
            SM_LOAD_S(fa0, fb0, 0);
#pragma unroll 2
            for (int ks = 0; ks < SM_D / 16; ks += 2) {
                SM_LOAD_S(fa1, fb1, ks + 1);
                SM_MMA_S(fa0, fb0);
                if (ks + 2 < SM_D / 16) SM_LOAD_S(fa0, fb0, ks + 2);
                SM_MMA_S(fa1, fb1);
            }
#undef SM_LOAD_S
#undef SM_MMA_S
        }
        const int tile_e = j * SM_BN;
        if (tile_e + SM_BN > n_valid) {
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                const int e = tile_e + ni * 32 + nt * 8 + 2 * t;
                if (e >= n_valid) s[nt][0] = s[nt][2] = NEG_INF;
                if (e + 1 >= n_valid) s[nt][1] = s[nt][3] = NEG_INF;
            }
        }
        float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        if (t == 0) {
            red_max[ni * SM_BM + lr0] = mx0;
            red_max[ni * SM_BM + lr1] = mx1;
        }
        __syncthreads();
        // New running maxima (finite: every tile has a valid key), P, partial row sums.
        const float mn0 = fmaxf(m0, fmaxf(red_max[lr0], red_max[SM_BM + lr0]));
        const float mn1 = fmaxf(m1, fmaxf(red_max[lr1], red_max[SM_BM + lr1]));
        const float al0 = fast_exp2((m0 - mn0) * scale_log2), al1 = fast_exp2((m1 - mn1) * scale_log2);
        m0 = mn0;
        m1 = mn1;
        const float ms0 = mn0 * scale_log2, ms1 = mn1 * scale_log2;
        float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            const float p0 = fast_exp2(fmaf(s[nt][0], scale_log2, -ms0));
            const float p1 = fast_exp2(fmaf(s[nt][1], scale_log2, -ms0));
            const float p2 = fast_exp2(fmaf(s[nt][2], scale_log2, -ms1));
            const float p3 = fast_exp2(fmaf(s[nt][3], scale_log2, -ms1));
            rs0 += p0 + p1;
            rs1 += p2 + p3;
            const int chunk = 4 * ni + nt;  // 8-key chunk of the 64-key P row
            *reinterpret_cast<u32*>(sP + sm_swz(lr0, chunk, 8) + 2 * t) = pack_bf16x2(p0, p1);
            *reinterpret_cast<u32*>(sP + sm_swz(lr1, chunk, 8) + 2 * t) = pack_bf16x2(p2, p3);
        }
        l0 = l0 * al0 + rs0;
        l1 = l1 * al1 + rs1;
        if (t == 0 && ni == 0) {
            m_run[((j + 1) & 1) * SM_BM + lr0] = mn0;
            m_run[((j + 1) & 1) * SM_BM + lr1] = mn1;
        }
        __syncthreads();  // P and the new maxima are in

        // O[rows 32ri.., dims 128di..] = alpha * O + P V.
        {
            const float* m_old = m_run + (j & 1) * SM_BM;
            const float* m_new = m_run + ((j + 1) & 1) * SM_BM;
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const int r0 = ri * 32 + mt * 16 + g, r1 = r0 + 8;
                const float a0 = fast_exp2((m_old[r0] - m_new[r0]) * scale_log2);
                const float a1 = fast_exp2((m_old[r1] - m_new[r1]) * scale_log2);
#pragma unroll
                for (int nt = 0; nt < 16; nt++) {
                    o[mt][nt][0] *= a0;
                    o[mt][nt][1] *= a0;
                    o[mt][nt][2] *= a1;
                    o[mt][nt][3] *= a1;
                }
            }
            const int vr = lane & 15;
#pragma unroll 1  // unrolling this loop costs registers (spills) and gains nothing
            for (int kk = 0; kk < SM_BN / 16; kk++) {
                u32 pa[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; mt++)
                    ldsm_x4(aP + sm_swz(ri * 32 + mt * 16 + (lane & 15), 2 * kk + (lane >> 4), 8) * 2, pa[mt][0],
                            pa[mt][1], pa[mt][2], pa[mt][3]);
                const u32 vrow = aK + (u32)(kk * 16 + vr) * SM_CH * 16;
                u32 vb0[4], vb1[4];
#define SM_LOAD_V(VB, VN)                                                                                        \
    ldsm_x4_t(vrow + ((di * 16 + ((2 * (VN) + (lane >> 4)) ^ (vr & 7))) * 16), VB[0], VB[1], VB[2], VB[3])
#define SM_MMA_V(VB, VN)                                                                                         \
    do {                                                                                                         \
        sm_mma(o[0][2 * (VN)], pa[0], VB[0], VB[1]);                                                             \
        sm_mma(o[0][2 * (VN) + 1], pa[0], VB[2], VB[3]);                                                         \
        sm_mma(o[1][2 * (VN)], pa[1], VB[0], VB[1]);                                                             \
        sm_mma(o[1][2 * (VN) + 1], pa[1], VB[2], VB[3]);                                                         \
    } while (0)
                SM_LOAD_V(vb0, 0);
#pragma unroll
                for (int vn = 0; vn < 8; vn += 2) {
                    SM_LOAD_V(vb1, vn + 1);
                    SM_MMA_V(vb0, vn);
                    if (vn + 2 < 8) SM_LOAD_V(vb0, vn + 2);
                    SM_MMA_V(vb1, vn + 1);
                }
#undef SM_LOAD_V
#undef SM_MMA_V
            }
        }
        __syncthreads();  // done with this K tile, P and the maxima
    }

    // Row sums: over the quad, then over the two key halves.
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    if (t == 0) {
        red_sum[ni * SM_BM + lr0] = l0;
        red_sum[ni * SM_BM + lr1] = l1;
    }
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
        const int r0 = ri * 32 + mt * 16 + g, r1 = r0 + 8;
        const float inv0 = 1.0f / (red_sum[r0] + red_sum[SM_BM + r0]);
        const float inv1 = 1.0f / (red_sum[r1] + red_sum[SM_BM + r1]);
        u16* o0 = out + (row0 + r0) * SM_DV + di * 128 + 2 * t;
        u16* o1 = out + (row0 + r1) * SM_DV + di * 128 + 2 * t;
#pragma unroll
        for (int nt = 0; nt < 16; nt++) {
            *reinterpret_cast<u32*>(o0 + nt * 8) = pack_bf16x2(o[mt][nt][0] * inv0, o[mt][nt][1] * inv0);
            *reinterpret_cast<u32*>(o1 + nt * 8) = pack_bf16x2(o[mt][nt][2] * inv1, o[mt][nt][3] * inv1);
        }
    }
}

extern "C" __global__ void __launch_bounds__(SM_THREADS, 1)
    sparse_mla_bf16(const u16* __restrict__ Q, const u16* __restrict__ cache, const int* __restrict__ idx,
                    u16* __restrict__ out, int H, int L, int q_len, int k, float scale_log2) {
    sparse_mla_body<false>(Q, reinterpret_cast<const u8*>(cache), idx, out, H, L, q_len, k, scale_log2);
}

extern "C" __global__ void __launch_bounds__(SM_THREADS, 1)
    sparse_mla_fp8(const u16* __restrict__ Q, const u8* __restrict__ cache, const int* __restrict__ idx,
                   u16* __restrict__ out, int H, int L, int q_len, int k, float scale_log2) {
    sparse_mla_body<true>(Q, cache, idx, out, H, L, q_len, k, scale_log2);
}
