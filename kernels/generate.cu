// generate.cu: case inputs made on the device from the seeded generator (common.cuh).
//
// Every tensor is logically [B, R, H, D] (row-major; ctxcost-core's [B, rows, H*D]): element
// (b, r, h, d) has generator index ((b*R + r)*H + h)*D + d. The kernels write it either in
// that order or head-major, [B, H, R, D], which the prefill kernel reads. Values are rounded
// to bf16 as ctxcost_core::numeric::round_bf16 does.

// One thread writes 8 consecutive d (one 16-byte store); D must be a multiple of 8.
extern "C" __global__ void gen_bf16(u16* __restrict__ out, u64 seed, u64 stream, int B, int R, int H, int D,
                                    int head_major) {
    const u64 base = stream_base(seed, stream);
    const u64 chunks_per_row = (u64)(D / 8);
    const u64 total = (u64)B * R * H * chunks_per_row;
    for (u64 c = (u64)blockIdx.x * blockDim.x + threadIdx.x; c < total; c += (u64)gridDim.x * blockDim.x) {
        // c enumerates the physical layout.
        u64 d8 = c % chunks_per_row;
        u64 rest = c / chunks_per_row;
        u64 b, r, h;
        if (head_major) {
            r = rest % R;
            rest /= R;
            h = rest % H;
            b = rest / H;
        } else {
            h = rest % H;
            rest /= H;
            r = rest % R;
            b = rest / R;
        }
        u64 logical = (((b * R + r) * H + h) * D) + d8 * 8;
        u32 w[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            u32 lo = f32_to_bf16_rne(uniform_at(base, logical + 2 * k));
            u32 hi = f32_to_bf16_rne(uniform_at(base, logical + 2 * k + 1));
            w[k] = lo | (hi << 16);
        }
        *reinterpret_cast<uint4*>(out + c * 8) = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

// The FP8 latent cache (FlashMLA-like, 656 bytes per token for the V3.2 geometry):
// [latent e4m3 (LAT bytes)] [LAT/128 fp32 scales] [ROPE bf16].
// Each 128-dim block of the latent has scale s = max(amax, 1e-12) / 448 and codes
// round_e4m3(x / s), as ctxcost_core::numeric::fake_quant_e4m3(ScaleKind::Fp32); the RoPE dims
// are bf16. One warp per token; LAT must be a multiple of 128 and ROPE of 2.
extern "C" __global__ void gen_latent_fp8(u8* __restrict__ out, u64 seed, u64 stream, int B, int L, int LAT,
                                          int ROPE) {
    const u64 base = stream_base(seed, stream);
    const int lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5;
    const int D = LAT + ROPE;
    const int row_bytes = LAT + 4 * (LAT / 128) + 2 * ROPE;
    const u64 rows = (u64)B * L;
    for (u64 row = (u64)blockIdx.x * warps + (threadIdx.x >> 5); row < rows; row += (u64)gridDim.x * warps) {
        u8* dst = out + row * row_bytes;
        float* scales = reinterpret_cast<float*>(dst + LAT);
        u16* rope = reinterpret_cast<u16*>(dst + LAT + 4 * (LAT / 128));
        const u64 first = row * D;
        for (int blk = 0; blk < LAT / 128; blk++) {
            float v[4];
            float amax = 0.0f;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                v[k] = uniform_at(base, first + blk * 128 + lane * 4 + k);
                amax = fmaxf(amax, fabsf(v[k]));
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
            float s = __fdiv_rn(fmaxf(amax, 1e-12f), E4M3_MAX);
            u32 packed = 0;
#pragma unroll
            for (int k = 0; k < 4; k++) packed |= e4m3_bits(round_e4m3(__fdiv_rn(v[k], s))) << (8 * k);
            *reinterpret_cast<u32*>(dst + blk * 128 + lane * 4) = packed;
            if (lane == 0) scales[blk] = s;
        }
        for (int k = lane; k < ROPE; k += 32) rope[k] = f32_to_bf16_rne(uniform_at(base, first + LAT + k));
    }
}

// Device-to-device copy for the bandwidth ceiling (16-byte accesses, grid-stride).
extern "C" __global__ void copy_u4(const uint4* __restrict__ src, uint4* __restrict__ dst, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) dst[i] = src[i];
}
