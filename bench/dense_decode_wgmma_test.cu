// Standalone check and timing of the dense decode kernels (kernels/dense_decode.cu) outside the
// engine: mma.sync (dense_decode_bf16) against wgmma (dense_decode_bf16_wgmma), both checked
// against a naive fp32 reference on sampled rows, fresh random inputs, poisoned outputs.
//
// Build (Hopper): nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o ddw bench/dense_decode_wgmma_test.cu
// Run: ddw [seed] [cases: 0 small checks, 1 all (default), 2 the B=64 16K timing case only]
// (one line per kernel and case; exit code 1 when a check fails)

#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#include <cuda.h>
#include <cstring>

#include "../kernels/common.cuh"
#include "../kernels/dense_decode.cu"

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__,       \
                   cudaGetErrorString(e_));                                                        \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

extern "C" __global__ void t_gen(u16* x, u64 n, u64 seed, u64 stream) {
    const u64 base = stream_base(seed, stream);
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        x[i] = f32_to_bf16_rne(uniform_at(base, i));
}

// Naive fp32 reference for selected rows: one CTA per row, L keys.
extern "C" __global__ void t_ref(const u16* Q, const u16* cache, const int* rows, float* out, float* scratch, int H,
                                 int L, int q_len, float scale) {
    __shared__ float q[576];
    __shared__ float red[32];
    float* sc = scratch + (size_t)blockIdx.x * L;
    const int row = rows[blockIdx.x];
    const int b = row / (q_len * H);
    const int qi = (row % (q_len * H)) / H;
    const int p = L - q_len + qi;
    for (int d = threadIdx.x; d < 576; d += blockDim.x) q[d] = bf16_to_f32(Q[(size_t)row * 576 + d]);
    __syncthreads();
    const u16* cb = cache + (size_t)b * L * 576;
    for (int k = threadIdx.x; k <= p; k += blockDim.x) {
        float acc = 0.f;
        for (int d = 0; d < 576; d++) acc += q[d] * bf16_to_f32(cb[(size_t)k * 576 + d]);
        sc[k] = acc * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int k = threadIdx.x; k <= p; k += blockDim.x) mx = fmaxf(mx, sc[k]);
    for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) mx = fmaxf(mx, red[i]);
    __syncthreads();
    float sum = 0.f;
    for (int k = threadIdx.x; k <= p; k += blockDim.x) {
        sc[k] = expf(sc[k] - mx);
        sum += sc[k];
    }
    for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
    __syncthreads();
    sum = 0.f;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) sum += red[i];
    for (int d = threadIdx.x; d < 512; d += blockDim.x) {
        float acc = 0.f;
        for (int k = 0; k <= p; k++) acc += sc[k] * bf16_to_f32(cb[(size_t)k * 576 + d]);
        out[(size_t)blockIdx.x * 512 + d] = acc / sum;
    }
}

static float bf(u16 h) {
    unsigned u = ((unsigned)h) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

struct Splits {
    int n, per;
};
static Splits splits(int sms, int B, int q, int H, int L) {
    int ctas = std::max(1, B * q * H / 64);
    int tiles = std::max(1, (L + 63) / 64);
    int want = std::min(std::max(sms / ctas, 1), tiles);
    int per = (tiles + want - 1) / want;
    return {(tiles + per - 1) / per, per};
}

static int sms = 0;

typedef CUresult (*EncodeTiled)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*, const cuuint64_t*,
                                const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The cache as a [B*L, 576] bf16 matrix, boxes of 64 rows x 64 dims, 128-byte swizzle.
static TensorMap cache_map(const u16* cache, size_t rows) {
    static EncodeTiled enc = nullptr;
    if (!enc) {
        cudaDriverEntryPointQueryResult q;
        void* fn = nullptr;
        CK(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &fn, cudaEnableDefault, &q));
        enc = (EncodeTiled)fn;
    }
    CUtensorMap m;
    cuuint64_t dims[2] = {576, rows};
    cuuint64_t strides[1] = {576 * 2};
    cuuint32_t box[2] = {64, 64};
    cuuint32_t es[2] = {1, 1};
    CUresult r = enc(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void*)cache, dims, strides, box, es,
                     CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                     CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        printf("cuTensorMapEncodeTiled failed: %d\n", (int)r);
        exit(2);
    }
    TensorMap d;
    memcpy(&d, &m, sizeof(d));
    return d;
}
static bool failed = false;

// One case: both kernels checked against the reference on `nref` sampled rows, then timed.
static void run_case(int B, int L, int q, int nref, int iters, u64 seed) {
    const int H = 128;
    const size_t rows = (size_t)B * q * H;
    const size_t cache_n = (size_t)B * L * 576;
    u16 *dQ, *dC, *dOut;
    float *ws_o = nullptr, *ws_ml = nullptr, *dRef;
    int* dRows;
    CK(cudaMalloc(&dQ, rows * 576 * 2));
    CK(cudaMalloc(&dC, cache_n * 2));
    CK(cudaMalloc(&dOut, rows * 512 * 2));
    t_gen<<<sms * 8, 256>>>(dQ, rows * 576, seed, 1);
    t_gen<<<sms * 8, 256>>>(dC, cache_n, seed, 2);
    CK(cudaGetLastError());
    Splits sp = splits(sms, B, q, H, L);
    if (sp.n > 1) {
        CK(cudaMalloc(&ws_o, rows * sp.n * 512 * 4));
        CK(cudaMalloc(&ws_ml, rows * sp.n * 8));
    }
    const float scale = 1.0f / sqrtf(192.0f);
    const float scale_log2 = scale * 1.4426950408889634f;
    // Reference rows: spread over the batch, heads and query positions (first and last rows too).
    nref = (int)std::min<size_t>(nref, rows);
    std::vector<int> hrows(nref);
    u64 st = seed * 0x9E3779B97F4A7C15ull + 12345;
    for (int i = 0; i < nref; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        hrows[i] = (i == 0) ? 0 : (i == 1) ? (int)rows - 1 : (int)((st >> 33) % rows);
    }
    CK(cudaMalloc(&dRows, nref * 4));
    CK(cudaMalloc(&dRef, (size_t)nref * 512 * 4));
    CK(cudaMemcpy(dRows, hrows.data(), nref * 4, cudaMemcpyHostToDevice));
    float* dScr;
    CK(cudaMalloc(&dScr, (size_t)nref * L * 4));
    t_ref<<<nref, 256>>>(dQ, dC, dRows, dRef, dScr, H, L, q, scale);
    CK(cudaGetLastError());
    std::vector<float> ref((size_t)nref * 512);
    CK(cudaMemcpy(ref.data(), dRef, ref.size() * 4, cudaMemcpyDeviceToHost));

    const int smem_old = (3 * 64 * 576 + 64 * 64) * 2 + 4 * 64 * 4;
    const int smem_new = DW_SMEM, smem_tma = DW_SMEM_TMA;
    CK(cudaFuncSetAttribute(dense_decode_bf16, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_old));
    CK(cudaFuncSetAttribute(dense_decode_bf16_wgmma, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_new));
    CK(cudaFuncSetAttribute(dense_decode_bf16_wgmma_tma, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_tma));
    CK(cudaFuncSetAttribute(dense_decode_bf16_wgmma_pipe, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_tma));
    const TensorMap tmap = cache_map(dC, (size_t)B * L);
    dim3 grid(q * H / 64, sp.n, B);
    auto launch = [&](int which) {
        if (which == 0)
            dense_decode_bf16<<<grid, 256, smem_old>>>(dQ, dC, dOut, ws_o, (float2*)ws_ml, H, L, q, sp.n, sp.per, scale_log2);
        else if (which == 1)
            dense_decode_bf16_wgmma<<<grid, 256, smem_new>>>(dQ, dC, dOut, ws_o, (float2*)ws_ml, H, L, q, sp.n, sp.per,
                                                             scale_log2);
        else if (which == 2)
            dense_decode_bf16_wgmma_tma<<<grid, 256, smem_tma>>>(tmap, dQ, dC, dOut, ws_o, (float2*)ws_ml, H, L, q, sp.n,
                                                                 sp.per, scale_log2);
        else
            dense_decode_bf16_wgmma_pipe<<<grid, 256, smem_tma>>>(tmap, dQ, dC, dOut, ws_o, (float2*)ws_ml, H, L,
                                                                          q, sp.n, sp.per, scale_log2);
        if (sp.n > 1) dense_decode_combine<<<rows, 128>>>(ws_o, (float2*)ws_ml, dOut, sp.n, scale_log2);
    };
    static const char* names[4] = {"mma", "wgmma", "wgmma_tma", "wgmma_pip"};
    std::vector<u16> outs[4];
    for (int which = 0; which < 4; which++) {
        CK(cudaMemset(dOut, 0xFF, rows * 512 * 2));
        launch(which);
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        std::vector<u16>& h = outs[which];
        h.resize(rows * 512);
        CK(cudaMemcpy(h.data(), dOut, h.size() * 2, cudaMemcpyDeviceToHost));
        size_t nonfinite = 0;
        for (u16 v : h)
            if (!std::isfinite(bf(v))) nonfinite++;
        double num = 0, den = 0, maxabs = 0;
        for (int i = 0; i < nref; i++)
            for (int d = 0; d < 512; d++) {
                double a = bf(h[(size_t)hrows[i] * 512 + d]), r = ref[(size_t)i * 512 + d];
                num += (a - r) * (a - r);
                den += r * r;
                maxabs = std::max(maxabs, std::fabs(a - r));
            }
        double rel = std::sqrt(num / std::max(den, 1e-30));
        bool ok = nonfinite == 0 && rel < 1e-2;
        // Repeat: the same inputs must give the same bits (a race shows as a change).
        CK(cudaMemset(dOut, 0xFF, rows * 512 * 2));
        launch(which);
        CK(cudaDeviceSynchronize());
        std::vector<u16> again(rows * 512);
        CK(cudaMemcpy(again.data(), dOut, again.size() * 2, cudaMemcpyDeviceToHost));
        bool same = again == h;
        ok = ok && same;
        if (!ok) failed = true;
        // Timing: median of `iters` launches (each with its combine).
        float med = 0;
        if (iters > 0) {
            cudaEvent_t e0, e1;
            CK(cudaEventCreate(&e0));
            CK(cudaEventCreate(&e1));
            std::vector<float> ts;
            for (int it = 0; it < iters + 2; it++) {
                CK(cudaEventRecord(e0));
                launch(which);
                CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1));
                float ms;
                CK(cudaEventElapsedTime(&ms, e0, e1));
                if (it >= 2) ts.push_back(ms);
            }
            std::sort(ts.begin(), ts.end());
            med = ts[ts.size() / 2];
        }
        double flops = 2.0 * rows * (double)L * (576 + 512);
        double bytes = (double)B * L * 1152;
        printf("%-9s B=%-3d L=%-6d q=%d splits=%-3d ref_rows=%-4d norm_rel %.3e max_abs %.3e nonfinite %zu repeat %s -> %s",
               names[which], B, L, q, sp.n, nref, rel, maxabs, nonfinite, same ? "same" : "DIFFERENT",
               ok ? "PASS" : "FAIL");
        if (iters > 0) printf("  %.4f ms %.1f TFLOP/s %.3f TB/s", med, flops / med / 1e9, bytes / med / 1e9);
        printf("\n");
        fflush(stdout);
    }
    // Agreement of the kernels on every row.
    for (int which = 1; which < 4; which++) {
        double num = 0, den = 0;
        for (size_t i = 0; i < outs[0].size(); i++) {
            double a = bf(outs[which][i]), r = bf(outs[0][i]);
            num += (a - r) * (a - r);
            den += r * r;
        }
        printf("          %s vs mma over all %zu rows: norm_rel %.3e\n", names[which], rows,
               std::sqrt(num / std::max(den, 1e-30)));
    }
    cudaFree(dQ);
    cudaFree(dC);
    cudaFree(dOut);
    cudaFree(dRows);
    cudaFree(dRef);
    cudaFree(dScr);
    if (ws_o) cudaFree(ws_o);
    if (ws_ml) cudaFree(ws_ml);
}

int main(int argc, char** argv) {
    u64 seed = argc > 1 ? strtoull(argv[1], nullptr, 10) : 20261128ull;
    int full = argc > 2 ? atoi(argv[2]) : 1;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    sms = prop.multiProcessorCount;
    printf("%s, %d SMs, smem optin %zu, seed %llu, wgmma smem %d\n", prop.name, sms, prop.sharedMemPerBlockOptin,
           (unsigned long long)seed, DW_SMEM);
    cudaFuncAttributes fa;
    CK(cudaFuncGetAttributes(&fa, dense_decode_bf16_wgmma));
    printf("dense_decode_bf16_wgmma: %d registers, %zu local bytes\n", fa.numRegs, fa.localSizeBytes);
    if (full != 2) {  // 3: the small checks and the B=64 16K / 64K timing cases
        run_case(4, 3000, 1, 512, 0, seed ^ 1);
        run_case(2, 1000, 2, 512, 0, seed ^ 2);
        run_case(3, 777, 2, 768, 0, seed ^ 3);
        run_case(64, 100, 1, 512, 0, seed ^ 4);
        run_case(1, 65536, 1, 32, 10, seed ^ 5);
    }
    if (full >= 1) run_case(64, 16384, 1, 64, 10, seed ^ 6);
    if (full == 3) run_case(64, 65536, 1, 16, 5, seed ^ 7);
    if (full == 1) {
        run_case(64, 65536, 1, 16, 5, seed ^ 7);
        run_case(64, 16384, 2, 32, 5, seed ^ 8);
    }
    printf(failed ? "SOME CHECKS FAILED\n" : "all checks passed\n");
    return failed ? 1 : 0;
}
