// indexer.cu: the DSA lightning indexer, I[t,s] = sum_j w[t,j] * ReLU(q[t,j] . k[s]), on tensor cores,
// and the generators of its inputs (fp32 head weights, FP8 e4m3 rows with power-of-two scales).
//
// Geometry: 64 indexer heads x 128 dims (DeepSeek-V3.2). Precisions:
//   bf16: q [B, q_len, 64, 128] bf16, k [B, L, 128] bf16, mma.sync m16n8k16 (bf16, f32 accumulate).
//   fp8:  q [B, q_len, 64, 128] e4m3 codes + one fp32 power-of-two scale per (query, head);
//         k [B, L, 128] e4m3 codes + one fp32 power-of-two scale per key (stride Lp per sequence):
//         the 132-byte-per-token indexer cache. mma.sync m16n8k32 e4m3 (sm_89+), f32 accumulate.
//   w:    [B, q_len, 64] fp32 in both.
// Output: scores [B, q_len, Lp] fp32; query i (position p = L - q_len + i) gets scores for keys 0..p only
// (the top-k kernel reads nothing past p).
//
// With power-of-two scales the FP8 score factors exactly: ReLU(sq*sk*x) = sq*sk*ReLU(x) for sq, sk > 0, so
// I[s] = sk[s] * sum_j (w[j]*sq[j]) * ReLU(codes_q[j] . codes_k[s]); the kernel folds sq into w.
//
// Organisation: MMA rows are keys, columns are heads (8 n-tiles of 8 heads), the reduction runs over the
// 128 dims. Each CTA owns one sequence, a group of QG consecutive queries (QG = 1 for decode, 4 for prefill,
// so a key tile read from memory serves several queries) and a range of 256-key tiles; tiles stream through
// a cp.async pipeline (3 stages for fp8, 2 for bf16). The group's queries sit in shared memory for the whole
// CTA. Each of the 8 warps owns 32 keys (two 16-row m-tiles) of a tile and, for each query, computes its
// 32 x 64 logits, applies ReLU, weights the heads and sums them: inside the thread over its 16 heads,
// then across the 4 threads of a quad. The head sum is ordered the same way every run (deterministic).
//
// Operand layout trick: a dot product may run over the dims in any order as long as both operands use the
// same order. Thread (g = lane/4, t = lane%4) of an mma needs, for row g, 4-byte words at logical byte
// offsets 4t and 16 + 4t of each 32-byte k-slice, for A (key rows) and B (head rows) alike, in bf16 and in
// e4m3. We map k-step (c, s) of a row onto physical bytes 64c + 16t + 8s + [0, 8): one 16-byte shared-memory
// load per row and per 64-byte column group then feeds two k-steps (words x,y for s = 0, z,w for s = 1).
// Rows are stored with their 16-byte chunks XOR-swizzled so that those loads are free of bank conflicts.

#define IX_HEADS 64
#define IX_THREADS 256
#define IX_WARPS 8
#define IX_MT 2                               // 16-key m-tiles per warp
#define IX_TK (IX_WARPS * 16 * IX_MT)         // 256 keys per tile

// Physical 16-byte chunk of logical chunk `chunk` in row `row`: the low 3 bits are XORed with a row
// function that gives rows 2m and 2m+1 opposite halves of each 8-chunk group, so the 8 lanes of one
// shared-memory phase (2 rows x 4 chunks) hit 8 different bank groups.
__device__ __forceinline__ int ix_swz(int row, int chunk) {
    const int f = ((row & 1) << 2) | ((row >> 1) & 3);
    return (chunk & ~7) | ((chunk ^ f) & 7);
}

// D = A * B + D, m16n8k32 e4m3 (sm_89+) or m16n8k16 bf16, f32 accumulators. Not volatile: they touch
// registers only, so the compiler may schedule them around the shared-memory loads.
template <bool FP8>
__device__ __forceinline__ void ix_mma(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    if (FP8) {
        asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}

// Shared-memory bytes of one launch (the engine computes the same sum).
//   Q rows QG*64*RB | w' QG*64 f32 | key tiles STAGES*IX_TK*RB | fp8: key scales STAGES*IX_TK f32
template <bool FP8, int QG>
struct IxSmem {
    static constexpr int RB = FP8 ? 128 : 256;
    static constexpr int STAGES = FP8 ? 3 : 2;
    static constexpr int Q_BYTES = QG * IX_HEADS * RB;
    static constexpr int W_BYTES = QG * IX_HEADS * 4;
    static constexpr int TILE_BYTES = IX_TK * RB;
    static constexpr int KS_BYTES = FP8 ? STAGES * IX_TK * 4 : 0;
    static constexpr int TOTAL = Q_BYTES + W_BYTES + STAGES * TILE_BYTES + KS_BYTES;
};

// NTP: n-tiles (of 8 heads) per head pass: 8 (one pass), or 4 (two passes, half the accumulators, for the
// variant that runs two CTAs per multiprocessor under a 128-register cap).
template <bool FP8, int QG, int NTP>
__device__ __forceinline__ void indexer_body(const u8* __restrict__ q, const float* __restrict__ qscale,
                                             const float* __restrict__ w, const u8* __restrict__ k,
                                             const float* __restrict__ kscale, float* __restrict__ scores,
                                             int q_len, int L, int Lp, int tiles_per_split) {
    typedef IxSmem<FP8, QG> S;
    constexpr int RB = S::RB;
    constexpr int CR = RB / 16;  // 16-byte chunks per row
    constexpr int NC = RB / 64;  // 64-byte column groups (two k-steps each)
    constexpr int STAGES = S::STAGES;
    extern __shared__ __align__(128) u8 smem[];
    u8* sQ = smem;
    float* sW = reinterpret_cast<float*>(smem + S::Q_BYTES);
    u8* sK = smem + S::Q_BYTES + S::W_BYTES;
    float* sKs = reinterpret_cast<float*>(sK + STAGES * S::TILE_BYTES);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int split = blockIdx.x, b = blockIdx.z;
    const int i0 = blockIdx.y * QG;
    const int nq = min(QG, q_len - i0);
    const int key_end = L - q_len + i0 + nq;  // one past the last key the group sees
    const int tile_begin = split * tiles_per_split;
    const int n_tiles = min(tiles_per_split, (key_end + IX_TK - 1) / IX_TK - tile_begin);
    if (n_tiles <= 0) return;

    const size_t qrow0 = (size_t)b * q_len + i0;  // first query row of the group
    const u32 aQ = smem_u32(sQ), aK = smem_u32(sK), aKs = smem_u32(sKs);

    // The group's queries (nq * 64 head rows), swizzled, and the head weights (times the q scales).
    {
        const u8* src = q + qrow0 * IX_HEADS * RB;
        for (int c = tid; c < nq * IX_HEADS * CR; c += IX_THREADS) {
            const int r = c / CR, ch = c % CR;
            cp_async16(aQ + r * RB + ix_swz(r, ch) * 16, src + (size_t)r * RB + ch * 16, 16u);
        }
        for (int j = tid; j < nq * IX_HEADS; j += IX_THREADS) {
            float wj = w[qrow0 * IX_HEADS + j];
            if (FP8) wj *= qscale[qrow0 * IX_HEADS + j];
            sW[j] = wj;
        }
    }

    const u8* kseq = k + (size_t)b * L * RB;
    const float* kscale_seq = FP8 ? kscale + (size_t)b * Lp : nullptr;
    // Tile j of this CTA into stage `st`; rows at or past key_end are zero-filled.
    auto load_tile = [&](int j, int st) {
        const int key0 = (tile_begin + j) * IX_TK;
        const u8* src = kseq + (size_t)key0 * RB;
        const u32 dst = aK + st * S::TILE_BYTES;
        for (int c = tid; c < IX_TK * CR; c += IX_THREADS) {
            const int r = c / CR, ch = c % CR;
            const bool ok = key0 + r < key_end;
            cp_async16(dst + r * RB + ix_swz(r, ch) * 16, ok ? src + (size_t)r * RB + ch * 16 : kseq, ok ? 16u : 0u);
        }
        if (FP8) {
            for (int c = tid; c < IX_TK / 4; c += IX_THREADS) {
                const int left = key_end - (key0 + 4 * c);  // valid scales in this 4-key chunk
                const u32 bytes = left >= 4 ? 16u : (left > 0 ? (u32)left * 4u : 0u);
                cp_async16(aKs + (st * IX_TK + 4 * c) * 4, bytes ? kscale_seq + key0 + 4 * c : kscale_seq, bytes);
            }
        }
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < n_tiles) load_tile(s, s);
        cp_async_commit();
    }

    const int wkey = warp * 16 * IX_MT;  // the warp's first key in a tile
    // Every row this thread reads (keys wkey + 16mt + 8h + g, heads 64qi + 8nt + g) is g modulo 8, so its
    // swizzled chunk offsets depend on the column group c only.
    u32 coff[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) coff[c] = (u32)ix_swz(g, 4 * c + t) * 16;
    const u32 a_row = (u32)(wkey + g) * RB;
    for (int j = 0; j < n_tiles; j++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // tile j (and the queries) are in; every warp is done with tile j-1's stage
        if (j + STAGES - 1 < n_tiles) load_tile(j + STAGES - 1, (j + STAGES - 1) % STAGES);
        cp_async_commit();

        const int st = j % STAGES;
        const int key0 = (tile_begin + j) * IX_TK;
        const u8* tileA = sK + st * S::TILE_BYTES;
        for (int qi = 0; qi < nq; qi++) {
            const int p = L - q_len + i0 + qi;  // last key this query sees
            if (key0 + wkey > p) continue;      // warp-uniform: none of the warp's keys is visible
            float part[IX_MT][2];               // weighted ReLU sums of rows g, g+8 of each m-tile
#pragma unroll
            for (int mt = 0; mt < IX_MT; mt++) part[mt][0] = part[mt][1] = 0.0f;
#pragma unroll
            for (int hp = 0; hp < 8 / NTP; hp++) {  // head passes of NTP n-tiles (8 heads each)
                float acc[IX_MT][NTP][4];
#pragma unroll
                for (int mt = 0; mt < IX_MT; mt++)
#pragma unroll
                    for (int nt = 0; nt < NTP; nt++) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    uint4 a[IX_MT][2];
#pragma unroll
                    for (int mt = 0; mt < IX_MT; mt++)
#pragma unroll
                        for (int h = 0; h < 2; h++)
                            a[mt][h] = *reinterpret_cast<const uint4*>(tileA + a_row + (mt * 16 + h * 8) * RB + coff[c]);
#pragma unroll
                    for (int nt = 0; nt < NTP; nt++) {
                        const uint4 bq = *reinterpret_cast<const uint4*>(sQ + (qi * IX_HEADS + g) * RB + (hp * NTP + nt) * 8 * RB + coff[c]);
#pragma unroll
                        for (int mt = 0; mt < IX_MT; mt++) {
                            ix_mma<FP8>(acc[mt][nt], a[mt][0].x, a[mt][1].x, a[mt][0].y, a[mt][1].y, bq.x, bq.y);
                            ix_mma<FP8>(acc[mt][nt], a[mt][0].z, a[mt][1].z, a[mt][0].w, a[mt][1].w, bq.z, bq.w);
                        }
                    }
                }
                // Weighted ReLU sum over this pass's heads: the thread holds heads 8nt + 2t, 8nt + 2t + 1.
#pragma unroll
                for (int nt = 0; nt < NTP; nt++) {
                    const float2 wv = *reinterpret_cast<const float2*>(sW + qi * IX_HEADS + (hp * NTP + nt) * 8 + 2 * t);
#pragma unroll
                    for (int mt = 0; mt < IX_MT; mt++) {
                        part[mt][0] = fmaf(wv.x, fmaxf(acc[mt][nt][0], 0.0f), part[mt][0]);
                        part[mt][0] = fmaf(wv.y, fmaxf(acc[mt][nt][1], 0.0f), part[mt][0]);
                        part[mt][1] = fmaf(wv.x, fmaxf(acc[mt][nt][2], 0.0f), part[mt][1]);
                        part[mt][1] = fmaf(wv.y, fmaxf(acc[mt][nt][3], 0.0f), part[mt][1]);
                    }
                }
            }
#pragma unroll
            for (int mt = 0; mt < IX_MT; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    part[mt][h] = quad_sum(part[mt][h]);
                }
            if (t == 0) {
                float* dst = scores + (qrow0 + qi) * (size_t)Lp;
#pragma unroll
                for (int mt = 0; mt < IX_MT; mt++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int r = wkey + mt * 16 + h * 8 + g;
                        const int key = key0 + r;
                        if (key <= p) {
                            float sc = part[mt][h];
                            if (FP8) sc *= sKs[st * IX_TK + r];
                            dst[key] = sc;
                        }
                    }
            }
        }
    }
    cp_async_wait<0>();
}

extern "C" __global__ void __launch_bounds__(IX_THREADS, 2)
    indexer_fp8_q1(const u8* __restrict__ q, const float* __restrict__ qscale, const float* __restrict__ w,
                   const u8* __restrict__ k, const float* __restrict__ kscale, float* __restrict__ scores, int q_len,
                   int L, int Lp, int tiles_per_split) {
    indexer_body<true, 1, 4>(q, qscale, w, k, kscale, scores, q_len, L, Lp, tiles_per_split);
}

extern "C" __global__ void __launch_bounds__(IX_THREADS, 1)
    indexer_fp8_q4(const u8* __restrict__ q, const float* __restrict__ qscale, const float* __restrict__ w,
                   const u8* __restrict__ k, const float* __restrict__ kscale, float* __restrict__ scores, int q_len,
                   int L, int Lp, int tiles_per_split) {
    indexer_body<true, 4, 8>(q, qscale, w, k, kscale, scores, q_len, L, Lp, tiles_per_split);
}

extern "C" __global__ void __launch_bounds__(IX_THREADS, 1)
    indexer_bf16_q1(const u8* __restrict__ q, const float* __restrict__ qscale, const float* __restrict__ w,
                    const u8* __restrict__ k, const float* __restrict__ kscale, float* __restrict__ scores, int q_len,
                    int L, int Lp, int tiles_per_split) {
    indexer_body<false, 1, 8>(q, qscale, w, k, kscale, scores, q_len, L, Lp, tiles_per_split);
}

extern "C" __global__ void __launch_bounds__(IX_THREADS, 1)
    indexer_bf16_q4(const u8* __restrict__ q, const float* __restrict__ qscale, const float* __restrict__ w,
                    const u8* __restrict__ k, const float* __restrict__ kscale, float* __restrict__ scores, int q_len,
                    int L, int Lp, int tiles_per_split) {
    indexer_body<false, 4, 8>(q, qscale, w, k, kscale, scores, q_len, L, Lp, tiles_per_split);
}

// ---------------------------------------------------------------- FP8 on wgmma (sm_90a)
//
// On sm_90 the e4m3 mma.sync above is not native: ptxas lowers it to f16 HMMA with conversions, so FP8
// runs no faster than bf16. Hopper's FP8 tensor-core path is wgmma, which needs sm_90a code; the engine
// compiles this file for sm_90a on such devices and uses the entry points below (elsewhere they trap).
//
// Same work split as indexer_body (CTA = sequence x group of QG queries x key range, 256-key tiles in a
// 3-stage cp.async pipeline), but each warpgroup (4 warps) computes 64 keys x 64 heads per instruction
// sequence: wgmma m64n64k32 e4m3 with both operands K-major in shared memory, four k-steps for the 128
// dims. Shared-memory operand layout (no swizzle): 8-row x 16-byte core matrices stored contiguously,
// core matrix (row group R, 16-byte chunk C) at (R * 8 + C) * 128 bytes, row r of it at + (r % 8) * 16;
// so the descriptors use LBO = 128 (next chunk along K) and SBO = 1024 (next 8 rows). The accumulator
// fragment of warp w of a warpgroup is the mma.sync one for rows 16w.., so the epilogue is unchanged.

__device__ __forceinline__ u32 wg_off(int r, int ch) { return (u32)(((r >> 3) * 8 + ch) * 128 + (r & 7) * 16); }

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// D[64 x 64] (+)= A[64 x 32] B[64 x 32]^T, e4m3, f32 accumulators; scale_d = 0 overwrites D.
__device__ __forceinline__ void wg_mma_e4m3(float* d, u64 da, u64 db, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(da), "l"(db), "r"(scale_d));
}

// The scores of one key tile (stage `st`, first key `key0`) for the CTA's queries: each warpgroup
// scores its 128 keys of the tile as two 64-key blocks (FP8 wgmma m64n64k32 over the 64 heads), then
// applies ReLU, the head weights and the key scales; keys after a query's position are not written.
// SW128: the tile is in the 128-byte swizzle layout (TMA), else in 8-row core-matrix blocks (cp.async).
template <bool SW128>
__device__ __forceinline__ void ix_wg_score_tile(u32 tileA, u32 aQ, const float* sW, const float* sKs,
                                                 float* __restrict__ scores, int st, int key0, int nq, int L,
                                                 int q_len, int i0, size_t qrow0, int Lp, int wgi, int w4, int g,
                                                 int t) {
    for (int qi = 0; qi < nq; qi++) {
        const int p = L - q_len + i0 + qi;
#pragma unroll 1
        for (int mb = 0; mb < 2; mb++) {
            const int rb = wgi * 128 + mb * 64;  // first tile row of this warpgroup's 64-key block
            if (key0 + rb > p) continue;         // warpgroup-uniform
            float d[32];
#pragma unroll
            for (int i = 0; i < 32; i++) d[i] = 0.0f;
            wg_fence_acc<32>(d);
            wg_fence();
#pragma unroll
            for (int s = 0; s < 4; s++) {
                const u64 da = SW128 ? wg_desc_sw128(tileA + rb * 128 + s * 32)
                                     : wg_desc(tileA + (rb >> 3) * 1024 + s * 256, 128, 1024);
                wg_mma_e4m3(d, da, wg_desc(aQ + qi * 8192 + s * 256, 128, 1024), 1);
            }
            wg_commit();
            wg_wait0();
            wg_fence_acc<32>(d);
            float part0 = 0.0f, part1 = 0.0f;
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                const float2 wv = *reinterpret_cast<const float2*>(sW + qi * IX_HEADS + nt * 8 + 2 * t);
                part0 = fmaf(wv.x, fmaxf(d[4 * nt + 0], 0.0f), part0);
                part0 = fmaf(wv.y, fmaxf(d[4 * nt + 1], 0.0f), part0);
                part1 = fmaf(wv.x, fmaxf(d[4 * nt + 2], 0.0f), part1);
                part1 = fmaf(wv.y, fmaxf(d[4 * nt + 3], 0.0f), part1);
            }
            part0 = quad_sum(part0);
            part1 = quad_sum(part1);
            if (t == 0) {
                float* dst = scores + (qrow0 + qi) * (size_t)Lp;
                const int r0 = rb + w4 * 16 + g, r1 = r0 + 8;
                if (key0 + r0 <= p) dst[key0 + r0] = part0 * sKs[st * IX_TK + r0];
                if (key0 + r1 <= p) dst[key0 + r1] = part1 * sKs[st * IX_TK + r1];
            }
        }
    }
}
#endif

template <int QG>
__device__ __forceinline__ void indexer_wgmma_body(const u8* __restrict__ q, const float* __restrict__ qscale,
                                                   const float* __restrict__ w, const u8* __restrict__ k,
                                                   const float* __restrict__ kscale, float* __restrict__ scores,
                                                   int q_len, int L, int Lp, int tiles_per_split) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    typedef IxSmem<true, QG> S;
    constexpr int STAGES = S::STAGES;
    extern __shared__ __align__(128) u8 smem[];
    u8* sQ = smem;
    float* sW = reinterpret_cast<float*>(smem + S::Q_BYTES);
    u8* sK = smem + S::Q_BYTES + S::W_BYTES;
    float* sKs = reinterpret_cast<float*>(sK + STAGES * S::TILE_BYTES);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wgi = warp >> 2, w4 = warp & 3;  // warpgroup, warp within it
    const int split = blockIdx.x, b = blockIdx.z;
    const int i0 = blockIdx.y * QG;
    const int nq = min(QG, q_len - i0);
    const int key_end = L - q_len + i0 + nq;
    const int tile_begin = split * tiles_per_split;
    const int n_tiles = min(tiles_per_split, (key_end + IX_TK - 1) / IX_TK - tile_begin);
    if (n_tiles <= 0) return;

    const size_t qrow0 = (size_t)b * q_len + i0;
    const u32 aQ = smem_u32(sQ), aK = smem_u32(sK), aKs = smem_u32(sKs);
    {
        const u8* src = q + qrow0 * IX_HEADS * 128;
        for (int c = tid; c < nq * IX_HEADS * 8; c += IX_THREADS) {
            const int r = c >> 3, ch = c & 7;  // r = qi * 64 + head
            cp_async16(aQ + (r >> 6) * 8192 + wg_off(r & 63, ch), src + (size_t)r * 128 + ch * 16, 16u);
        }
        for (int j = tid; j < nq * IX_HEADS; j += IX_THREADS) sW[j] = w[qrow0 * IX_HEADS + j] * qscale[qrow0 * IX_HEADS + j];
    }
    const u8* kseq = k + (size_t)b * L * 128;
    const float* kscale_seq = kscale + (size_t)b * Lp;
    // Each warp copies 8 rows x 4 chunks per step: whole 32-byte sectors from global memory, and the 8
    // lanes of a shared-memory phase write 8 different rows of one core matrix (no bank conflicts).
    auto load_tile = [&](int j, int st) {
        const int key0 = (tile_begin + j) * IX_TK;
        const u8* src = kseq + (size_t)key0 * 128;
        const u32 dst = aK + st * S::TILE_BYTES;
#pragma unroll
        for (int i = 0; i < IX_TK * 8 / IX_THREADS; i++) {
            const int wc = warp + IX_WARPS * i;  // 64 warp-steps per tile
            const int r = (wc >> 1) * 8 + (lane & 7), ch = (wc & 1) * 4 + (lane >> 3);
            const bool ok = key0 + r < key_end;
            cp_async16(dst + wg_off(r, ch), ok ? src + (size_t)r * 128 + ch * 16 : kseq, ok ? 16u : 0u);
        }
        if (tid < IX_TK / 4) {
            const int left = key_end - (key0 + 4 * tid);
            const u32 bytes = left >= 4 ? 16u : (left > 0 ? (u32)left * 4u : 0u);
            cp_async16(aKs + (st * IX_TK + 4 * tid) * 4, bytes ? kscale_seq + key0 + 4 * tid : kscale_seq, bytes);
        }
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < n_tiles) load_tile(s, s);
        cp_async_commit();
    }
    for (int j = 0; j < n_tiles; j++) {
        cp_async_wait<STAGES - 2>();
        fence_proxy_async();  // cp.async data -> wgmma's proxy
        __syncthreads();
        if (j + STAGES - 1 < n_tiles) load_tile(j + STAGES - 1, (j + STAGES - 1) % STAGES);
        cp_async_commit();

        const int st = j % STAGES;
        const int key0 = (tile_begin + j) * IX_TK;
        const u32 tileA = aK + st * S::TILE_BYTES;
        ix_wg_score_tile<false>(tileA, aQ, sW, sKs, scores, st, key0, nq, L, q_len, i0, qrow0, Lp, wgi, w4, g, t);
    }
    cp_async_wait<0>();
#else
    __trap();  // built for a target without wgmma: the engine never launches this entry there
#endif
}

extern "C" __global__ void __launch_bounds__(IX_THREADS, 2)
    indexer_fp8_wgmma_q1(const u8* __restrict__ q, const float* __restrict__ qscale, const float* __restrict__ w,
                         const u8* __restrict__ k, const float* __restrict__ kscale, float* __restrict__ scores,
                         int q_len, int L, int Lp, int tiles_per_split) {
    indexer_wgmma_body<1>(q, qscale, w, k, kscale, scores, q_len, L, Lp, tiles_per_split);
}

extern "C" __global__ void __launch_bounds__(IX_THREADS, 1)
    indexer_fp8_wgmma_q4(const u8* __restrict__ q, const float* __restrict__ qscale, const float* __restrict__ w,
                         const u8* __restrict__ k, const float* __restrict__ kscale, float* __restrict__ scores,
                         int q_len, int L, int Lp, int tiles_per_split) {
    indexer_wgmma_body<4>(q, qscale, w, k, kscale, scores, q_len, L, Lp, tiles_per_split);
}

// ---------------------------------------------------------------- FP8 on wgmma, key tiles by TMA (sm_90a)
//
// As indexer_wgmma_body, with every key tile brought in by one tensor copy (cp.async.bulk.tensor, the
// copy engine) and its fp32 scales by one bulk copy, both issued by thread 0 and both counted on the
// stage's `full` mbarrier; STAGES tiles are in flight from the start. A bulk copy writes bytes linearly,
// which no no-swizzle (core-matrix) descriptor can describe for 128-byte K-major rows, so the keys come
// through a tensor map with the 128-byte swizzle (box 128 bytes x 256 keys of one sequence; keys past L
// are zero-filled) and the key operand's descriptor uses the same swizzle (the layout DeepGEMM-style FP8
// GEMMs use: a k-step of 32 bytes is a 32-byte advance of the start address inside the 1024-byte atom).
// The queries keep the no-swizzle layout of indexer_wgmma_body (loaded once by cp.async).
//
// Stage reuse: each warp arrives on the stage's `empty` mbarrier (8 arrivals) after its last wgmma on the
// tile has completed (wgmma.wait_group 0) and its lanes have read the key scales; at the top of tile j,
// thread 0 waits for the stage tile j-1 used to be empty and refills it with tile j+STAGES-1.
//
// Shared memory (base rounded up to 1024 bytes):
//   key tiles STAGES*32 KB | key scales STAGES*1 KB | Q QG*8 KB | w' QG*256 | full[STAGES], empty[STAGES]
template <int QG, int STAGES>
struct IxTmaSmem {
    static constexpr int TILE_BYTES = IX_TK * 128;
    static constexpr int KS_OFF = STAGES * TILE_BYTES;
    static constexpr int Q_OFF = KS_OFF + STAGES * IX_TK * 4;
    static constexpr int W_OFF = Q_OFF + QG * IX_HEADS * 128;
    static constexpr int BAR_OFF = W_OFF + QG * IX_HEADS * 4;
    static constexpr int TOTAL = BAR_OFF + 2 * STAGES * 8 + 1024;  // + the base alignment slack
};

template <int QG, int STAGES>
__device__ __forceinline__ void indexer_tma_body(const TensorMap* tmap, const u8* __restrict__ q,
                                                 const float* __restrict__ qscale, const float* __restrict__ w,
                                                 const float* __restrict__ kscale, float* __restrict__ scores,
                                                 int q_len, int L, int Lp, int tiles_per_split) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    typedef IxTmaSmem<QG, STAGES> S;
    extern __shared__ __align__(128) u8 smem[];
    const u32 pad = (0u - smem_u32(smem)) & 1023u;
    u8* sm = smem + pad;
    const u32 aK = smem_u32(sm);  // 1024-aligned: the 128-byte swizzle atoms of the key tiles
    const u32 aKs = aK + S::KS_OFF, aQ = aK + S::Q_OFF;
    const float* sKs = reinterpret_cast<const float*>(sm + S::KS_OFF);
    float* sW = reinterpret_cast<float*>(sm + S::W_OFF);
    const u32 full0 = aK + S::BAR_OFF, empty0 = full0 + STAGES * 8;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wgi = warp >> 2, w4 = warp & 3;
    const int split = blockIdx.x, b = blockIdx.z;
    const int i0 = blockIdx.y * QG;
    const int nq = min(QG, q_len - i0);
    const int key_end = L - q_len + i0 + nq;
    const int tile_begin = split * tiles_per_split;
    const int n_tiles = min(tiles_per_split, (key_end + IX_TK - 1) / IX_TK - tile_begin);
    if (n_tiles <= 0) return;  // the whole CTA, before any barrier

    const size_t qrow0 = (size_t)b * q_len + i0;
    if (tid == 0) {
#pragma unroll
        for (int s = 0; s < STAGES; s++) {
            mb_init(full0 + 8 * s, 1);
            mb_init(empty0 + 8 * s, IX_WARPS);
        }
        mb_fence_init();
    }
    {
        const u8* src = q + qrow0 * IX_HEADS * 128;
        for (int c = tid; c < nq * IX_HEADS * 8; c += IX_THREADS) {
            const int r = c >> 3, ch = c & 7;
            cp_async16(aQ + (r >> 6) * 8192 + wg_off(r & 63, ch), src + (size_t)r * 128 + ch * 16, 16u);
        }
        cp_async_commit();
        for (int j = tid; j < nq * IX_HEADS; j += IX_THREADS) sW[j] = w[qrow0 * IX_HEADS + j] * qscale[qrow0 * IX_HEADS + j];
    }
    const float* kscale_seq = kscale + (size_t)b * Lp;
    // Tile j into stage st (thread 0 only). Scales: keys key0 .. up to key_end rounded up to 4 (<= Lp, a
    // multiple of 4, so the size is a multiple of 16 bytes and the read stays inside the sequence's row).
    auto load_tile = [&](int j, int st) {
        const int key0 = (tile_begin + j) * IX_TK;
        const int nks = min(IX_TK, ((key_end + 3) & ~3) - key0);
        const u32 sbytes = (u32)nks * 4u;
        const u32 bar = full0 + 8 * st;
        mb_expect_tx(bar, (u32)S::TILE_BYTES + sbytes);
        tma_g2s_3d(aK + st * S::TILE_BYTES, tmap, 0, key0, b, bar);
        bulk_g2s(aKs + st * IX_TK * 4, kscale_seq + key0, sbytes, bar);
    };
    __syncthreads();  // the barriers are initialised
    if (tid == 0) {
#pragma unroll
        for (int s = 0; s < STAGES; s++)
            if (s < n_tiles) load_tile(s, s);
    }
    __syncwarp();
    cp_async_wait<0>();
    fence_proxy_async();  // cp.async queries -> wgmma's proxy
    __syncthreads();      // queries and head weights are in

    for (int j = 0; j < n_tiles; j++) {
        if (j >= 1 && j + STAGES - 1 < n_tiles) {
            if (tid == 0) {
                const int sj = (j - 1) % STAGES;  // the stage of tile j-1, and of tile j+STAGES-1
                mb_wait(empty0 + 8 * sj, (u32)((j - 1) / STAGES) & 1u);
                load_tile(j + STAGES - 1, sj);
            }
            __syncwarp();
        }
        const int st = j % STAGES;
        mb_wait(full0 + 8 * st, (u32)(j / STAGES) & 1u);

        const int key0 = (tile_begin + j) * IX_TK;
        const u32 tileA = aK + st * S::TILE_BYTES;
        ix_wg_score_tile<true>(tileA, aQ, sW, sKs, scores, st, key0, nq, L, q_len, i0, qrow0, Lp, wgi, w4, g, t);
        __syncwarp();  // every lane's wgmma on the stage has completed and its scale reads are done
        if (lane == 0) mb_arrive(empty0 + 8 * st);
    }
#else
    __trap();  // built for a target without wgmma: the engine never launches this entry there
#endif
}

// Decode entries (one query per CTA). tma3: 3 stages, two CTAs per multiprocessor (2 x 108.3 KB);
// tma4: 4 stages, one CTA per multiprocessor (141.3 KB).
extern "C" __global__ void __launch_bounds__(IX_THREADS, 2)
    indexer_fp8_tma3_q1(const __grid_constant__ TensorMap tmap, const u8* __restrict__ q, const float* __restrict__ qscale,
                        const float* __restrict__ w, const u8* __restrict__ k, const float* __restrict__ kscale,
                        float* __restrict__ scores, int q_len, int L, int Lp, int tiles_per_split) {
    indexer_tma_body<1, 3>(&tmap, q, qscale, w, kscale, scores, q_len, L, Lp, tiles_per_split);
}

extern "C" __global__ void __launch_bounds__(IX_THREADS, 1)
    indexer_fp8_tma4_q1(const __grid_constant__ TensorMap tmap, const u8* __restrict__ q, const float* __restrict__ qscale,
                        const float* __restrict__ w, const u8* __restrict__ k, const float* __restrict__ kscale,
                        float* __restrict__ scores, int q_len, int L, int Lp, int tiles_per_split) {
    indexer_tma_body<1, 4>(&tmap, q, qscale, w, kscale, scores, q_len, L, Lp, tiles_per_split);
}

// ---------------------------------------------------------------- inputs

// Seeded fp32 values (the indexer head weights stay fp32 in every precision).
extern "C" __global__ void gen_f32(float* __restrict__ out, u64 seed, u64 stream, u64 n) {
    const u64 base = stream_base(seed, stream);
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = uniform_at(base, i);
}

// The power-of-two scale of a block, as ctxcost_core::numeric::e4m3_scale(.., ScaleKind::Pow2) computes it
// on the host: s = max(amax, 1e-12) / 448, then 2^ceil(log2 s) with log2 rounded to f32 (computed in double
// and rounded once, as a correctly rounded log2f would).
__device__ __forceinline__ float ix_pow2_scale(float amax) {
    const float s = __fdiv_rn(fmaxf(amax, 1e-12f), E4M3_MAX);
    const float lg = (float)log2((double)s);
    const int e = (int)ceilf(lg);
    return __uint_as_float((u32)(e + 127) << 23);
}

// Rows of 128 seeded values quantised to e4m3 with one power-of-two scale per row (DeepSeek's indexer
// format, as reference::round_row applies it): row r holds generator indices r*128 .. r*128+127; codes go
// to codes[r*128 ..], the scale to scales[(r / per_seq) * scale_stride + r % per_seq] (so key scales can be
// padded to a multiple of 4 per sequence). One warp per row, 4 values a lane.
extern "C" __global__ void gen_e4m3_pow2(u8* __restrict__ codes, float* __restrict__ scales, u64 seed, u64 stream,
                                         u64 rows, u64 per_seq, u64 scale_stride) {
    const u64 base = stream_base(seed, stream);
    const int lane = threadIdx.x & 31;
    const u64 warps = blockDim.x >> 5;
    for (u64 r = (u64)blockIdx.x * warps + (threadIdx.x >> 5); r < rows; r += (u64)gridDim.x * warps) {
        float v[4];
        float amax = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[j] = uniform_at(base, r * 128 + lane * 4 + j);
            amax = fmaxf(amax, fabsf(v[j]));
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float s = ix_pow2_scale(amax);
        u32 packed = 0;
#pragma unroll
        for (int j = 0; j < 4; j++) packed |= e4m3_bits(round_e4m3(__fdiv_rn(v[j], s))) << (8 * j);
        *reinterpret_cast<u32*>(codes + r * 128 + lane * 4) = packed;
        if (lane == 0) scales[(r / per_seq) * scale_stride + r % per_seq] = s;
    }
}
