// rest_fp8.cu: the FP8 operands of the `rest` engines' block-scaled GEMMs (cuBLASLt,
// CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F for weights, VEC128_32F for activations), as
// ctxcost_core::rest defines them.
//
// Weights are an FP8 checkpoint made on the device: the logical weight is [K, N] (row-major,
// generator index r * N + c); it is stored K-major, codes[c * K + r], the transposed operand
// cuBLASLt's FP8 GEMM wants. Code = e4m3(448 * uniform(stream, r * N + c)); block (kb, nb)
// has scale (1.5 + 0.5 * uniform(scale_stream, kb * NB + nb)) / 448, stored
// scales[nb * L4 + kb] (K-major, L4 = KB rounded up to 4; the padding is 0).
//
// Activations [M, K] bf16 are quantised in groups of 128 along K, one warp per (row, group):
// scale = max(amax, 1e-12) / 448, code = e4m3(x / scale), as ctxcost_core::rest::
// fp8_quantise_group. Codes go to q[row * K + k] for rows < M_PAD (rows >= M are zero, scale
// 1), scales to s[group * M_PAD + row] (token-major).

extern "C" __global__ void gen_fp8_weight(u8* __restrict__ codes, float* __restrict__ scales, u64 seed, u64 stream,
                                          u64 scale_stream, int K, int N, int L4) {
    const u64 base = stream_base(seed, stream);
    const u64 total = (u64)K * N;
    const u64 step = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const u64 c = i / K, r = i % K;  // i walks the stored (K-major) order
        codes[i] = (u8)e4m3_bits(round_e4m3(__fmul_rn(E4M3_MAX, uniform_at(base, r * N + c))));
    }
    const int KB = (K + 127) / 128, NB = (N + 127) / 128;
    const u64 sbase = stream_base(seed, scale_stream);
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)L4 * NB; i += step) {
        const int kb = (int)(i % L4), nb = (int)(i / L4);
        scales[i] = kb < KB
            ? __fdiv_rn(__fadd_rn(1.5f, __fmul_rn(0.5f, uniform_at(sbase, (u64)kb * NB + nb))), E4M3_MAX)
            : 0.0f;
    }
}

extern "C" __global__ void quant_fp8_groups(const u16* __restrict__ x, u8* __restrict__ q, float* __restrict__ s,
                                            int M, int M_PAD, int K) {
    const int lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5;
    const int G = (K + 127) / 128;
    const u64 items = (u64)M_PAD * G;
    for (u64 item = (u64)blockIdx.x * warps + (threadIdx.x >> 5); item < items; item += (u64)gridDim.x * warps) {
        const int row = (int)(item / G), g = (int)(item % G);
        const int k0 = g * 128;
        float v[4];
        float amax = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int k = k0 + j * 32 + lane;
            v[j] = (row < M && k < K) ? bf16_to_f32(x[(u64)row * K + k]) : 0.0f;
            amax = fmaxf(amax, fabsf(v[j]));
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float sc = row < M ? __fdiv_rn(fmaxf(amax, 1e-12f), E4M3_MAX) : 1.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int k = k0 + j * 32 + lane;
            if (k < K) q[(u64)row * K + k] = (u8)e4m3_bits(round_e4m3(__fdiv_rn(v[j], sc)));
        }
        if (lane == 0) s[(u64)g * M_PAD + row] = sc;
    }
}
