"""Library baselines for dense-cuda, measured in the same run on the same GPU.

- Dense causal prefill (whole prompt, q = L): PyTorch SDPA with the cuDNN backend, 128 heads,
  qk 192 / v 128 (falls back to v 192 where the backend refuses 128), bf16.
- Dense MQA decode (batch 64, one query, 128 heads, 576/512 latent, bf16): two cuBLAS batched
  GEMMs and a softmax through PyTorch, the simplest library decode.

FLOPs count visible (query, key) pairs exactly as ctxcost's analytic model does; decode TB/s
counts the cache bytes (1152 per key) plus queries and outputs. Median of CUDA-event timed
repeats after warm-up. Prints one line per case: `baseline <name> <shape> <ms> <TFLOP/s> <TB/s>`.
"""

import sys

import torch
import torch.nn.functional as F

H = 128


def timed(fn, reps=10, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def prefill(L, backend_name, dv):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)
    g = torch.Generator(device="cuda").manual_seed(L)
    q = torch.rand(1, H, L, 192, device="cuda", dtype=torch.bfloat16, generator=g) * 2 - 1
    k = torch.rand(1, H, L, 192, device="cuda", dtype=torch.bfloat16, generator=g) * 2 - 1
    v = torch.rand(1, H, L, dv, device="cuda", dtype=torch.bfloat16, generator=g) * 2 - 1
    with sdpa_kernel([backend]):
        ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=192 ** -0.5), reps=5 if L >= 65536 else 10)
    pairs = L * (L + 1) / 2
    flops = pairs * 2 * H * (192 + dv)
    byts = 2 * H * L * (192 * 2 + dv * 2)
    return ms, flops / ms / 1e9, byts / ms / 1e9


def decode(B, L):
    g = torch.Generator(device="cuda").manual_seed(B * L)
    q = torch.rand(B, H, 576, device="cuda", dtype=torch.bfloat16, generator=g) * 2 - 1
    kv = torch.rand(B, L, 576, device="cuda", dtype=torch.bfloat16, generator=g) * 2 - 1
    scale = 192 ** -0.5

    def step():
        s = torch.bmm(q, kv.transpose(1, 2)).float() * scale
        p = torch.softmax(s, dim=-1).to(torch.bfloat16)
        return torch.bmm(p, kv[:, :, :512])

    ms = timed(step)
    flops = B * L * 2 * H * (576 + 512)
    byts = B * L * 1152 + B * H * (576 + 512) * 2
    return ms, flops / ms / 1e9, byts / ms / 1e9


def main():
    print(f"baseline device {torch.cuda.get_device_name()} torch {torch.__version__}")
    for L in (4096, 16384, 65536):
        done = False
        for dv in (128, 192):
            try:
                ms, tf, tb = prefill(L, "CUDNN_ATTENTION", dv)
                print(f"baseline sdpa-cudnn prefill L={L} q={L} H={H} qk=192 v={dv} {ms:.3f} ms {tf:.1f} TFLOP/s {tb:.3f} TB/s")
                done = True
                break
            except Exception as e:  # backend refused this shape
                print(f"baseline sdpa-cudnn prefill L={L} v={dv} unavailable: {str(e).splitlines()[0][:160]}")
        if not done:
            continue
        torch.cuda.empty_cache()
    for L in (16384, 65536):
        try:
            ms, tf, tb = decode(64, L)
            print(f"baseline torch-bmm decode L={L} B=64 q=1 H={H} {ms:.3f} ms {tf:.1f} TFLOP/s {tb:.3f} TB/s")
        except Exception as e:
            print(f"baseline torch-bmm decode L={L} unavailable: {str(e).splitlines()[0][:160]}")
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
