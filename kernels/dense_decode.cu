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

#define DC_BM 64
#define DC_BN 64
#define DC_D 576
#define DC_DV 512
#define DC_CHUNKS 72      // 16-byte chunks in a 576-dim bf16 row
#define DC_FP8_ROW 656    // bytes of an FP8 cache row
#define DC_THREADS 256

#define DC_TILE_ELEMS (DC_BN * DC_D)  // one bf16 tile (64 x 576)
#define DC_P_ELEMS (DC_BM * DC_BN)

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
        // No visible key in this split (only possible when q_len > 1): an empty partial.
        for (int i = tid; i < DC_BM * DC_DV; i += DC_THREADS)
            ws_o[((row0 + i / DC_DV) * n_splits + split) * DC_DV + (i % DC_DV)] = 0.0f;
        if (tid < DC_BM) ws_ml[(row0 + tid) * n_splits + split] = make_float2(NEG_INF, 0.0f);
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
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
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
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
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
