// topk.cu: exact top-k per query row of indexer scores by radix select (no sort).
//
// Rule (shared with reference::topk): the k keys with the largest score among the keys the query sees
// (0..p); equal scores go to the smaller position; the output row holds the selected positions ascending,
// then -1 padding up to k when fewer than k keys are visible.
//
// One CTA of 1024 threads per row (grid: queries x sequences). Scores become order-preserving 32-bit keys
// (sign flip), and the k-th largest key T is found digit by digit (12 + 10 + 10 bits):
//   1. histogram of the top 12 bits over the row; the bin holding the k-th largest is found with a
//      block-wide scan from the top; keys in higher bins are all selected;
//   2. the keys of that bin are copied into shared memory (when they fit; otherwise the next passes
//      re-read the row from global memory and filter by prefix), then bits 19..10 and 9..0 are resolved
//      the same way on them, giving T, the count of keys above T, and so how many keys equal to T to take;
//   3. a final pass over the row in position order keeps key > T, and key == T for the first `need_eq`
//      such positions; a block-wide scan of (greater, equal) counts gives every kept key its output slot
//      directly in ascending position order: slot = greater_before + min(equal_before, need_eq).
// So a row is read three times (histogram, filter, compaction); nothing is sorted.

#define TK_THREADS 1024
#define TK_WARPS (TK_THREADS / 32)
#define TK_BINS1 4096       // first digit: bits 31..20
#define TK_BINS2 1024       // second and third digits: bits 19..10, 9..0
#define TK_CAP 12288        // candidate keys kept in shared memory
#define TK_PER 16           // consecutive scores per thread per step (four 16-byte loads)

// Shared memory: hist[TK_BINS1] | cand[TK_CAP] | scan[TK_WARPS] | misc[8]   (u32 each)
#define TK_SMEM_WORDS (TK_BINS1 + TK_CAP + TK_WARPS + 8)

__device__ __forceinline__ u32 tk_key(float x) {
    const u32 u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Block-wide exclusive scan of one value per thread; `total` gets the block sum. Contains barriers: call
// from every thread.
__device__ __forceinline__ u32 tk_scan(u32 v, u32* buf, u32& total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u32 x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u32 y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) buf[warp] = x;
    __syncthreads();
    if (warp == 0) {
        u32 s = buf[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const u32 y = __shfl_up_sync(0xffffffffu, s, o);
            if (lane >= o) s += y;
        }
        buf[lane] = s;  // inclusive warp sums
    }
    __syncthreads();
    const u32 before = (warp > 0 ? buf[warp - 1] : 0u) + x - v;
    total = buf[TK_WARPS - 1];
    __syncthreads();  // buf may be reused right after
    return before;
}

// Find the bin of `hist` (nbins = 1024 * per-thread bins) holding the `want`-th largest entry, counting
// from the highest bin: writes the bin to misc[0] and the count of entries in higher bins to misc[1].
// Requires sum(hist) >= want >= 1.
template <int NB>
__device__ __forceinline__ void tk_select_bin(const u32* hist, u32 want, u32* scan_buf, u32* misc) {
    const int nbins = NB * TK_THREADS;
    const int top = nbins - 1 - threadIdx.x * NB;  // this thread owns bins top, top-1, .., top-NB+1
    u32 mine = 0;
#pragma unroll
    for (int j = 0; j < NB; j++) mine += hist[top - j];
    u32 total;
    u32 above = tk_scan(mine, scan_buf, total);
    if (above < want && above + mine >= want) {
#pragma unroll
        for (int j = 0; j < NB; j++) {
            const u32 c = hist[top - j];
            if (above + c >= want) {
                misc[0] = (u32)(top - j);
                misc[1] = above;
                break;
            }
            above += c;
        }
    }
    __syncthreads();
}

// Visit every score of the row (positions < n) with f(key, position), 16 consecutive scores per thread per
// step, four 16-byte loads in flight. Rows start 16-byte aligned (stride Lp, a multiple of 4).
template <typename F>
__device__ __forceinline__ void tk_for_row(const float* __restrict__ row, int n, F f) {
    for (int base = threadIdx.x * TK_PER; base < n; base += TK_THREADS * TK_PER) {
        float4 v[TK_PER / 4];
#pragma unroll
        for (int u = 0; u < TK_PER / 4; u++)
            if (base + 4 * u < n) v[u] = *reinterpret_cast<const float4*>(row + base + 4 * u);
#pragma unroll
        for (int u = 0; u < TK_PER / 4; u++) {
            const int i = base + 4 * u;
            if (i + 0 < n) f(tk_key(v[u].x), i + 0);
            if (i + 1 < n) f(tk_key(v[u].y), i + 1);
            if (i + 2 < n) f(tk_key(v[u].z), i + 2);
            if (i + 3 < n) f(tk_key(v[u].w), i + 3);
        }
    }
}

extern "C" __global__ void __launch_bounds__(TK_THREADS, 1)
    topk_radix(const float* __restrict__ scores, int* __restrict__ out, int q_len, int L, int Lp, int k) {
    extern __shared__ __align__(16) u32 tk_smem[];
    u32* hist = tk_smem;
    u32* cand = hist + TK_BINS1;
    u32* scan_buf = cand + TK_CAP;
    u32* misc = scan_buf + TK_WARPS;  // [0] bin, [1] above, [2] candidate count

    const int tid = threadIdx.x;
    const size_t row_id = (size_t)blockIdx.y * q_len + blockIdx.x;
    const int n = L - q_len + blockIdx.x + 1;  // visible keys
    const float* row = scores + row_id * (size_t)Lp;
    int* dst = out + row_id * (size_t)k;

    if (n <= k) {
        for (int j = tid; j < k; j += TK_THREADS) dst[j] = j < n ? j : -1;
        return;
    }

    // 1. top 12 bits.
    for (int j = tid; j < TK_BINS1; j += TK_THREADS) hist[j] = 0;
    __syncthreads();
    tk_for_row(row, n, [&](u32 key, int) { atomicAdd(&hist[key >> 20], 1u); });
    __syncthreads();
    tk_select_bin<TK_BINS1 / TK_THREADS>(hist, (u32)k, scan_buf, misc);
    const u32 b1 = misc[0];
    u32 above = misc[1];
    const u32 want1 = (u32)k - above;
    const u32 count1 = hist[b1];
    const bool in_smem = count1 <= TK_CAP;
    __syncthreads();

    // 2. the keys of bin b1 into shared memory (when they fit).
    if (in_smem) {
        if (tid == 0) misc[2] = 0;
        __syncthreads();
        tk_for_row(row, n, [&](u32 key, int) {
            if ((key >> 20) == b1) cand[atomicAdd(&misc[2], 1u)] = key;
        });
    }
    // Bits 19..10 among keys with prefix b1, then bits 9..0 among keys with prefix (b1, b2).
    u32 prefix = b1;  // the digits resolved so far
    u32 want = want1;
#pragma unroll 1
    for (int level = 0; level < 2; level++) {
        const int shift = level == 0 ? 10 : 0;      // bit position of this digit
        const int pshift = shift + 10;              // bits below the prefix
        for (int j = tid; j < TK_BINS2; j += TK_THREADS) hist[j] = 0;
        __syncthreads();
        if (in_smem) {
            for (u32 c = tid; c < count1; c += TK_THREADS) {
                const u32 key = cand[c];
                if ((key >> pshift) == prefix) atomicAdd(&hist[(key >> shift) & 1023u], 1u);
            }
        } else {
            tk_for_row(row, n, [&](u32 key, int) {
                if ((key >> pshift) == prefix) atomicAdd(&hist[(key >> shift) & 1023u], 1u);
            });
        }
        __syncthreads();
        tk_select_bin<TK_BINS2 / TK_THREADS>(hist, want, scan_buf, misc);
        const u32 bin = misc[0];
        above += misc[1];
        want -= misc[1];
        prefix = (prefix << 10) | bin;
        __syncthreads();
    }
    const u32 T = prefix;                      // the k-th largest key
    const u32 need_eq = (u32)k - above;        // keys equal to T to keep (the first ones by position)

    // 3. compaction in position order.
    u32 gt_run = 0, eq_run = 0;
    for (int base0 = 0; base0 < n; base0 += TK_THREADS * TK_PER) {
        const int base = base0 + tid * TK_PER;
        u32 gtm = 0, eqm = 0;  // bit j: score base+j is > T / == T
        if (base < n) {
            float4 v[TK_PER / 4];
#pragma unroll
            for (int u = 0; u < TK_PER / 4; u++)
                if (base + 4 * u < n) v[u] = *reinterpret_cast<const float4*>(row + base + 4 * u);
#pragma unroll
            for (int u = 0; u < TK_PER / 4; u++) {
                const float e[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
                for (int m = 0; m < 4; m++) {
                    const int j = 4 * u + m;
                    if (base + j < n) {
                        const u32 key = tk_key(e[m]);
                        gtm |= (u32)(key > T) << j;
                        eqm |= (u32)(key == T) << j;
                    }
                }
            }
        }
        u32 total;
        const u32 before = tk_scan(((u32)__popc(gtm) << 16) | (u32)__popc(eqm), scan_buf, total);
        u32 gt_b = gt_run + (before >> 16), eq_b = eq_run + (before & 0xFFFFu);
#pragma unroll
        for (int j = 0; j < TK_PER; j++) {
            if ((gtm >> j) & 1u) {
                dst[gt_b + min(eq_b, need_eq)] = base + j;
                gt_b++;
            } else if ((eqm >> j) & 1u) {
                if (eq_b < need_eq) dst[gt_b + eq_b] = base + j;
                eq_b++;
            }
        }
        gt_run += total >> 16;
        eq_run += total & 0xFFFFu;
    }
}
