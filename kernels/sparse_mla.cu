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
//
// On Hopper (compiled for sm_90a) the bf16 cache has wgmma variants with the same grid and output
// (section "wgmma (sm_90a), bf16 cache" below); the engine runs sparse_mla_bf16_wgmma_split there by
// default (kernel choice `sparse`: split, split2, early, bulk, cpa or mma).

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
        mx0 = quad_max(mx0);
        mx1 = quad_max(mx1);
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
    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
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

// ---------------------------------------------------------------- wgmma (sm_90a), bf16 cache
//
// Same grid, arguments and output as sparse_mla_bf16 (one CTA = 64 heads of one query, all of its
// selected keys in 64-key tiles), on Hopper's warpgroup matrix instructions. A gathered tile cannot be
// brought in by a tiled tensor copy (Hopper's copy engine has no row gather), and the wgmma operand
// layouts that shared memory could hold (8-row x 16-byte core matrices, or 128-byte swizzled rows) mix
// eight keys in every 128 bytes, so rows copied whole cannot be a shared-memory operand. The kernel
// therefore computes the transposed products, with the gathered rows as the register operand A:
//   S^T[64 keys, 32 heads]      = K[64 keys, 576] Q^T          (wgmma m64n32k16, A = K by ldmatrix,
//                                                                B = Q K-major in shared memory)
//   O^T[512 dims, 32 heads]    += V^T[512, 64 keys] P^T        (8 x wgmma m64n32k16 per 16 keys,
//                                                                A = V^T by ldmatrix.trans, B = P^T)
// Warpgroup w owns heads 32w..32w+31: its softmax (maxima over the 64 keys of the tile: within a
// thread, over the lanes, over its four warps through shared memory) and its P^T never leave the
// warpgroup, so the two warpgroups share only the tile buffers (with bulk-copy gathers they meet only
// through the buffers' empty barriers). A thread holds the same eight heads in S^T and in O^T, so the
// rescale factors stay in registers.
// Key rows land whole in shared memory, row r of a tile at r * 1152 + (r & 7) * 16 + (r >> 3) * 112: the
// eight rows of an aligned group (those an ldmatrix phase reads) start on different 16-byte bank groups,
// and no row overlaps the next. Two ways to gather a tile (entry points):
//   sparse_mla_bf16_wgmma      one bulk copy per row (cp.async.bulk, 1152 bytes), 16 rows by each warp
//                              of warpgroup 1;
//   sparse_mla_bf16_wgmma_cpa  cp.async, 16 bytes a thread at a time, by all 256 threads.
// Both complete on the buffer's mbarrier; two tile buffers, tile j+2 is gathered once every warp is
// done with tile j. On an H200 at B=64 the bulk-copy kernel reaches 244 TFLOP/s, cp.async 202, the
// mma.sync kernel 204 (bench/NOTES.md). Selection entries past the valid ones (or outside [0, L)) gather row 0 of the
// sequence (finite data) and their scores are masked, as in sparse_mla_bf16.
// The A fragments are loaded four k-steps ahead in two register sets, and each set is reloaded only
// after the wgmma group that reads it has completed (wgmma reads register operands asynchronously).
// Variants (kernel choice `sparse`; measured on the H200 in bench/NOTES.md, `split` is the default):
//   sparse_mla_bf16_wgmma_early  each warp releases a tile buffer once it has issued the wgmma on its last
//                                ldmatrix fragments of the tile (8 arrivals on the empty barrier), not
//                                after the last wgmma completes, and warpgroup 1 gathers tile j+2 while
//                                its last two value groups are still in flight;
//   sparse_mla_bf16_wgmma_split  that, with the value product split over the value dims between the
//                                warpgroups (sparse_mla_wgmma_split_body);
//   sparse_mla_bf16_wgmma_split2 that, with S^T split over the 576 dims between the warpgroups as well.

#define SW_ROWB (SM_D * 2)                 // 1152: one bf16 latent row
#define SW_KBUF (SM_BN * SW_ROWB + 896)    // 74624: a gathered tile (sw_row)
#define SW_Q_BYTES (SM_BM * SM_D * 2)      // 73728: Q, core-matrix layout (sw_off)
#define SW_P_BYTES (SM_BN * SM_BM * 2)     // 8192: P^T, core-matrix layout, keys as rows
#define SW_RED_BYTES (2 * 4 * 32 * 4)      // 1024: per-warp maxima / sums [wg][warp][32 heads]
#define SW_OUT_STRIDE 1040                 // bytes of a staged output row (512 bf16 + 16 of padding)
// Q | K0 | K1 | P^T | red | four mbarriers (the engine sizes the wgmma launches with it)
#define SW_SMEM (SW_Q_BYTES + 2 * SW_KBUF + SW_P_BYTES + SW_RED_BYTES + 32)

// Byte offset of row r in a gathered tile (additive over whole 8-row groups: sw_row(8a + b) = sw_row(8a) + sw_row(b)).
__device__ __forceinline__ u32 sw_row(int r) { return (u32)(r * SW_ROWB + (r & 7) * 16 + (r >> 3) * 112); }
// Byte offset of (row r, 16-byte chunk c) in a 64-row core-matrix tile (chunk-major: one 1 KB column of
// 8 core matrices per chunk).
__device__ __forceinline__ u32 sw_off(int r, int c) { return (u32)(((c << 3) + (r >> 3)) * 128 + ((r & 7) << 4)); }

// Cache position of selection entry e, for the gather: row 0 for entries past the valid ones or
// outside the context (their scores are masked; the data only has to be finite).
__device__ __forceinline__ int sw_key(const int* idx_row, int e, int n_valid, int L) {
    int key = 0;
    if (e < n_valid) key = __ldg(idx_row + e);
    return (key >= 0 && key < L) ? key : 0;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The mbarrier receives one arrival once this thread's earlier cp.async copies have landed.
__device__ __forceinline__ void sw_cp_async_arrive(u32 bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
}
// Barrier of one warpgroup (ids 1 and 2; 0 is __syncthreads).
__device__ __forceinline__ void sw_wg_bar(int wg) { asm volatile("bar.sync %0, 128;" ::"r"(wg + 1) : "memory"); }

// D[64 x 32] += A[64 x 16] B[16 x 32], bf16, f32 accumulators; A in registers (mma.sync A-fragment
// layout for rows 16*warp..), B from shared memory (TRANS 0: K-major, 1: MN-major).
template <int TRANS>
__device__ __forceinline__ void sw_mma_rs(float* d, const u32* a, u64 db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
        "}, {%16, %17, %18, %19}, %20, p, 1, 1, %22;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1), "n"(TRANS));
}
#endif

// BULK: rows of a tile gathered by bulk copies (64 or 0), the others by cp.async.
template <int BULK, bool EARLY = false>
__device__ __forceinline__ void sparse_mla_wgmma_body(const u16* __restrict__ Q, const u16* __restrict__ cache,
                                                      const int* __restrict__ idx, u16* __restrict__ out, int H,
                                                      int L, int q_len, int k, float scale_log2) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) u8 wsmem[];
    const u32 aQ = smem_u32(wsmem);
    const u32 aK0 = aQ + SW_Q_BYTES, aK1 = aK0 + SW_KBUF, aP = aK1 + SW_KBUF;
    float* red = reinterpret_cast<float*>(wsmem + SW_Q_BYTES + 2 * SW_KBUF + SW_P_BYTES);
    // Full barriers of the two tile buffers, and (decoupled variant) their empty barriers.
    const u32 bar0 = aP + SW_P_BYTES + SW_RED_BYTES, bar1 = bar0 + 8, bare0 = bar0 + 16, bare1 = bar0 + 24;
    u8* sP = wsmem + SW_Q_BYTES + 2 * SW_KBUF;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wg = warp >> 2, w4 = warp & 3;
    const int hb = blockIdx.x, qi = blockIdx.y, b = blockIdx.z;
    const int p = L - q_len + qi;
    const int n_valid = min(k, p + 1);
    const int n_tiles = (n_valid + SM_BN - 1) / SM_BN;
    const size_t qrow = (size_t)b * q_len + qi;
    const size_t row0 = qrow * H + (size_t)hb * SM_BM;
    const int* idx_row = idx + qrow * (size_t)k;
    const u16* cache_b = cache + (size_t)b * L * SM_D;

    // Gather roles. Bulk rows 0..BULK-1: warp w, lane l < BULK/8 copies row w * BULK/8 + l (the copies of
    // a warp are issued one lane at a time, so the rows are spread over all warps). cp.async rows
    // BULK..63: TPR consecutive threads share a row, thread t copying its 16-byte chunks (t % TPR) + TPR m.
    // Decoupled (with all rows by bulk copies; 1-2% faster than a __syncthreads per tile on the H200):
    // the warpgroups do not meet at the end of a tile;
    // warpgroup 0 only signals the buffer's empty barrier, and warpgroup 1 (warp w, lanes < 16 copying
    // rows 16 (w - 4) + lane) waits for it and gathers the next tile into the buffer.
    constexpr bool DEC = BULK == SM_BN;
    // Early release (sparse_mla_bf16_wgmma_early; decoupled bulk gathers only, else as the default): every
    // warp arrives on the buffer's empty barrier (8 arrivals) once it has issued the wgmma group on its last
    // ldmatrix fragments of the tile, and warpgroup 1 gathers tile j+2 while its own last value-product
    // groups are still in flight.
    constexpr bool ER = EARLY && DEC;
    constexpr int CPR = SM_BN - BULK, TPR = CPR ? SM_THREADS / CPR : 1, BPW = DEC ? 0 : BULK / 8;
    const int brow = DEC ? (warp - 4) * 16 + lane : warp * BPW + lane, crow = BULK + tid / TPR;
    const bool bulk_lane = DEC ? (wg == 1 && lane < 16) : (lane < BPW);
    int key_a = 0, key_b = 0;  // cache positions of this thread's cp.async and bulk rows in the next gather
    auto fetch_keys = [&](int j) {
        if (BULK && bulk_lane) key_b = sw_key(idx_row, j * SM_BN + brow, n_valid, L);
        if (CPR) key_a = sw_key(idx_row, j * SM_BN + crow, n_valid, L);
    };
    auto gather = [&](int j) {  // tile j (keys fetched) into buffer j & 1
        const u32 dst = (j & 1) ? aK1 : aK0, bar = (j & 1) ? bar1 : bar0;
        if (BULK) {
            // A copy may land before the expect-tx: the phase still waits for this arrival.
            if (tid == (DEC ? 128 : 0)) mb_expect_tx(bar, BULK * SW_ROWB);
            if (bulk_lane) bulk_g2s(dst + sw_row(brow), cache_b + (size_t)key_b * SM_D, SW_ROWB, bar);
        }
        if (CPR) {
            const u16* src = cache_b + (size_t)key_a * SM_D;
            const u32 d = dst + sw_row(crow);
#pragma unroll
            for (int m = 0; m < SM_CH / TPR; m++) {
                const int c = (tid % TPR) + TPR * m;
                cp_async16(d + c * 16, src + c * 8, 16u);
            }
            sw_cp_async_arrive(bar);
        }
    };

    if (tid == 0) {
        mb_init(bar0, (BULK ? 1 : 0) + (CPR ? SM_THREADS : 0));
        mb_init(bar1, (BULK ? 1 : 0) + (CPR ? SM_THREADS : 0));
        mb_init(bare0, ER ? 8 : 4);
        mb_init(bare1, ER ? 8 : 4);
        mb_fence_init();
    }
    __syncthreads();
    // Q (64 x 576) into the core-matrix layout: warp w copies rows 8w..8w+7, 64 bytes of a row per step.
    {
        const int r = warp * 8 + (lane & 7);
        const u16* qsrc = Q + (row0 + r) * SM_D;
#pragma unroll
        for (int m = 0; m < SM_CH / 4; m++) {
            const int c = m * 4 + (lane >> 3);
            cp_async16(aQ + sw_off(r, c), qsrc + c * 8, 16u);
        }
        cp_async_commit();
    }
    fetch_keys(0);
    gather(0);
    if (n_tiles > 1) {
        fetch_keys(1);
        gather(1);
    }
    if (CPR) cp_async_commit();
    fetch_keys(2);
    if (CPR) cp_async_wait<1>(); else cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();  // Q in place for the tensor cores

    const float NI = NEG_INF;
    float o[8][16];  // O^T: [value-dim block mb][m64n32 fragment]
#pragma unroll
    for (int mb = 0; mb < 8; mb++)
#pragma unroll
        for (int x = 0; x < 16; x++) o[mb][x] = 0.0f;
    float m_run[8], l_run[8];  // heads 32wg + 8i + 2t + c at [2i + c]
#pragma unroll
    for (int x = 0; x < 8; x++) {
        m_run[x] = NI;
        l_run[x] = 0.0f;
    }
    const u64 dq = wg_desc(aQ + wg * 512, 1024, 128);         // Q rows 32wg.., K-major
    const u64 dp = wg_desc(aP + wg * 4 * 1024, 128, 1024);    // P^T heads 32wg.., MN-major
    // ldmatrix row addresses (relative to the tile): K rows 16w4 + (lane & 15), chunk lane >> 4;
    // V^T: keys (lane & 7) + 8 (lane >> 4), dims 16w4 + 8 ((lane >> 3) & 1).
    const u32 a_off = sw_row(16 * w4 + (lane & 15)) + (lane >> 4) * 16;
    const u32 v_off = sw_row((lane & 7) + ((lane >> 4) << 3)) + (16 * w4 + ((lane >> 3) & 1) * 8) * 2;
    const int kr0 = 16 * w4 + g;  // this thread's keys kr0, kr0 + 8 in S^T

    for (int j = 0; j < n_tiles; j++) {
        const u32 kb = (j & 1) ? aK1 : aK0;
        mb_wait((j & 1) ? bar1 : bar0, (u32)(j >> 1) & 1u);
        __syncwarp();
        // S^T = K Q^T for the tile's 64 keys and this warpgroup's 32 heads.
        float s[16];
#pragma unroll
        for (int x = 0; x < 16; x++) s[x] = 0.0f;
        {
            u32 fa[2][4][4];
            const u32 ka = kb + a_off;
#pragma unroll
            for (int q = 0; q < 4; q++) ldsm_x4(ka + q * 32, fa[0][q][0], fa[0][q][1], fa[0][q][2], fa[0][q][3]);
            wg_fence_acc<16>(s);
#pragma unroll
            for (int gi = 0; gi < SM_D / 64; gi++) {
                wg_fence();
#pragma unroll
                for (int q = 0; q < 4; q++) sw_mma_rs<0>(s, fa[gi & 1][q], dq + (u64)((gi * 4 + q) * 128));
                wg_commit();
                if (gi + 1 < SM_D / 64) {
                    if (gi >= 1) wg_wait<1>();
#pragma unroll
                    for (int q = 0; q < 4; q++)
                        ldsm_x4(ka + ((gi + 1) * 4 + q) * 32, fa[(gi + 1) & 1][q][0], fa[(gi + 1) & 1][q][1],
                                fa[(gi + 1) & 1][q][2], fa[(gi + 1) & 1][q][3]);
                }
            }
            wg_wait<0>();
            wg_fence_acc<16>(s);
        }
        if (j * SM_BN + SM_BN > n_valid) {
            const int e0 = j * SM_BN + kr0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                if (e0 >= n_valid) s[4 * i] = s[4 * i + 1] = NI;
                if (e0 + 8 >= n_valid) s[4 * i + 2] = s[4 * i + 3] = NI;
            }
        }
        // Per-head maxima over the tile: this thread's two keys, the 8 lanes of a column, the 4 warps.
        float cm[8];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int c = 0; c < 2; c++) cm[2 * i + c] = fmaxf(s[4 * i + c], s[4 * i + 2 + c]);
#pragma unroll
        for (int x = 0; x < 8; x++) {
            cm[x] = fmaxf(cm[x], __shfl_xor_sync(0xffffffffu, cm[x], 4));
            cm[x] = fmaxf(cm[x], __shfl_xor_sync(0xffffffffu, cm[x], 8));
            cm[x] = fmaxf(cm[x], __shfl_xor_sync(0xffffffffu, cm[x], 16));
        }
        float* red_wg = red + wg * 128;
        if (g == 0) {
#pragma unroll
            for (int i = 0; i < 4; i++)
                *reinterpret_cast<float2*>(red_wg + w4 * 32 + 8 * i + 2 * t) = make_float2(cm[2 * i], cm[2 * i + 1]);
        }
        sw_wg_bar(wg);
        float alpha[8];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 mx = *reinterpret_cast<const float2*>(red_wg + 8 * i + 2 * t);
#pragma unroll
            for (int w = 1; w < 4; w++) {
                const float2 v = *reinterpret_cast<const float2*>(red_wg + w * 32 + 8 * i + 2 * t);
                mx.x = fmaxf(mx.x, v.x);
                mx.y = fmaxf(mx.y, v.y);
            }
            cm[2 * i] = mx.x;
            cm[2 * i + 1] = mx.y;
        }
        // P = exp2(S c - m c) as bf16 into P^T (keys as rows, 8-head chunks), running sums per thread.
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float pv[2][2];
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const int x = 2 * i + c;
                const float mn = fmaxf(m_run[x], cm[x]);  // finite: every tile has a valid key
                alpha[x] = fast_exp2((m_run[x] - mn) * scale_log2);
                m_run[x] = mn;
                const float ms = mn * scale_log2;
                pv[0][c] = fast_exp2(fmaf(s[4 * i + c], scale_log2, -ms));
                pv[1][c] = fast_exp2(fmaf(s[4 * i + 2 + c], scale_log2, -ms));
                l_run[x] = l_run[x] * alpha[x] + (pv[0][c] + pv[1][c]);
            }
            const int hc = 4 * wg + i;
            *reinterpret_cast<u32*>(sP + sw_off(kr0, hc) + 4 * t) = pack_bf16x2(pv[0][0], pv[0][1]);
            *reinterpret_cast<u32*>(sP + sw_off(kr0 + 8, hc) + 4 * t) = pack_bf16x2(pv[1][0], pv[1][1]);
        }
        bool rescale = false;
#pragma unroll
        for (int x = 0; x < 8; x++) rescale |= alpha[x] != 1.0f;
        if (rescale) {  // once the running maxima settle, most tiles leave them unchanged
#pragma unroll
            for (int mb = 0; mb < 8; mb++)
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int c = 0; c < 2; c++) {
                        o[mb][4 * i + c] *= alpha[2 * i + c];
                        o[mb][4 * i + 2 + c] *= alpha[2 * i + c];
                    }
        }
        fence_proxy_async();
        sw_wg_bar(wg);  // P^T complete and visible to the tensor cores; red free again

        // O^T += V^T P^T: value-dim block mb (64 dims) x this warpgroup's 32 heads, 4 k-steps of 16 keys.
        {
            u32 fb[2][4][4];
            const u32 vb = kb + v_off;
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
                ldsm_x4_t(vb + sw_row(16 * kk), fb[0][kk][0], fb[0][kk][1], fb[0][kk][2], fb[0][kk][3]);
#pragma unroll
            for (int mb = 0; mb < 8; mb++) wg_fence_acc<16>(o[mb]);
#pragma unroll
            for (int mb = 0; mb < 8; mb++) {
                wg_fence();
#pragma unroll
                for (int kk = 0; kk < 4; kk++) sw_mma_rs<1>(o[mb], fb[mb & 1][kk], dp + (u64)(kk * 16));
                wg_commit();
                if (mb + 1 < 8) {
                    if (mb >= 1) wg_wait<1>();
#pragma unroll
                    for (int kk = 0; kk < 4; kk++)
                        ldsm_x4_t(vb + sw_row(16 * kk) + (mb + 1) * 128, fb[(mb + 1) & 1][kk][0],
                                  fb[(mb + 1) & 1][kk][1], fb[(mb + 1) & 1][kk][2], fb[(mb + 1) & 1][kk][3]);
                }
            }
            if (ER) {
                // The fragments of value block 7 were this warp's last read of the tile buffer, and the
                // wgmma just issued on them has waited for those loads; the groups still in flight read
                // registers and P^T only. Release the buffer.
                __syncwarp();
                if (lane == 0) mb_arrive((j & 1) ? bare1 : bare0);
            }
            if (ER && wg == 1 && j + 2 < n_tiles) {
                // Every warp of both warpgroups has read the last of buffer j & 1 (empty phase j >> 1):
                // gather tile j+2 into it while the groups of value blocks 6 and 7 complete. The
                // accumulators and A fragments in flight are not touched until the wg_wait below.
                mb_wait((j & 1) ? bare1 : bare0, (u32)(j >> 1) & 1u);
                __syncwarp();
                gather(j + 2);
                fetch_keys(j + 3);
            }
            wg_wait<0>();
#pragma unroll
            for (int mb = 0; mb < 8; mb++) wg_fence_acc<16>(o[mb]);
        }
        if (ER) {
            // released and gathered inside the value product above
        } else if (DEC) {
            const u32 bare = (j & 1) ? bare1 : bare0;
            if (wg == 0) {
                __syncwarp();
                if (lane == 0) mb_arrive(bare);
            } else {
                sw_wg_bar(1);  // warpgroup 1 is done with buffer j & 1
                if (j + 2 < n_tiles) {
                    mb_wait(bare, (u32)(j >> 1) & 1u);  // and so is warpgroup 0
                    __syncwarp();
                    gather(j + 2);
                    fetch_keys(j + 3);
                }
            }
        } else {
            __syncthreads();  // every warp is done with buffer j & 1
            if (j + 2 < n_tiles) {
                gather(j + 2);
                fetch_keys(j + 3);
            }
        }
    }

    // Row sums per head: this thread's partial sums, over the 8 lanes of a column, over the 4 warps.
#pragma unroll
    for (int x = 0; x < 8; x++) {
        l_run[x] += __shfl_xor_sync(0xffffffffu, l_run[x], 4);
        l_run[x] += __shfl_xor_sync(0xffffffffu, l_run[x], 8);
        l_run[x] += __shfl_xor_sync(0xffffffffu, l_run[x], 16);
    }
    float* red_wg = red + wg * 128;
    if (g == 0) {
#pragma unroll
        for (int i = 0; i < 4; i++)
            *reinterpret_cast<float2*>(red_wg + w4 * 32 + 8 * i + 2 * t) = make_float2(l_run[2 * i], l_run[2 * i + 1]);
    }
    sw_wg_bar(wg);
    float inv[8];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 sum = make_float2(0.0f, 0.0f);
#pragma unroll
        for (int w = 0; w < 4; w++) {
            const float2 v = *reinterpret_cast<const float2*>(red_wg + w * 32 + 8 * i + 2 * t);
            sum.x += v.x;
            sum.y += v.y;
        }
        inv[2 * i] = 1.0f / sum.x;
        inv[2 * i + 1] = 1.0f / sum.y;
    }
    // Stage the normalised 64 x 512 output (heads as rows) in buffer 0, then write it out in 16-byte pieces.
    if (DEC) __syncthreads();  // both warpgroups are done with the tiles
    u8* stage = wsmem + SW_Q_BYTES;
#pragma unroll
    for (int mb = 0; mb < 8; mb++)
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const int head = 32 * wg + 8 * i + 2 * t + c;
                const int dim = 64 * mb + 16 * w4 + g;
                u16* rowp = reinterpret_cast<u16*>(stage + head * SW_OUT_STRIDE);
                rowp[dim] = f32_to_bf16_rne(o[mb][4 * i + c] * inv[2 * i + c]);
                rowp[dim + 8] = f32_to_bf16_rne(o[mb][4 * i + 2 + c] * inv[2 * i + c]);
            }
    __syncthreads();
    for (int x = tid; x < SM_BM * (SM_DV / 8); x += SM_THREADS) {
        const int r = x >> 6, c = x & 63;
        *reinterpret_cast<uint4*>(out + (row0 + r) * SM_DV + c * 8) =
            *reinterpret_cast<const uint4*>(stage + r * SW_OUT_STRIDE + c * 16);
    }
#else
    __trap();  // built for a target without wgmma: the engine never launches these entries there
#endif
}

// D[64 x 64] += A[64 x 16] B[16 x 64], as sw_mma_rs with N = 64 (32 accumulators a thread: columns
// 8i + 2t + c at d[4i + c] (row g) and d[4i + 2 + c] (row g + 8)).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
template <int TRANS>
__device__ __forceinline__ void sw_mma_rs64(float* d, const u32* a, u64 db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1), "n"(TRANS));
}
#endif

// sparse_mla_bf16_wgmma_split: the value product split over the value dims between the warpgroups.
// S^T and the softmax stay as in sparse_mla_wgmma_body (warpgroup w: heads 32w..32w+31, all 576 dims),
// but warpgroup w accumulates O^T[dims 256w..256w+255, all 64 heads] (4 x wgmma m64n64k16 per 16 keys,
// B = P^T of both warpgroups), so each warpgroup loads half of the tile's V^T by ldmatrix.trans (the CTA
// reads V^T once per tile instead of twice) and the value wgmma have N = 64. A thread then holds the
// O^T columns of heads 8i + 2t + c for i = 0..7: its own eight S heads (i = 4w..4w+3) and the matching
// eight of the other warpgroup, whose running maxima it tracks as well, from the per-warp tile maxima
// of both warpgroups in `red`. Two CTA barriers a tile:
//   (1) after the per-warp maxima of tile j are in `red`: every warp has also finished the value product
//       of tile j-1 (so P^T may be overwritten) and read `red` of tile j-1;
//   (2) after P^T of tile j is written (and fenced for the async proxy): the value product may start.
// Tile buffers are released as in the early variant: every warp arrives on the buffer's empty barrier
// (8 arrivals) once it has issued the wgmma on its last ldmatrix fragments of the tile; warpgroup 1
// (lanes < 16 of each warp, 16 rows a warp) then waits for the phase and gathers tile j+2 while its last
// value groups complete.
// Same shared memory as sparse_mla_wgmma_body (SW_SMEM); all rows by bulk copies.
//
// SPLIT_S (sparse_mla_bf16_wgmma_split2) splits S^T as well, over the 576 dims: warpgroup w computes
// partial S^T[64 keys, all 64 heads] over dims 288w..288w+287 (18 k-steps of wgmma m64n64k16, so each
// warpgroup loads half of the K tile by ldmatrix), and the partial sums the other warpgroup needs (its 32
// heads) cross through shared memory, 8 KB each way: warpgroup 0's go to the RoPE dims of the tile's own
// rows (dims 512..575 of key r, 128 bytes = 32 fp32 heads; only warpgroup 1's S reads them, and nothing
// reads them after the S^T product), warpgroup 1's to the P^T area (64 keys x 32 heads fp32). Two more CTA
// barriers a tile: (A) after both S^T products (the RoPE dims and P^T are free: P^T because every warp
// has also finished the value product of tile j-1), (B) after the partial sums are written. The P^T area
// is read back before barrier (1) and only written after it. The writes into the tile buffer are fenced
// for the async proxy before it is released (the next gather into it is a bulk copy).
template <bool SPLIT_S>
__device__ __forceinline__ void sparse_mla_wgmma_split_body(const u16* __restrict__ Q, const u16* __restrict__ cache,
                                                            const int* __restrict__ idx, u16* __restrict__ out,
                                                            int H, int L, int q_len, int k, float scale_log2) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) u8 wsmem[];
    const u32 aQ = smem_u32(wsmem);
    const u32 aK0 = aQ + SW_Q_BYTES, aK1 = aK0 + SW_KBUF, aP = aK1 + SW_KBUF;
    float* red = reinterpret_cast<float*>(wsmem + SW_Q_BYTES + 2 * SW_KBUF + SW_P_BYTES);
    const u32 bar0 = aP + SW_P_BYTES + SW_RED_BYTES, bar1 = bar0 + 8, bare0 = bar0 + 16, bare1 = bar0 + 24;
    u8* sP = wsmem + SW_Q_BYTES + 2 * SW_KBUF;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wg = warp >> 2, w4 = warp & 3;
    const int hb = blockIdx.x, qi = blockIdx.y, b = blockIdx.z;
    const int p = L - q_len + qi;
    const int n_valid = min(k, p + 1);
    const int n_tiles = (n_valid + SM_BN - 1) / SM_BN;
    const size_t qrow = (size_t)b * q_len + qi;
    const size_t row0 = qrow * H + (size_t)hb * SM_BM;
    const int* idx_row = idx + qrow * (size_t)k;
    const u16* cache_b = cache + (size_t)b * L * SM_D;

    // Gather roles: warp w of warpgroup 1, lane < 16, copies row 16 (w - 4) + lane; thread 128 posts the
    // expected bytes.
    const int brow = (warp - 4) * 16 + lane;
    const bool bulk_lane = wg == 1 && lane < 16;
    int key_b = 0;
    auto fetch_keys = [&](int j) {
        if (bulk_lane) key_b = sw_key(idx_row, j * SM_BN + brow, n_valid, L);
    };
    auto gather = [&](int j) {  // tile j (keys fetched) into buffer j & 1
        const u32 dst = (j & 1) ? aK1 : aK0, bar = (j & 1) ? bar1 : bar0;
        // A copy may land before the expect-tx: the phase still waits for this arrival.
        if (tid == 128) mb_expect_tx(bar, SM_BN * SW_ROWB);
        if (bulk_lane) bulk_g2s(dst + sw_row(brow), cache_b + (size_t)key_b * SM_D, SW_ROWB, bar);
    };

    if (tid == 0) {
        mb_init(bar0, 1);
        mb_init(bar1, 1);
        mb_init(bare0, 8);
        mb_init(bare1, 8);
        mb_fence_init();
    }
    __syncthreads();
    {
        const int r = warp * 8 + (lane & 7);
        const u16* qsrc = Q + (row0 + r) * SM_D;
#pragma unroll
        for (int m = 0; m < SM_CH / 4; m++) {
            const int c = m * 4 + (lane >> 3);
            cp_async16(aQ + sw_off(r, c), qsrc + c * 8, 16u);
        }
        cp_async_commit();
    }
    fetch_keys(0);
    gather(0);
    if (n_tiles > 1) {
        fetch_keys(1);
        gather(1);
    }
    fetch_keys(2);
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();  // Q in place for the tensor cores

    const float NI = NEG_INF;
    float o[4][32];  // O^T: [value-dim block mb of this warpgroup's 256][m64n64 fragment]
#pragma unroll
    for (int mb = 0; mb < 4; mb++)
#pragma unroll
        for (int x = 0; x < 32; x++) o[mb][x] = 0.0f;
    // Running maxima of the 16 O^T heads 8i + 2t + c at [2i + c] (i = 0..7; this warpgroup's S heads are
    // i = 4wg..4wg+3), row sums of the eight S heads 32wg + 8i + 2t + c at [2i + c] (i = 0..3).
    float m_run[16], l_run[8];
#pragma unroll
    for (int x = 0; x < 16; x++) m_run[x] = NI;
#pragma unroll
    for (int x = 0; x < 8; x++) l_run[x] = 0.0f;
    const u64 dq = wg_desc(aQ + wg * 512, 1024, 128);  // Q rows 32wg.., K-major
    const u64 dq64 = wg_desc(aQ, 1024, 128);            // Q, all 64 rows (SPLIT_S)
    const u64 dp = wg_desc(aP, 128, 1024);              // P^T, all 64 heads, MN-major
    const u32 a_off = sw_row(16 * w4 + (lane & 15)) + (lane >> 4) * 16;
    // V^T: keys (lane & 7) + 8 (lane >> 4), dims 256wg + 16w4 + 8 ((lane >> 3) & 1) (+ 64 mb).
    const u32 v_off = sw_row((lane & 7) + ((lane >> 4) << 3)) + (256 * wg + 16 * w4 + ((lane >> 3) & 1) * 8) * 2;
    const int kr0 = 16 * w4 + g;

    for (int j = 0; j < n_tiles; j++) {
        const u32 kb = (j & 1) ? aK1 : aK0, bare = (j & 1) ? bare1 : bare0;
        mb_wait((j & 1) ? bar1 : bar0, (u32)(j >> 1) & 1u);
        __syncwarp();

        // S^T = K Q^T for the tile's 64 keys and this warpgroup's 32 heads (as sparse_mla_wgmma_body).
        float s[16];
#pragma unroll
        for (int x = 0; x < 16; x++) s[x] = 0.0f;
        if (SPLIT_S) {
            // Partial S^T over dims 288wg.. for all 64 heads (heads 8i + 2t + c at [4i + c], [4i + 2 + c]).
            float sp[32];
#pragma unroll
            for (int x = 0; x < 32; x++) sp[x] = 0.0f;
            u32 fa[2][3][4];
            const u32 ka = kb + a_off + wg * (SM_D / 2) * 2;
            const int ks0 = wg * (SM_D / 32);  // first k-step (16 dims) of this warpgroup
#pragma unroll
            for (int q = 0; q < 3; q++) ldsm_x4(ka + q * 32, fa[0][q][0], fa[0][q][1], fa[0][q][2], fa[0][q][3]);
            wg_fence_acc<32>(sp);
#pragma unroll
            for (int gi = 0; gi < SM_D / 96; gi++) {  // 6 groups of 3 k-steps
                wg_fence();
#pragma unroll
                for (int q = 0; q < 3; q++)
                    sw_mma_rs64<0>(sp, fa[gi & 1][q], dq64 + (u64)((ks0 + gi * 3 + q) * 128));
                wg_commit();
                if (gi + 1 < SM_D / 96) {
                    if (gi >= 1) wg_wait<1>();
#pragma unroll
                    for (int q = 0; q < 3; q++)
                        ldsm_x4(ka + ((gi + 1) * 3 + q) * 32, fa[(gi + 1) & 1][q][0], fa[(gi + 1) & 1][q][1],
                                fa[(gi + 1) & 1][q][2], fa[(gi + 1) & 1][q][3]);
                }
            }
            wg_wait<0>();
            wg_fence_acc<32>(sp);
            __syncthreads();  // (A): both S^T products done (RoPE dims free), every warp done with P^T of j-1
            // The other warpgroup's 32 heads: warpgroup 0 sends heads 32..63 (i = 4..7) into the RoPE dims
            // of rows kr0, kr0 + 8, warpgroup 1 heads 0..31 (i = 0..3) into P^T as fp32 [key][32 heads].
            const u32 xa0 = kb + sw_row(kr0) + SM_DV * 2, xa1 = kb + sw_row(kr0 + 8) + SM_DV * 2;
            const u32 xb0 = aP + kr0 * 128, xb1 = aP + (kr0 + 8) * 128;
            const u32 x0 = wg ? xb0 : xa0, x1 = wg ? xb1 : xa1;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                // The other warpgroup's head block: i (from warpgroup 1) or 4 + i (from warpgroup 0);
                // selected value by value, so sp stays in registers.
                float v[4];
#pragma unroll
                for (int x = 0; x < 4; x++) v[x] = wg ? sp[4 * i + x] : sp[4 * (4 + i) + x];
                const u32 off = (u32)(8 * i + 2 * t) * 4;
                asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(x0 + off), "f"(v[0]), "f"(v[1]) : "memory");
                asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(x1 + off), "f"(v[2]), "f"(v[3]) : "memory");
            }
            fence_proxy_async();  // the RoPE dims are overwritten by the next gather's bulk copies
            __syncthreads();      // (B): both halves of the partial sums are in
            // Own heads: this warpgroup's partial plus the other's (warpgroup 0 reads P^T, 1 the RoPE dims).
            const u32 y0 = wg ? xa0 : xb0, y1 = wg ? xa1 : xb1;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const u32 off = (u32)(8 * i + 2 * t) * 4;
                float a[4];
                asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(a[0]), "=f"(a[1]) : "r"(y0 + off) : "memory");
                asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(a[2]), "=f"(a[3]) : "r"(y1 + off) : "memory");
                // This warpgroup's head block: 4 + i (warpgroup 1) or i (warpgroup 0).
#pragma unroll
                for (int x = 0; x < 4; x++) s[4 * i + x] = (wg ? sp[4 * (4 + i) + x] : sp[4 * i + x]) + a[x];
            }
        } else {
            u32 fa[2][4][4];
            const u32 ka = kb + a_off;
#pragma unroll
            for (int q = 0; q < 4; q++) ldsm_x4(ka + q * 32, fa[0][q][0], fa[0][q][1], fa[0][q][2], fa[0][q][3]);
            wg_fence_acc<16>(s);
#pragma unroll
            for (int gi = 0; gi < SM_D / 64; gi++) {
                wg_fence();
#pragma unroll
                for (int q = 0; q < 4; q++) sw_mma_rs<0>(s, fa[gi & 1][q], dq + (u64)((gi * 4 + q) * 128));
                wg_commit();
                if (gi + 1 < SM_D / 64) {
                    if (gi >= 1) wg_wait<1>();
#pragma unroll
                    for (int q = 0; q < 4; q++)
                        ldsm_x4(ka + ((gi + 1) * 4 + q) * 32, fa[(gi + 1) & 1][q][0], fa[(gi + 1) & 1][q][1],
                                fa[(gi + 1) & 1][q][2], fa[(gi + 1) & 1][q][3]);
                }
            }
            wg_wait<0>();
            wg_fence_acc<16>(s);
        }
        if (j * SM_BN + SM_BN > n_valid) {
            const int e0 = j * SM_BN + kr0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                if (e0 >= n_valid) s[4 * i] = s[4 * i + 1] = NI;
                if (e0 + 8 >= n_valid) s[4 * i + 2] = s[4 * i + 3] = NI;
            }
        }
        // Per-warp maxima of this warpgroup's heads: this thread's two keys, the 8 lanes of a column.
        {
            float cm[8];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int c = 0; c < 2; c++) cm[2 * i + c] = fmaxf(s[4 * i + c], s[4 * i + 2 + c]);
#pragma unroll
            for (int x = 0; x < 8; x++) {
                cm[x] = fmaxf(cm[x], __shfl_xor_sync(0xffffffffu, cm[x], 4));
                cm[x] = fmaxf(cm[x], __shfl_xor_sync(0xffffffffu, cm[x], 8));
                cm[x] = fmaxf(cm[x], __shfl_xor_sync(0xffffffffu, cm[x], 16));
            }
            if (g == 0) {
#pragma unroll
                for (int i = 0; i < 4; i++)
                    *reinterpret_cast<float2*>(red + wg * 128 + w4 * 32 + 8 * i + 2 * t) =
                        make_float2(cm[2 * i], cm[2 * i + 1]);
            }
        }
        __syncthreads();  // (1): maxima of both warpgroups in red; every warp done with P^T of tile j-1
        // Tile maxima of the 16 O^T heads (over the 4 warps of the warpgroup that owns them), new running
        // maxima and rescale factors; heads 8i + 2t + c belong to warpgroup i >> 2.
        float alpha[16];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const float* rw = red + (i >> 2) * 128 + 8 * (i & 3) + 2 * t;
            float2 mx = *reinterpret_cast<const float2*>(rw);
#pragma unroll
            for (int w = 1; w < 4; w++) {
                const float2 v = *reinterpret_cast<const float2*>(rw + w * 32);
                mx.x = fmaxf(mx.x, v.x);
                mx.y = fmaxf(mx.y, v.y);
            }
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const int x = 2 * i + c;
                const float mn = fmaxf(m_run[x], c ? mx.y : mx.x);  // finite: every tile has a valid key
                alpha[x] = fast_exp2((m_run[x] - mn) * scale_log2);
                m_run[x] = mn;
            }
        }
        // P = exp2(S c - m c) as bf16 into P^T for this warpgroup's heads, running sums per thread.
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float pv[2][2];
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const int x = 2 * i + c;
                const float mn = wg ? m_run[8 + x] : m_run[x];
                const float al = wg ? alpha[8 + x] : alpha[x];
                const float ms = mn * scale_log2;
                pv[0][c] = fast_exp2(fmaf(s[4 * i + c], scale_log2, -ms));
                pv[1][c] = fast_exp2(fmaf(s[4 * i + 2 + c], scale_log2, -ms));
                l_run[x] = l_run[x] * al + (pv[0][c] + pv[1][c]);
            }
            const int hc = 4 * wg + i;
            *reinterpret_cast<u32*>(sP + sw_off(kr0, hc) + 4 * t) = pack_bf16x2(pv[0][0], pv[0][1]);
            *reinterpret_cast<u32*>(sP + sw_off(kr0 + 8, hc) + 4 * t) = pack_bf16x2(pv[1][0], pv[1][1]);
        }
        bool rescale = false;
#pragma unroll
        for (int x = 0; x < 16; x++) rescale |= alpha[x] != 1.0f;
        if (rescale) {
#pragma unroll
            for (int mb = 0; mb < 4; mb++)
#pragma unroll
                for (int i = 0; i < 8; i++)
#pragma unroll
                    for (int c = 0; c < 2; c++) {
                        o[mb][4 * i + c] *= alpha[2 * i + c];
                        o[mb][4 * i + 2 + c] *= alpha[2 * i + c];
                    }
        }
        fence_proxy_async();
        __syncthreads();  // (2): P^T of all 64 heads complete and visible to the tensor cores

        // O^T += V^T P^T: value-dim block mb (dims 256wg + 64mb..) x 64 heads, 4 k-steps of 16 keys.
        {
            u32 fb[2][4][4];
            const u32 vb = kb + v_off;
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
                ldsm_x4_t(vb + sw_row(16 * kk), fb[0][kk][0], fb[0][kk][1], fb[0][kk][2], fb[0][kk][3]);
#pragma unroll
            for (int mb = 0; mb < 4; mb++) wg_fence_acc<32>(o[mb]);
#pragma unroll
            for (int mb = 0; mb < 4; mb++) {
                wg_fence();
#pragma unroll
                for (int kk = 0; kk < 4; kk++) sw_mma_rs64<1>(o[mb], fb[mb & 1][kk], dp + (u64)(kk * 16));
                wg_commit();
                if (mb + 1 < 4) {
                    if (mb >= 1) wg_wait<1>();
#pragma unroll
                    for (int kk = 0; kk < 4; kk++)
                        ldsm_x4_t(vb + sw_row(16 * kk) + (mb + 1) * 128, fb[(mb + 1) & 1][kk][0],
                                  fb[(mb + 1) & 1][kk][1], fb[(mb + 1) & 1][kk][2], fb[(mb + 1) & 1][kk][3]);
                }
            }
            // The fragments of value block 3 were this warp's last read of the tile buffer, and the wgmma
            // just issued on them has waited for those loads; the groups still in flight read registers
            // and P^T only. Release the buffer.
            __syncwarp();
            if (lane == 0) mb_arrive(bare);
            if (wg == 1 && j + 2 < n_tiles) {
                // All 8 warps have read the last of buffer j & 1 (empty phase j >> 1): gather tile j+2
                // into it while the groups of value blocks 2 and 3 complete (their accumulators and A
                // fragments are not touched before the wg_wait below).
                mb_wait(bare, (u32)(j >> 1) & 1u);
                __syncwarp();
                gather(j + 2);
                fetch_keys(j + 3);
            }
            wg_wait<0>();
#pragma unroll
            for (int mb = 0; mb < 4; mb++) wg_fence_acc<32>(o[mb]);
        }
    }

    // Row sums of this warpgroup's heads: this thread's partial sums, over the 8 lanes of a column; the
    // per-warp sums of both warpgroups go to red, and each thread sums the 4 warps of its 16 O^T heads.
#pragma unroll
    for (int x = 0; x < 8; x++) {
        l_run[x] += __shfl_xor_sync(0xffffffffu, l_run[x], 4);
        l_run[x] += __shfl_xor_sync(0xffffffffu, l_run[x], 8);
        l_run[x] += __shfl_xor_sync(0xffffffffu, l_run[x], 16);
    }
    if (g == 0) {
#pragma unroll
        for (int i = 0; i < 4; i++)
            *reinterpret_cast<float2*>(red + wg * 128 + w4 * 32 + 8 * i + 2 * t) =
                make_float2(l_run[2 * i], l_run[2 * i + 1]);
    }
    __syncthreads();  // sums in red; both warpgroups done with the tiles (buffer 0 free for the output)
    float inv[16];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const float* rw = red + (i >> 2) * 128 + 8 * (i & 3) + 2 * t;
        float2 sum = make_float2(0.0f, 0.0f);
#pragma unroll
        for (int w = 0; w < 4; w++) {
            const float2 v = *reinterpret_cast<const float2*>(rw + w * 32);
            sum.x += v.x;
            sum.y += v.y;
        }
        inv[2 * i] = 1.0f / sum.x;
        inv[2 * i + 1] = 1.0f / sum.y;
    }
    // Stage the normalised 64 x 512 output (heads as rows) in buffer 0, then write it out in 16-byte pieces.
    u8* stage = wsmem + SW_Q_BYTES;
#pragma unroll
    for (int mb = 0; mb < 4; mb++)
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const int head = 8 * i + 2 * t + c;
                const int dim = 256 * wg + 64 * mb + 16 * w4 + g;
                u16* rowp = reinterpret_cast<u16*>(stage + head * SW_OUT_STRIDE);
                rowp[dim] = f32_to_bf16_rne(o[mb][4 * i + c] * inv[2 * i + c]);
                rowp[dim + 8] = f32_to_bf16_rne(o[mb][4 * i + 2 + c] * inv[2 * i + c]);
            }
    __syncthreads();
    for (int x = tid; x < SM_BM * (SM_DV / 8); x += SM_THREADS) {
        const int r = x >> 6, c = x & 63;
        *reinterpret_cast<uint4*>(out + (row0 + r) * SM_DV + c * 8) =
            *reinterpret_cast<const uint4*>(stage + r * SW_OUT_STRIDE + c * 16);
    }
#else
    __trap();  // built for a target without wgmma: the engine never launches these entries there
#endif
}

extern "C" __global__ void __launch_bounds__(SM_THREADS, 1)
    sparse_mla_bf16_wgmma(const u16* __restrict__ Q, const u16* __restrict__ cache, const int* __restrict__ idx,
                          u16* __restrict__ out, int H, int L, int q_len, int k, float scale_log2) {
    sparse_mla_wgmma_body<SM_BN>(Q, cache, idx, out, H, L, q_len, k, scale_log2);
}

// As sparse_mla_bf16_wgmma, each warp releasing a tile buffer once its last ldmatrix fragments of the tile
// are in a wgmma instead of after its last wgmma completes, so the gather of tile j+2 starts before the
// value product of tile j completes.
extern "C" __global__ void __launch_bounds__(SM_THREADS, 1)
    sparse_mla_bf16_wgmma_early(const u16* __restrict__ Q, const u16* __restrict__ cache, const int* __restrict__ idx,
                                u16* __restrict__ out, int H, int L, int q_len, int k, float scale_log2) {
    sparse_mla_wgmma_body<SM_BN, true>(Q, cache, idx, out, H, L, q_len, k, scale_log2);
}

// The value product split over the value dims between the warpgroups (see sparse_mla_wgmma_split_body).
extern "C" __global__ void __launch_bounds__(SM_THREADS, 1)
    sparse_mla_bf16_wgmma_split(const u16* __restrict__ Q, const u16* __restrict__ cache, const int* __restrict__ idx,
                                u16* __restrict__ out, int H, int L, int q_len, int k, float scale_log2) {
    sparse_mla_wgmma_split_body<false>(Q, cache, idx, out, H, L, q_len, k, scale_log2);
}

// As sparse_mla_bf16_wgmma_split, S^T split over the 576 dims between the warpgroups as well.
extern "C" __global__ void __launch_bounds__(SM_THREADS, 1)
    sparse_mla_bf16_wgmma_split2(const u16* __restrict__ Q, const u16* __restrict__ cache, const int* __restrict__ idx,
                                 u16* __restrict__ out, int H, int L, int q_len, int k, float scale_log2) {
    sparse_mla_wgmma_split_body<true>(Q, cache, idx, out, H, L, q_len, k, scale_log2);
}

// As sparse_mla_bf16_wgmma, the tiles gathered by cp.async instead of bulk copies.
extern "C" __global__ void __launch_bounds__(SM_THREADS, 1)
    sparse_mla_bf16_wgmma_cpa(const u16* __restrict__ Q, const u16* __restrict__ cache, const int* __restrict__ idx,
                              u16* __restrict__ out, int H, int L, int q_len, int k, float scale_log2) {
    sparse_mla_wgmma_body<0>(Q, cache, idx, out, H, L, q_len, k, scale_log2);
}
