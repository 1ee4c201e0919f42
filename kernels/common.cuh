// common.cuh: helpers shared by every ctxcost kernel.
//
// The engine prepends this text to each .cu source before NVRTC compiles it, so the sources
// need no include paths and no CUDA headers: integer types, the seeded input generator,
// bf16 / e4m3 rounding and the few PTX instructions the kernels use are defined here.
//
// The generator and the roundings reproduce ctxcost-core bit for bit:
// - uniform_at(stream_base(seed, stream), i) == ctxcost_core::inputs::uniform(seed, stream, i)
// - f32_to_bf16_rne == ctxcost_core::numeric::round_bf16 (as bits)
// - round_e4m3 == ctxcost_core::numeric::round_e4m3 (exact exponent instead of log2, same values)

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

#define NEG_INF (__int_as_float(0xff800000))

// ---------------------------------------------------------------- seeded inputs

__device__ __forceinline__ u64 splitmix64(u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The per-tensor base of the counter-based generator.
__device__ __forceinline__ u64 stream_base(u64 seed, u64 stream) {
    return splitmix64(seed ^ (stream * 0xD1B54A32D192ED03ull));
}

// Element `index` of a stream: uniform in [-1, 1), 24 random bits, exact in f32.
__device__ __forceinline__ float uniform_at(u64 base, u64 index) {
    u64 bits = splitmix64(base + index) >> 40;
    return __fsub_rn(__fmul_rn((float)bits, 1.0f / 8388608.0f), 1.0f);
}

// ---------------------------------------------------------------- number formats

// f32 -> bf16 bits, round to nearest even (inputs here are never NaN).
__device__ __forceinline__ u16 f32_to_bf16_rne(float x) {
    u32 b = __float_as_uint(x);
    u32 lsb = (b >> 16) & 1u;
    return (u16)((b + 0x7FFFu + lsb) >> 16);
}

__device__ __forceinline__ float bf16_to_f32(u16 h) {
    return __uint_as_float(((u32)h) << 16);
}

// Two f32 -> packed bf16x2 (lo in the low half), round to nearest even.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

#define E4M3_MAX 448.0f

// Round to the nearest e4m3 value (ties to even, saturating at +-448), as f32.
__device__ __forceinline__ float round_e4m3(float x) {
    float a = fminf(fabsf(x), E4M3_MAX);
    if (a == 0.0f) return copysignf(0.0f, x);
    int e = (int)((__float_as_uint(a) >> 23) & 0xFF) - 127;  // floor(log2 a) for normal a
    if (e < -6) e = -6;                                        // e4m3 subnormals
    float step = __uint_as_float((u32)(e - 3 + 127) << 23);   // 2^(e-3), exact
    float q = __fdiv_rn(a, step);
    float r = __fmul_rn(rintf(q), step);
    return copysignf(fminf(r, E4M3_MAX), x);
}

// Bits of an exact e4m3 value (as produced by round_e4m3).
__device__ __forceinline__ u32 e4m3_bits(float r) {
    u32 sign = (__float_as_uint(r) >> 31) << 7;
    float a = fabsf(r);
    if (a == 0.0f) return sign;
    if (a < 0.015625f) {  // below 2^-6: subnormal, mantissa in units of 2^-9
        return sign | (u32)__fmul_rn(a, 512.0f);
    }
    int e = (int)((__float_as_uint(a) >> 23) & 0xFF) - 127;
    u32 mant = (__float_as_uint(a) >> 20) & 7u;
    return sign | ((u32)(e + 7) << 3) | mant;
}

// e4m3 bits -> f32 (exact): place exponent and mantissa in an f32 and rescale by 2^120,
// which maps e4m3 subnormals onto f32 subnormals (the kernels are compiled without ftz).
__device__ __forceinline__ float e4m3_to_f32(u32 c) {
    float f = __uint_as_float(((c & 0x7Fu) << 20) | ((c & 0x80u) << 24));
    return f * __uint_as_float(0x7B800000u);  // 2^120
}

// ---------------------------------------------------------------- PTX wrappers

__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Sum, and maximum, of x over the four lanes of an MMA quad (lanes that differ in bits 0 and 1 of
// the lane id hold the same accumulator rows).
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// 16-byte global -> shared copy; `bytes` = 0 writes zeros instead (rows past the end).
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, u32 bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

// D = A * B + D, m16n8k16, bf16 inputs, f32 accumulators.
__device__ __forceinline__ void mma_bf16(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------- wgmma (sm_90a)
//
// Helpers of the warpgroup matrix instructions. A source that uses them compiles its wgmma code
// under `#if defined(__CUDA_ARCH_FEAT_SM90_ALL)` (set when NVRTC targets sm_90a) and traps otherwise.

// Shared-memory matrix descriptor: start address, LBO and SBO (all >> 4), no swizzle, base offset 0.
// No-swizzle operands are made of 8-row x 16-byte core matrices, each 128 contiguous bytes; LBO is
// the byte distance between core matrices adjacent along K, SBO along M or N (for K-major and,
// with the transpose bit, MN-major operands alike).
__device__ __forceinline__ u64 wg_desc(u32 addr, u32 lbo, u32 sbo) {
    return (u64)((addr & 0x3FFFFu) >> 4) | ((u64)((lbo & 0x3FFFFu) >> 4) << 16) | ((u64)((sbo & 0x3FFFFu) >> 4) << 32);
}

// Orders this thread's generic-proxy shared-memory writes (st.shared, cp.async) before later
// async-proxy reads (wgmma operands, bulk copies); a barrier must follow for other threads.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }
__device__ __forceinline__ void wg_wait0() { wg_wait<0>(); }
// Keeps the compiler from moving accumulator reads or writes across an asynchronous wgmma.
template <int N>
__device__ __forceinline__ void wg_fence_acc(float* d) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}
#endif

// ---------------------------------------------------------------- mbarriers, bulk and tensor copies (sm_90)
//
// The copy engine's global -> shared transfers and the transaction barriers they complete on. A stage
// of a pipeline has a `full` barrier (one arrival by the thread that posts the expected bytes, plus the
// bytes the copies deliver) and an `empty` barrier (one arrival per consumer once it is done reading).

// A tensor map (CUtensorMap, made on the host by cuTensorMapEncodeTiled), passed to a kernel by value
// as a __grid_constant__ parameter.
struct __align__(64) TensorMap {
    u64 v[16];
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void mb_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
// Makes this thread's mbarrier.init visible to the async proxy (the copy engine) and to other threads
// once a barrier follows.
__device__ __forceinline__ void mb_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
// One arrival, and `bytes` more expected on the barrier's current phase.
__device__ __forceinline__ void mb_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mb_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
// Waits until the phase of parity `parity` has completed (acquire: the data it covers is visible).
__device__ __forceinline__ void mb_wait(u32 bar, u32 parity) {
    asm volatile(
        "{\n.reg .pred p;\nMB_WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        "@!p bra MB_WAIT;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}
// One contiguous copy (bytes and both addresses multiples of 16), counted on `bar`.
__device__ __forceinline__ void bulk_g2s(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}
// One box of a 2-d tensor map at coordinates (x, y), counted on `bar` with the full box size.
__device__ __forceinline__ void tma_g2s_2d(u32 dst, const void* map, int x, int y, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(dst),
        "l"(map), "r"(x), "r"(y), "r"(bar)
        : "memory");
}
// One box of a 3-d tensor map (`map`: the generic address of a __grid_constant__ CUtensorMap) at
// coordinates (x, y, z), counted on `bar` with the full box size (elements outside the tensor are zeros).
__device__ __forceinline__ void tma_g2s_3d(u32 dst, const void* map, int x, int y, int z, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];" ::"r"(dst),
        "l"(map), "r"(x), "r"(y), "r"(z), "r"(bar)
        : "memory");
}
// Shared-memory matrix descriptor of a K-major operand in the 128-byte swizzle layout (rows of 128
// bytes, 8-row atoms of 1024 bytes at a 1024-aligned base; SBO = 1024, LBO unused for K-major).
// Within an atom a k-slice is selected by adding its byte offset (< 128) to the start address.
__device__ __forceinline__ u64 wg_desc_sw128(u32 addr) {
    return (u64)((addr & 0x3FFFFu) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) | ((u64)1 << 62);
}
#endif
