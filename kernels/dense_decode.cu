// dense_decode.cu: split-K flash decoding for MLA in MQA mode (dense decode).
//
// Geometry: 576-dim latent per key (512 latent + 64 RoPE), value = its first 512 dims, every
// query head attends to the same latent (MQA). bf16 queries; the cache is bf16 (1152 bytes a
// token) or FP8 (656 bytes a token: 512 e4m3 + 4 fp32 block scales + 64 bf16 RoPE dims,
// dequantised to bf16 in shared memory). fp32 accumulation, online softmax, mma.sync.
//
// Layouts (logical order of ctxcost-core, made on the device):
//   Q      [B, q_len, H, 576]  bf16
//   cache  [B, L, 576] bf16  or  [B, L, 656] bytes (FP8)
//   out    [B, q_len, H, 512]  bf16
//
// The q_len*H query rows of one sequence are cut into blocks of 64 rows (H is a multiple of 64,
// so one block belongs to one query token and shares its causal limit), and the keys into
// `n_splits` ranges of whole 64-key tiles. One CTA = one (row block, key split, sequence);
// CTAs of the same split and sequence are adjacent in the grid so they read the same key tiles
// out of L2. Eight warps: warp (mi, ni) computes S = Q K^T for rows 16mi..16mi+15 over keys
// 32ni..32ni+31 of the tile, the pair exchanges row maxima and P through shared memory, then
// the same warp accumulates O for its 16 rows over value dims 256ni..256ni+255 (128 fp32
// registers a thread). Shared-memory rows are XOR-swizzled in 16-byte chunks (chunk ^ row&7)
// so ldmatrix is conflict free without padding.
//
// With one split the kernel writes the normalised output; otherwise it writes unnormalised
// partial outputs and (max, sum) per row, and dense_decode_combine merges the splits.
//
// On Hopper (compiled for sm_90a) the bf16 cache has wgmma variants with the same grid, outputs
// and combine (section "wgmma (sm_90a), bf16 cache" below); the engine runs
// dense_decode_bf16_wgmma_tma there.

#define DC_BM 64
#define DC_BN 64
#define DC_D 576
#define DC_DV 512
#define DC_CHUNKS 72      // 16-byte chunks in a 576-dim bf16 row
#define DC_FP8_ROW 656    // bytes of an FP8 cache row
#define DC_THREADS 256

#define DC_TILE_ELEMS (DC_BN * DC_D)  // one bf16 tile (64 x 576)
#define DC_P_ELEMS (DC_BM * DC_BN)
// Dynamic shared memory of dense_decode_body (bytes; the engine sizes its launches with these):
// sQ | sK0 | sK1 (bf16) or FP8 staging | sP | red_max [2][64] f32 | red_sum [2][64] f32
#define DC_SMEM_BF16 ((DC_BM * DC_D + 2 * DC_TILE_ELEMS + DC_P_ELEMS) * 2 + 4 * DC_BM * 4)
#define DC_SMEM_FP8 ((DC_BM * DC_D + DC_TILE_ELEMS + DC_P_ELEMS) * 2 + DC_BN * DC_FP8_ROW + 4 * DC_BM * 4)

// Element offset of (row, 16-byte chunk) in a swizzled tile with `chunks` chunks per row.
__device__ __forceinline__ u32 dc_swz(int row, int chunk, int chunks) {
    return (u32)(row * chunks + ((chunk & ~7) | ((chunk ^ row) & 7))) * 8;
}

// One key tile (64 rows starting at `first_key`, whose row 0 is at `tile`) into shared memory;
// rows at or past `key_end` are zero-filled. bf16: swizzled straight into a compute tile.
// FP8: a raw staging copy (64 x 656 bytes, contiguous in global and shared memory).
template <bool FP8>
__device__ __forceinline__ void dc_load_tile(u32 dst, const u8* tile, int first_key, int key_end, int tid) {
    if (!FP8) {
        const u16* src = reinterpret_cast<const u16*>(tile);
        for (int c = tid; c < DC_BN * DC_CHUNKS; c += DC_THREADS) {
            int r = c / DC_CHUNKS, ch = c - r * DC_CHUNKS;
            bool ok = first_key + r < key_end;
            cp_async16(dst + dc_swz(r, ch, DC_CHUNKS) * 2, ok ? src + (size_t)r * DC_D + ch * 8 : src, ok ? 16u : 0u);
        }
    } else {
        const int chunks = DC_FP8_ROW / 16;
        for (int c = tid; c < DC_BN * chunks; c += DC_THREADS) {
            bool ok = first_key + c / chunks < key_end;
            cp_async16(dst + (u32)c * 16, ok ? tile + (size_t)c * 16 : tile, ok ? 16u : 0u);
        }
    }
}

// FP8 staging tile -> bf16 swizzled tile: value = bf16(e4m3 * block scale); RoPE dims copied.
// DC_FP8_HWCVT (sm_89+) decodes the codes with the hardware e4m3x2 conversion instead of
// integer bit placement: fewer instructions for the same exact values.
__device__ __forceinline__ void dc_dequant_tile(u16* sK, const u8* stage, int tid) {
    for (int c = tid; c < DC_BN * DC_CHUNKS; c += DC_THREADS) {
        int r = c / DC_CHUNKS, ch = c - r * DC_CHUNKS;
        const u8* row = stage + r * DC_FP8_ROW;
        uint4 out;
        if (ch < 64) {
            const uint2 codes = *reinterpret_cast<const uint2*>(row + ch * 8);
            const float sc = reinterpret_cast<const float*>(row + 512)[ch >> 4];
            u32 w[4];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                u32 word = k < 2 ? codes.x : codes.y;
                u32 sh = (k & 1) * 16;
#ifdef DC_FP8_HWCVT
                // Hardware e4m3x2 -> f16x2 (exact; low byte -> low half), then f32.
                u32 h2;
                float lo, hi;
                asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"((u16)((word >> sh) & 0xFFFFu)));
                asm("{ .reg .f16 a, b; mov.b32 {a, b}, %2; cvt.f32.f16 %0, a; cvt.f32.f16 %1, b; }"
                    : "=f"(lo), "=f"(hi) : "r"(h2));
                w[k] = pack_bf16x2(lo * sc, hi * sc);
#else
                float lo = e4m3_to_f32((word >> sh) & 0xFFu) * sc;
                float hi = e4m3_to_f32((word >> (sh + 8)) & 0xFFu) * sc;
                w[k] = pack_bf16x2(lo, hi);
#endif
            }
            out = make_uint4(w[0], w[1], w[2], w[3]);
        } else {
            out = *reinterpret_cast<const uint4*>(row + 528 + (ch - 64) * 16);
        }
        *reinterpret_cast<uint4*>(sK + dc_swz(r, ch, DC_CHUNKS)) = out;
    }
}

// The partial of a split with no visible key (only possible when q_len > 1): O = 0, m = -inf, l = 0,
// so the combine kernel gives it no weight.
__device__ __forceinline__ void dc_write_empty_split(float* __restrict__ ws_o, float2* __restrict__ ws_ml, size_t row0,
                                                     int n_splits, int split, int tid) {
    for (int i = tid; i < DC_BM * DC_DV; i += DC_THREADS)
        ws_o[((row0 + i / DC_DV) * n_splits + split) * DC_DV + (i % DC_DV)] = 0.0f;
    if (tid < DC_BM) ws_ml[(row0 + tid) * n_splits + split] = make_float2(NEG_INF, 0.0f);
}

template <bool FP8>
__device__ __forceinline__ void dense_decode_body(const u16* __restrict__ Q, const u8* __restrict__ cache,
                                                  u16* __restrict__ out, float* __restrict__ ws_o,
                                                  float2* __restrict__ ws_ml, int H, int L, int q_len,
                                                  int n_splits, int tiles_per_split, float scale_log2) {
    extern __shared__ __align__(16) u16 smem[];
    // Layout: sQ | sK (bf16 tile; two for bf16 caches) | [FP8 staging] | sP | red_max | red_sum
    u16* sQ = smem;
    u16* sK0 = sQ + DC_BM * DC_D;
    u16* sK1 = sK0 + DC_TILE_ELEMS;  // bf16 only
    u8* stage = reinterpret_cast<u8*>(sK0 + DC_TILE_ELEMS);  // FP8 only (aliases sK1's space)
    u16* sP = FP8 ? reinterpret_cast<u16*>(stage + DC_BN * DC_FP8_ROW) : sK1 + DC_TILE_ELEMS;
    float* red_max = reinterpret_cast<float*>(sP + DC_P_ELEMS);  // [2][64]
    float* red_sum = red_max + 2 * DC_BM;                          // [2][64]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int mi = warp & 3, ni = warp >> 2;
    const int rb = blockIdx.x, split = blockIdx.y, b = blockIdx.z;
    const int rows_per_seq = q_len * H;
    const int qi = (rb * DC_BM) / H;
    const int p = L - q_len + qi;  // last key visible to this row block
    const int key_begin = split * tiles_per_split * DC_BN;
    const int key_end = min(key_begin + tiles_per_split * DC_BN, p + 1);
    const size_t row0 = (size_t)b * rows_per_seq + (size_t)rb * DC_BM;  // global row of local row 0

    if (key_begin >= key_end) {
        dc_write_empty_split(ws_o, ws_ml, row0, n_splits, split, tid);
        return;
    }
    const int n_tiles = (key_end - key_begin + DC_BN - 1) / DC_BN;
    const size_t cache_row_bytes = FP8 ? DC_FP8_ROW : DC_D * 2;
    const u8* cache_b = cache + (size_t)b * L * cache_row_bytes;

    const u32 aQ = smem_u32(sQ), aK0 = smem_u32(sK0), aK1 = smem_u32(sK1), aStage = smem_u32(stage),
              aP = smem_u32(sP);

    // Q rows (64 x 576), swizzled.
    {
        const u16* qsrc = Q + row0 * DC_D;
        for (int c = tid; c < DC_BM * DC_CHUNKS; c += DC_THREADS) {
            int r = c / DC_CHUNKS, ch = c - r * DC_CHUNKS;
            cp_async16(aQ + dc_swz(r, ch, DC_CHUNKS) * 2, qsrc + (size_t)r * DC_D + ch * 8, 16u);
        }
        cp_async_commit();
    }
    dc_load_tile<FP8>(FP8 ? aStage : aK0, cache_b + (size_t)key_begin * cache_row_bytes, key_begin, key_end, tid);
    cp_async_commit();

    float o[DC_DV / 2 / 8][4];
#pragma unroll
    for (int i = 0; i < DC_DV / 2 / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
    const int lr0 = mi * 16 + g, lr1 = lr0 + 8;  // this thread's local rows

    for (int j = 0; j < n_tiles; j++) {
        const int tile_key = key_begin + j * DC_BN;
        u32 aK;
        if (FP8) {
            cp_async_wait<0>();
            __syncthreads();  // staging holds tile j; every warp is done with sK0
            dc_dequant_tile(sK0, stage, tid);
            __syncthreads();  // sK0 ready, staging free
            if (j + 1 < n_tiles) {
                dc_load_tile<FP8>(aStage, cache_b + (size_t)(tile_key + DC_BN) * cache_row_bytes, tile_key + DC_BN,
                                  key_end, tid);
                cp_async_commit();
            }
            aK = aK0;
        } else {
            if (j + 1 < n_tiles) {
                dc_load_tile<FP8>((j & 1) ? aK0 : aK1, cache_b + (size_t)(tile_key + DC_BN) * cache_row_bytes,
                                  tile_key + DC_BN, key_end, tid);
                cp_async_commit();
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
            __syncthreads();  // tile j is in
            aK = (j & 1) ? aK1 : aK0;
        }

        // S = Q K^T for rows 16mi.., keys 32ni.. of the tile.
        float s[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
        {
            const int qrow = mi * 16 + (lane & 15);
            const int krow0 = ni * 32 + (lane & 7) + ((lane >> 4) << 3);
            const int khalf = (lane >> 3) & 1;
#pragma unroll 4
            for (int ks = 0; ks < DC_D / 16; ks++) {
                u32 a0, a1, a2, a3;
                ldsm_x4(aQ + dc_swz(qrow, 2 * ks + (lane >> 4), DC_CHUNKS) * 2, a0, a1, a2, a3);
#pragma unroll
                for (int kk = 0; kk < 2; kk++) {
                    u32 b0, b1, b2, b3;
                    ldsm_x4(aK + dc_swz(krow0 + kk * 16, 2 * ks + khalf, DC_CHUNKS) * 2, b0, b1, b2, b3);
                    mma_bf16(s[2 * kk], a0, a1, a2, a3, b0, b1);
                    mma_bf16(s[2 * kk + 1], a0, a1, a2, a3, b2, b3);
                }
            }
        }
        if (tile_key + DC_BN > key_end) {
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                int key = tile_key + ni * 32 + nt * 8 + 2 * t;
                if (key >= key_end) s[nt][0] = s[nt][2] = NEG_INF;
                if (key + 1 >= key_end) s[nt][1] = s[nt][3] = NEG_INF;
            }
        }

        // Row maxima over both key halves.
        float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
        mx0 = quad_max(mx0);
        mx1 = quad_max(mx1);
        if (t == 0) {
            red_max[ni * DC_BM + lr0] = mx0;
            red_max[ni * DC_BM + lr1] = mx1;
        }
        __syncthreads();
        mx0 = fmaxf(red_max[lr0], red_max[DC_BM + lr0]);
        mx1 = fmaxf(red_max[lr1], red_max[DC_BM + lr1]);
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);  // finite: every tile has a visible key
        const float alpha0 = fast_exp2((m0 - mn0) * scale_log2);
        const float alpha1 = fast_exp2((m1 - mn1) * scale_log2);
        m0 = mn0;
        m1 = mn1;
        const float ms0 = mn0 * scale_log2, ms1 = mn1 * scale_log2;
        float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            float p0 = fast_exp2(fmaf(s[nt][0], scale_log2, -ms0));
            float p1 = fast_exp2(fmaf(s[nt][1], scale_log2, -ms0));
            float p2 = fast_exp2(fmaf(s[nt][2], scale_log2, -ms1));
            float p3 = fast_exp2(fmaf(s[nt][3], scale_log2, -ms1));
            rs0 += p0 + p1;
            rs1 += p2 + p3;
            // P[row][key] as bf16, 8-key chunk (4ni + nt) of a 64-key row, swizzled.
            const int chunk = 4 * ni + nt;
            *reinterpret_cast<u32*>(sP + dc_swz(lr0, chunk, 8) + 2 * t) = pack_bf16x2(p0, p1);
            *reinterpret_cast<u32*>(sP + dc_swz(lr1, chunk, 8) + 2 * t) = pack_bf16x2(p2, p3);
        }
        l0 = l0 * alpha0 + rs0;
        l1 = l1 * alpha1 + rs1;
#pragma unroll
        for (int i = 0; i < DC_DV / 2 / 8; i++) {
            o[i][0] *= alpha0;
            o[i][1] *= alpha0;
            o[i][2] *= alpha1;
            o[i][3] *= alpha1;
        }
        __syncthreads();  // P complete

        // O[rows 16mi.., dims 256ni..] += P[rows, 64 keys] V[64 keys, dims].
        {
            const int prow = mi * 16 + (lane & 15);
            const int vrow = (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
            for (int kk = 0; kk < DC_BN / 16; kk++) {
                u32 a0, a1, a2, a3;
                ldsm_x4(aP + dc_swz(prow, 2 * kk + (lane >> 4), 8) * 2, a0, a1, a2, a3);
#pragma unroll
                for (int vn = 0; vn < DC_DV / 2 / 16; vn++) {
                    u32 b0, b1, b2, b3;
                    ldsm_x4_t(aK + dc_swz(kk * 16 + vrow, ni * 32 + 2 * vn + (lane >> 4), DC_CHUNKS) * 2, b0, b1, b2,
                              b3);
                    mma_bf16(o[2 * vn], a0, a1, a2, a3, b0, b1);
                    mma_bf16(o[2 * vn + 1], a0, a1, a2, a3, b2, b3);
                }
            }
        }
        __syncthreads();  // done with this K tile, P and the maxima
    }

    // Row sums over the quad, then over the two key halves.
    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    if (t == 0) {
        red_sum[ni * DC_BM + lr0] = l0;
        red_sum[ni * DC_BM + lr1] = l1;
    }
    __syncthreads();
    l0 = red_sum[lr0] + red_sum[DC_BM + lr0];
    l1 = red_sum[lr1] + red_sum[DC_BM + lr1];

    if (n_splits == 1) {
        const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
        u16* o0 = out + (row0 + lr0) * DC_DV + ni * 256 + 2 * t;
        u16* o1 = out + (row0 + lr1) * DC_DV + ni * 256 + 2 * t;
#pragma unroll
        for (int i = 0; i < DC_DV / 2 / 8; i++) {
            *reinterpret_cast<u32*>(o0 + i * 8) = pack_bf16x2(o[i][0] * inv0, o[i][1] * inv0);
            *reinterpret_cast<u32*>(o1 + i * 8) = pack_bf16x2(o[i][2] * inv1, o[i][3] * inv1);
        }
    } else {
        float* w0 = ws_o + ((row0 + lr0) * n_splits + split) * DC_DV + ni * 256 + 2 * t;
        float* w1 = ws_o + ((row0 + lr1) * n_splits + split) * DC_DV + ni * 256 + 2 * t;
#pragma unroll
        for (int i = 0; i < DC_DV / 2 / 8; i++) {
            *reinterpret_cast<float2*>(w0 + i * 8) = make_float2(o[i][0], o[i][1]);
            *reinterpret_cast<float2*>(w1 + i * 8) = make_float2(o[i][2], o[i][3]);
        }
        if (ni == 0 && t == 0) {
            ws_ml[(row0 + lr0) * n_splits + split] = make_float2(m0, l0);
            ws_ml[(row0 + lr1) * n_splits + split] = make_float2(m1, l1);
        }
    }
}

extern "C" __global__ void __launch_bounds__(DC_THREADS, 1)
    dense_decode_bf16(const u16* __restrict__ Q, const u16* __restrict__ cache, u16* __restrict__ out,
                      float* __restrict__ ws_o, float2* __restrict__ ws_ml, int H, int L, int q_len, int n_splits,
                      int tiles_per_split, float scale_log2) {
    dense_decode_body<false>(Q, reinterpret_cast<const u8*>(cache), out, ws_o, ws_ml, H, L, q_len, n_splits,
                             tiles_per_split, scale_log2);
}

extern "C" __global__ void __launch_bounds__(DC_THREADS, 1)
    dense_decode_fp8(const u16* __restrict__ Q, const u8* __restrict__ cache, u16* __restrict__ out,
                     float* __restrict__ ws_o, float2* __restrict__ ws_ml, int H, int L, int q_len, int n_splits,
                     int tiles_per_split, float scale_log2) {
    dense_decode_body<true>(Q, cache, out, ws_o, ws_ml, H, L, q_len, n_splits, tiles_per_split, scale_log2);
}

// ---------------------------------------------------------------- wgmma (sm_90a), bf16 cache
//
// Same work split, grid, partial outputs and combine as dense_decode_body (one CTA = 64 query rows
// x one key split x one sequence, 64-key tiles, two tile buffers, tile j+1 loaded while tile j is
// used), but on Hopper's warpgroup matrix instructions, whose B operand streams from shared memory
// once per 64-row warpgroup instead of once per 16-row warp. Three entry points:
//   dense_decode_bf16_wgmma       key tiles by cp.async (no-swizzle layout below);
//   dense_decode_bf16_wgmma_tma   key tiles by TMA (128-byte swizzle), what the engine runs;
//   dense_decode_bf16_wgmma_pipe  TMA, with P V(j) and Q K(j+1)^T issued back to back.
// On an H200 at B=64 the cp.async one is no faster than mma.sync (the loads bound both) and the
// TMA one reaches about 2.1 TB/s (bench/NOTES.md). Two warpgroups; for each tile:
//   S: warpgroup w computes S = Q K^T for the 64 rows and keys 32w..32w+31 of the tile
//      (36 x wgmma m64n32k16, Q and K both K-major in shared memory);
//   softmax: row maxima exchanged between the warpgroups through shared memory (both then hold
//      the same running maximum), P = exp2(S*c - m*c) written as bf16 to a shared 64 x 64 tile;
//   PV: warpgroup w accumulates O[64 rows, value dims 256w..256w+255] += P V over all 64 keys
//      (4 x wgmma m64n256k16, P K-major, V = the first 512 dims of the same key tile read
//      MN-major through the transpose bit), 128 fp32 accumulators a thread.
// Q and P (and the cp.async key tiles) use the no-swizzle core-matrix layout: for a 64-row tile, the 8 x 16-byte
// core matrix of row group R and 16-byte chunk C sits at (C * 8 + R) * 128 bytes (dw_off), so one
// chunk column of 64 rows is 1 KB: K-major descriptors step LBO = 1024 along K and SBO = 128 along
// rows; the transposed V descriptor steps LBO = 128 along keys and SBO = 1024 along value dims.
// TMA key tiles are 9 blocks of 64 keys x 64 dims (8 KB, 128-byte swizzle, 1 KB aligned): the K
// descriptor (swizzle mode 1) steps SBO = 1024 between 8-key groups and moves 32 bytes inside a
// swizzled row per 16 dims; the transposed V descriptor steps LBO = 8192 between 64-dim blocks and
// SBO = 1024 between 8-key groups.
// The accumulator fragment of warp w4 of a warpgroup is the mma.sync one for rows 16*w4.., so the
// epilogue matches dense_decode_body's with ni = warpgroup.

#define DW_TILE_BYTES (DC_BN * DC_D * 2)  // 73728: one 64 x 576 bf16 tile (Q or keys)
#define DW_P_BYTES (DC_BM * DC_BN * 2)    // 8192
// sQ | sK0 | sK1 | sP | red_max [2][64] f32 | red_sum [2][64] f32
#define DW_SMEM (3 * DW_TILE_BYTES + DW_P_BYTES + 4 * DC_BM * 4)
// The TMA variants add up to four mbarriers and 1 KB of alignment slack (what the engine launches
// every wgmma decode entry with).
#define DW_SMEM_TMA (DW_SMEM + 32 + 1024)
#ifndef DW_V_LBO
#define DW_V_LBO 128
#endif
#ifndef DW_V_SBO
#define DW_V_SBO 1024
#endif

// Byte offset of (row r, 16-byte chunk c) in a 64-row core-matrix tile.
__device__ __forceinline__ u32 dw_off(int r, int c) { return (u32)(((c << 3) + (r >> 3)) * 128 + ((r & 7) << 4)); }

// 64 rows x 576 bf16 (row 0 at `src`, rows `valid` and later zero-filled) into a dw_off tile. Warp w
// copies row group w: per step its lanes take 8 rows x 4 chunks, so the 8 lanes of a shared-memory
// phase fill one 128-byte core matrix and each row is read in 64-byte pieces.
__device__ __forceinline__ void dw_load_rows(u32 dst, const u16* src, int valid, int warp, int lane) {
    const int r = warp * 8 + (lane & 7);
    const bool ok = r < valid;
    const u16* row = src + (size_t)r * DC_D;
#pragma unroll
    for (int i = 0; i < DC_CHUNKS / 4; i++) {
        const int c = i * 4 + (lane >> 3);
        cp_async16(dst + dw_off(r, c), ok ? row + c * 8 : src, ok ? 16u : 0u);
    }
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// D[64 x 32] += A[64 x 16] B[32 x 16]^T, bf16, f32 accumulators; A and B K-major in shared memory.
__device__ __forceinline__ void dw_mma_qk(float* d, u64 da, u64 db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
        "}, %16, %17, p, 1, 1, 0, 0;\n}\n"
        :
          "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(da), "l"(db), "r"(1));
}

// D[64 x 256] += A[64 x 16] B[16 x 256], bf16, f32 accumulators; A K-major, B MN-major (transpose bit).
__device__ __forceinline__ void dw_mma_pv(float* d, u64 da, u64 db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p, 1, 1, 0, 1;\n}\n"
        :
          "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db), "r"(1));
}
#endif

// The 128-byte-swizzle variant's V descriptor strides (MN-major: LBO between 64-dim blocks, SBO
// between 8-key groups).
#ifndef DW_TV_LBO
#define DW_TV_LBO 8192
#endif
#ifndef DW_TV_SBO
#define DW_TV_SBO 1024
#endif
#define DW_SW128 (1ull << 62)

// Online softmax of one 64-key tile for a wgmma decode CTA: masks keys at or past `key_end`, takes
// the row maxima over both warpgroups (one CTA barrier), rescales the running sums and O, and writes
// P (bf16) into `sP` for the value product. s: this thread's 16 scores (rows lr0, lr1; keys
// 32wg + 8i + 2t, +1 of the tile).
__device__ __forceinline__ void dw_softmax_tile(float* s, float* o, float& m0, float& m1, float& l0, float& l1,
                                                float* red_max, u8* sP, int tile_key, int key_end, int wg, int t,
                                                int lr0, int lr1, float scale_log2) {
    const int kbase = tile_key + wg * 32 + 2 * t;
    if (tile_key + DC_BN > key_end) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int key = kbase + 8 * i;
            if (key >= key_end) s[4 * i] = s[4 * i + 2] = NEG_INF;
            if (key + 1 >= key_end) s[4 * i + 1] = s[4 * i + 3] = NEG_INF;
        }
    }
    float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        mx0 = fmaxf(mx0, fmaxf(s[4 * i], s[4 * i + 1]));
        mx1 = fmaxf(mx1, fmaxf(s[4 * i + 2], s[4 * i + 3]));
    }
    mx0 = quad_max(mx0);
    mx1 = quad_max(mx1);
    if (t == 0) {
        red_max[wg * DC_BM + lr0] = mx0;
        red_max[wg * DC_BM + lr1] = mx1;
    }
    __syncthreads();  // every warpgroup's maxima in red_max
    mx0 = fmaxf(red_max[lr0], red_max[DC_BM + lr0]);
    mx1 = fmaxf(red_max[lr1], red_max[DC_BM + lr1]);
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);  // finite: every tile has a visible key
    const float alpha0 = fast_exp2((m0 - mn0) * scale_log2);
    const float alpha1 = fast_exp2((m1 - mn1) * scale_log2);
    m0 = mn0;
    m1 = mn1;
    const float ms0 = mn0 * scale_log2, ms1 = mn1 * scale_log2;
    float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float p0 = fast_exp2(fmaf(s[4 * i], scale_log2, -ms0));
        const float p1 = fast_exp2(fmaf(s[4 * i + 1], scale_log2, -ms0));
        const float p2 = fast_exp2(fmaf(s[4 * i + 2], scale_log2, -ms1));
        const float p3 = fast_exp2(fmaf(s[4 * i + 3], scale_log2, -ms1));
        rs0 += p0 + p1;
        rs1 += p2 + p3;
        const int kc = wg * 4 + i;  // 8-key chunk of the tile
        *reinterpret_cast<u32*>(sP + dw_off(lr0, kc) + 4 * t) = pack_bf16x2(p0, p1);
        *reinterpret_cast<u32*>(sP + dw_off(lr1, kc) + 4 * t) = pack_bf16x2(p2, p3);
    }
    l0 = l0 * alpha0 + rs0;
    l1 = l1 * alpha1 + rs1;
    if (alpha0 != 1.0f || alpha1 != 1.0f) {
#pragma unroll
        for (int i = 0; i < DC_DV / 16; i++) {
            o[4 * i] *= alpha0;
            o[4 * i + 1] *= alpha0;
            o[4 * i + 2] *= alpha1;
            o[4 * i + 3] *= alpha1;
        }
    }
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Tile j of a split (cache rows grow0 + 64j.., all 576 dims) into `dst` by TMA, counted on `bar`:
// 9 boxes of 64 x 64 in the 128-byte swizzle layout (one thread issues it).
__device__ __forceinline__ void dw_issue_tile(u32 bar, u32 dst, const TensorMap* tmap, int grow0, int j) {
    mb_expect_tx(bar, DW_TILE_BYTES);
#pragma unroll
    for (int c = 0; c < DC_D / 64; c++) tma_g2s_2d(dst + c * 8192, tmap, c * 64, grow0 + j * DC_BN, bar);
}
#endif

// The end of a wgmma decode CTA: the row sums of both warpgroups combined, then the output rows
// normalised (one split) or the unnormalised split partials and (m, l) written for the combine kernel.
__device__ __forceinline__ void dw_finish(const float* o, float m0, float m1, float l0, float l1, float* red_sum,
                                          u16* __restrict__ out, float* __restrict__ ws_o, float2* __restrict__ ws_ml,
                                          size_t row0, int lr0, int lr1, int wg, int t, int n_splits, int split) {
    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    if (t == 0) {
        red_sum[wg * DC_BM + lr0] = l0;
        red_sum[wg * DC_BM + lr1] = l1;
    }
    __syncthreads();
    l0 = red_sum[lr0] + red_sum[DC_BM + lr0];
    l1 = red_sum[lr1] + red_sum[DC_BM + lr1];

    if (n_splits == 1) {
        const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
        u16* o0 = out + (row0 + lr0) * DC_DV + wg * 256 + 2 * t;
        u16* o1 = out + (row0 + lr1) * DC_DV + wg * 256 + 2 * t;
    #pragma unroll
        for (int i = 0; i < DC_DV / 16; i++) {
            *reinterpret_cast<u32*>(o0 + i * 8) = pack_bf16x2(o[4 * i] * inv0, o[4 * i + 1] * inv0);
            *reinterpret_cast<u32*>(o1 + i * 8) = pack_bf16x2(o[4 * i + 2] * inv1, o[4 * i + 3] * inv1);
        }
    } else {
        float* w0 = ws_o + ((row0 + lr0) * n_splits + split) * DC_DV + wg * 256 + 2 * t;
        float* w1 = ws_o + ((row0 + lr1) * n_splits + split) * DC_DV + wg * 256 + 2 * t;
    #pragma unroll
        for (int i = 0; i < DC_DV / 16; i++) {
            *reinterpret_cast<float2*>(w0 + i * 8) = make_float2(o[4 * i], o[4 * i + 1]);
            *reinterpret_cast<float2*>(w1 + i * 8) = make_float2(o[4 * i + 2], o[4 * i + 3]);
        }
        if (wg == 0 && t == 0) {
            ws_ml[(row0 + lr0) * n_splits + split] = make_float2(m0, l0);
            ws_ml[(row0 + lr1) * n_splits + split] = make_float2(m1, l1);
        }
    }
}

// TMA: key tiles by the copy engine (tensor map over the cache as [B*L rows, 576] bf16, box 64 x 64,
// 128-byte swizzle: a tile is 9 boxes of 8 KB counted on the buffer's mbarrier), else cp.async into
// dw_off tiles.
template <bool TMA>
__device__ __forceinline__ void dense_decode_wgmma_body(const u16* __restrict__ Q, const u16* __restrict__ cache,
                                                        u16* __restrict__ out, float* __restrict__ ws_o,
                                                        float2* __restrict__ ws_ml, int H, int L, int q_len,
                                                        int n_splits, int tiles_per_split, float scale_log2,
                                                        const TensorMap* tmap) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) u8 dsmem[];
    // 1024-byte aligned base (the swizzled tiles need it; DW_SMEM_TMA reserves the slack).
    const u32 raw = smem_u32(dsmem);
    const u32 aQ = TMA ? (raw + 1023u) & ~1023u : raw;
    u8* base = dsmem + (aQ - raw);
    const u32 aK0 = aQ + DW_TILE_BYTES, aK1 = aK0 + DW_TILE_BYTES, aP = aK1 + DW_TILE_BYTES;
    u8* sP = base + 3 * DW_TILE_BYTES;
    float* red_max = reinterpret_cast<float*>(sP + DW_P_BYTES);  // [2][64]
    float* red_sum = red_max + 2 * DC_BM;                           // [2][64]
    const u32 bar0 = aP + DW_P_BYTES + 4 * DC_BM * 4, bar1 = bar0 + 8;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wg = warp >> 2, w4 = warp & 3;
    const int rb = blockIdx.x, split = blockIdx.y, b = blockIdx.z;
    const int rows_per_seq = q_len * H;
    const int qi = (rb * DC_BM) / H;
    const int p = L - q_len + qi;
    const int key_begin = split * tiles_per_split * DC_BN;
    const int key_end = min(key_begin + tiles_per_split * DC_BN, p + 1);
    const size_t row0 = (size_t)b * rows_per_seq + (size_t)rb * DC_BM;

    if (key_begin >= key_end) {
        dc_write_empty_split(ws_o, ws_ml, row0, n_splits, split, tid);
        return;
    }
    const int n_tiles = (key_end - key_begin + DC_BN - 1) / DC_BN;
    const u16* cache_b = cache + (size_t)b * L * DC_D;
    const int grow0 = b * L + key_begin;  // tensor-map row of the split's first key

    // Tile j into buffer j & 1 (TMA: thread 0 only).
    auto issue_tma = [&](int j) { dw_issue_tile((j & 1) ? bar1 : bar0, (j & 1) ? aK1 : aK0, tmap, grow0, j); };
    if (TMA) {
        if (tid == 0) {
            mb_init(bar0, 1);
            mb_init(bar1, 1);
            mb_fence_init();
            fence_proxy_async();
        }
        __syncthreads();
        if (tid == 0) issue_tma(0);
        dw_load_rows(aQ, Q + row0 * DC_D, DC_BM, warp, lane);
    } else {
        dw_load_rows(aQ, Q + row0 * DC_D, DC_BM, warp, lane);
        dw_load_rows(aK0, cache_b + (size_t)key_begin * DC_D, key_end - key_begin, warp, lane);
    }
    cp_async_commit();

    float o[DC_DV / 2 / 2];  // 64 x 256 fp32 over 128 threads
#pragma unroll
    for (int i = 0; i < DC_DV / 4; i++) o[i] = 0.0f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
    const int lr0 = w4 * 16 + g, lr1 = lr0 + 8;  // this thread's rows
    // Descriptors (start addresses advance by constants: 16 dims = 2 chunks = 2 KB of a dw_off tile,
    // or 32 bytes inside a swizzled 128-byte row).
    const u64 dq = wg_desc(aQ, 1024, 128);
    const u64 dp = wg_desc(aP, 1024, 128);

    for (int j = 0; j < n_tiles; j++) {
        const int tile_key = key_begin + j * DC_BN;
        const u32 aK = (j & 1) ? aK1 : aK0;
        if (TMA) {
            if (j == 0) {
                cp_async_wait<0>();
                fence_proxy_async();
            }
            __syncthreads();  // Q in place; both warpgroups are done with tile j-1 and P
            if (tid == 0 && j + 1 < n_tiles) issue_tma(j + 1);
            __syncwarp();
            mb_wait((j & 1) ? bar1 : bar0, (u32)(j >> 1) & 1u);
            __syncwarp();  // the lanes leave the wait together (wgmma instructions follow, .aligned)
        } else {
            cp_async_wait<0>();
            fence_proxy_async();
            __syncthreads();  // tile j (and Q) in place; both warpgroups are done with tile j-1 and P
            if (j + 1 < n_tiles) {
                dw_load_rows((j & 1) ? aK0 : aK1, cache_b + (size_t)(tile_key + DC_BN) * DC_D,
                             key_end - tile_key - DC_BN, warp, lane);
                cp_async_commit();
            }
        }

        // S = Q K^T, keys 32wg.. of the tile: thread holds s[4i..4i+1] (row lr0, keys 8i+2t, +1), s[4i+2..] (lr1).
        float s[16];
#pragma unroll
        for (int i = 0; i < 16; i++) s[i] = 0.0f;
        {
            const u64 dk = TMA ? (wg_desc(aK + wg * 4096, 16, 1024) | DW_SW128) : wg_desc(aK + wg * 512, 1024, 128);
            wg_fence_acc<16>(s);
            wg_fence();
#pragma unroll
            for (int ks = 0; ks < DC_D / 16; ks++)
                dw_mma_qk(s, dq + (u64)(ks * 128), dk + (u64)(TMA ? (ks >> 2) * 512 + (ks & 3) * 2 : ks * 128));
            wg_commit();
            wg_wait<0>();
            wg_fence_acc<16>(s);
        }
        dw_softmax_tile(s, o, m0, m1, l0, l1, red_max, sP, tile_key, key_end, wg, t, lr0, lr1, scale_log2);
        fence_proxy_async();
        __syncthreads();  // P complete and visible to the tensor cores

        // O[rows, dims 256wg..] += P[rows, 64 keys] V[64 keys, dims].
        {
            const u64 dv = TMA ? (wg_desc(aK + wg * 4 * 8192, DW_TV_LBO, DW_TV_SBO) | DW_SW128)
                               : wg_desc(aK + wg * 32 * 1024, DW_V_LBO, DW_V_SBO);
            wg_fence_acc<DC_DV / 4>(o);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < DC_BN / 16; kk++) dw_mma_pv(o, dp + (u64)(kk * 128), dv + (u64)(kk * (TMA ? 128 : 16)));
            wg_commit();
            wg_wait<0>();
            wg_fence_acc<DC_DV / 4>(o);
        }
    }
    dw_finish(o, m0, m1, l0, l1, red_sum, out, ws_o, ws_ml, row0, lr0, lr1, wg, t, n_splits, split);
#else
    __trap();  // built for a target without wgmma: the engine never launches these entries there
#endif
}

extern "C" __global__ void __launch_bounds__(DC_THREADS, 1)
    dense_decode_bf16_wgmma(const u16* __restrict__ Q, const u16* __restrict__ cache, u16* __restrict__ out,
                            float* __restrict__ ws_o, float2* __restrict__ ws_ml, int H, int L, int q_len, int n_splits,
                            int tiles_per_split, float scale_log2) {
    dense_decode_wgmma_body<false>(Q, cache, out, ws_o, ws_ml, H, L, q_len, n_splits, tiles_per_split, scale_log2,
                                   nullptr);
}

// As dense_decode_bf16_wgmma, with the key tiles brought in by the copy engine through `tmap`.
extern "C" __global__ void __launch_bounds__(DC_THREADS, 1)
    dense_decode_bf16_wgmma_tma(const __grid_constant__ TensorMap tmap, const u16* __restrict__ Q,
                                const u16* __restrict__ cache, u16* __restrict__ out, float* __restrict__ ws_o,
                                float2* __restrict__ ws_ml, int H, int L, int q_len, int n_splits, int tiles_per_split,
                                float scale_log2) {
    dense_decode_wgmma_body<true>(Q, cache, out, ws_o, ws_ml, H, L, q_len, n_splits, tiles_per_split, scale_log2,
                                  &tmap);
}

// Pipelined TMA variant: P(j) V(j) and Q K(j+1)^T are issued back to back, so the tensor cores
// idle only during the softmax. Per tile: wait for S(j) -> row maxima (barrier) -> P (barrier) ->
// issue PV(j) -> wait for tile j+1 -> issue S(j+1) -> wait for PV(j) and release buffer j (every
// thread arrives on its mbarrier; thread 0 then loads tile j+2 into it) -> wait for S(j+1).
// (A separate copy warp would cap the registers at 168: 9 warps put 3 on one SM sub-partition.)

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// S = Q K^T for keys 32wg.. of the swizzled tile at aK, into s (issued and committed, not waited).
__device__ __forceinline__ void dw_issue_s(float* s, u64 dq, u32 aK, int wg) {
    const u64 dk = wg_desc(aK + wg * 4096, 16, 1024) | DW_SW128;
#pragma unroll
    for (int i = 0; i < 16; i++) s[i] = 0.0f;
    wg_fence_acc<16>(s);
    wg_fence();
#pragma unroll
    for (int ks = 0; ks < DC_D / 16; ks++) dw_mma_qk(s, dq + (u64)(ks * 128), dk + (u64)((ks >> 2) * 512 + (ks & 3) * 2));
    wg_commit();
}
#endif

__device__ __forceinline__ void dense_decode_wgmma_pipe_body(const u16* __restrict__ Q, u16* __restrict__ out,
                                                           float* __restrict__ ws_o, float2* __restrict__ ws_ml, int H,
                                                           int L, int q_len, int n_splits, int tiles_per_split,
                                                           float scale_log2, const TensorMap* tmap) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) u8 dsmem[];
    const u32 raw = smem_u32(dsmem);
    const u32 aQ = (raw + 1023u) & ~1023u;
    u8* base = dsmem + (aQ - raw);
    const u32 aK0 = aQ + DW_TILE_BYTES, aK1 = aK0 + DW_TILE_BYTES, aP = aK1 + DW_TILE_BYTES;
    u8* sP = base + 3 * DW_TILE_BYTES;
    float* red_max = reinterpret_cast<float*>(sP + DW_P_BYTES);  // [2][64]
    float* red_sum = red_max + 2 * DC_BM;                           // [2][64]
    const u32 full0 = aP + DW_P_BYTES + 4 * DC_BM * 4, full1 = full0 + 8, empty0 = full0 + 16, empty1 = full0 + 24;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wg = warp >> 2, w4 = warp & 3;
    const int rb = blockIdx.x, split = blockIdx.y, b = blockIdx.z;
    const int rows_per_seq = q_len * H;
    const int qi = (rb * DC_BM) / H;
    const int p = L - q_len + qi;
    const int key_begin = split * tiles_per_split * DC_BN;
    const int key_end = min(key_begin + tiles_per_split * DC_BN, p + 1);
    const size_t row0 = (size_t)b * rows_per_seq + (size_t)rb * DC_BM;

    if (key_begin >= key_end) {
        dc_write_empty_split(ws_o, ws_ml, row0, n_splits, split, tid);
        return;
    }
    const int n_tiles = (key_end - key_begin + DC_BN - 1) / DC_BN;

    if (tid == 0) {
        mb_init(full0, 1);
        mb_init(full1, 1);
        mb_init(empty0, DC_THREADS);
        mb_init(empty1, DC_THREADS);
        mb_fence_init();
        fence_proxy_async();
    }
    __syncthreads();
    const int grow0 = b * L + key_begin;  // tensor-map row of the split's first key
    // Tile j into buffer j & 1 (thread 0; the buffer is free).
    auto issue_tile = [&](int j) { dw_issue_tile((j & 1) ? full1 : full0, (j & 1) ? aK1 : aK0, tmap, grow0, j); };
    if (tid == 0) {
        issue_tile(0);
        if (n_tiles > 1) issue_tile(1);
    }

    dw_load_rows(aQ, Q + row0 * DC_D, DC_BM, warp, lane);
    cp_async_commit();

    float o[DC_DV / 2 / 2];  // 64 x 256 fp32 over 128 threads
#pragma unroll
    for (int i = 0; i < DC_DV / 4; i++) o[i] = 0.0f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
    const int lr0 = w4 * 16 + g, lr1 = lr0 + 8;
    const u64 dq = wg_desc(aQ, 1024, 128);
    const u64 dp = wg_desc(aP, 1024, 128);
    float s[16];
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();  // Q in place
    mb_wait(full0, 0);
    __syncwarp();
    dw_issue_s(s, dq, aK0, wg);
    wg_wait<0>();
    wg_fence_acc<16>(s);

    for (int j = 0; j < n_tiles; j++) {
        const int tile_key = key_begin + j * DC_BN;
        const u32 aK = (j & 1) ? aK1 : aK0;
        // Its barrier also means both warpgroups are done with P(j-1): their PV(j-1) has completed.
        dw_softmax_tile(s, o, m0, m1, l0, l1, red_max, sP, tile_key, key_end, wg, t, lr0, lr1, scale_log2);
        fence_proxy_async();
        __syncthreads();  // P complete and visible to the tensor cores; red_max free

        {
            const u64 dv = wg_desc(aK + wg * 4 * 8192, DW_TV_LBO, DW_TV_SBO) | DW_SW128;
            wg_fence_acc<DC_DV / 4>(o);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < DC_BN / 16; kk++) dw_mma_pv(o, dp + (u64)(kk * 128), dv + (u64)(kk * 128));
            wg_commit();
        }
        if (j + 1 < n_tiles) {
            mb_wait((j & 1) ? full0 : full1, (u32)((j + 1) >> 1) & 1u);
            __syncwarp();
            dw_issue_s(s, dq, (j & 1) ? aK0 : aK1, wg);
            wg_wait<1>();  // PV(j) done (groups complete in order)
        } else {
            wg_wait<0>();
        }
        wg_fence_acc<DC_DV / 4>(o);
        mb_arrive((j & 1) ? empty1 : empty0);  // this thread's reads of tile j are over
        if (tid == 0 && j + 2 < n_tiles) {
            mb_wait((j & 1) ? empty1 : empty0, (u32)(j >> 1) & 1u);  // every thread's are
            issue_tile(j + 2);
        }
        __syncwarp();
        wg_wait<0>();
        wg_fence_acc<16>(s);
    }

    dw_finish(o, m0, m1, l0, l1, red_sum, out, ws_o, ws_ml, row0, lr0, lr1, wg, t, n_splits, split);
#else
    __trap();
#endif
}

// As dense_decode_bf16_wgmma_tma, with PV(j) and S(j+1) issued back to back.
extern "C" __global__ void __launch_bounds__(DC_THREADS, 1)
    dense_decode_bf16_wgmma_pipe(const __grid_constant__ TensorMap tmap, const u16* __restrict__ Q,
                               const u16* __restrict__ cache, u16* __restrict__ out, float* __restrict__ ws_o,
                               float2* __restrict__ ws_ml, int H, int L, int q_len, int n_splits, int tiles_per_split,
                               float scale_log2) {
    (void)cache;  // read through the tensor map
    dense_decode_wgmma_pipe_body(Q, out, ws_o, ws_ml, H, L, q_len, n_splits, tiles_per_split, scale_log2, &tmap);
}

// Merge the splits of each row: out = sum_s w_s O_s / sum_s w_s l_s, w_s = 2^((m_s - M) c).
// One CTA of 128 threads per row, 4 value dims a thread.
extern "C" __global__ void dense_decode_combine(const float* __restrict__ ws_o, const float2* __restrict__ ws_ml,
                                                u16* __restrict__ out, int n_splits, float scale_log2) {
    const size_t row = blockIdx.x;
    const float2* ml = ws_ml + row * n_splits;
    float M = NEG_INF;
    for (int s = 0; s < n_splits; s++) M = fmaxf(M, ml[s].x);
    float acc0 = 0.0f, acc1 = 0.0f, acc2 = 0.0f, acc3 = 0.0f, den = 0.0f;
    for (int s = 0; s < n_splits; s++) {
        const float2 e = ml[s];
        if (e.x == NEG_INF) continue;
        const float w = fast_exp2((e.x - M) * scale_log2);
        den += w * e.y;
        const float4 v = reinterpret_cast<const float4*>(ws_o + (row * n_splits + s) * DC_DV)[threadIdx.x];
        acc0 += w * v.x;
        acc1 += w * v.y;
        acc2 += w * v.z;
        acc3 += w * v.w;
    }
    const float inv = 1.0f / den;
    uint2 packed = make_uint2(pack_bf16x2(acc0 * inv, acc1 * inv), pack_bf16x2(acc2 * inv, acc3 * inv));
    reinterpret_cast<uint2*>(out + row * DC_DV)[threadIdx.x] = packed;
}
