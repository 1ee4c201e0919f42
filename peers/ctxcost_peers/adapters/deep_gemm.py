"""DeepGEMM's lightning-indexer kernel (``deep_gemm.fp8_mqa_logits``) as the DSA indexer, with
``torch.topk`` and an eager-PyTorch sparse MQA (f32 over the dequantised FP8 latents) after it.
Precision fp8 only (the kernel's operands are e4m3).

FP8 operands as the reference rounds them: indexer keys in e4m3 with a power-of-two scale per
token (passed as the kernel's per-key scale), indexer queries in e4m3 with a power-of-two
scale per head, folded into the head weights (``w * relu(s * x) == (w * s) * relu(x)`` for
s > 0, exact for powers of two). One kernel call per sequence, each query row given the key
range [0, position]. Not installed on the project's GPU machine: there it answers
``unavailable``.
"""

from .torch_common import TorchAdapter
from .torch_eager import DsaParts
from ..generate import quant_e4m3_torch

HINT = (
    "deep_gemm is not installed: build DeepGEMM from source "
    "(git clone --recursive https://github.com/deepseek-ai/DeepGEMM && cd DeepGEMM && ./install.sh)"
)


class DeepGemmDsa(DsaParts, TorchAdapter):
    id = "deep-gemm"
    method = "dsa"
    precisions = ("fp8",)
    needs_cuda = True
    extra_library = (("deep_gemm", HINT),)

    def build(self, case):
        torch = self.torch
        s = case.shape
        B, q, L, H = case.batch, case.query_len, case.context, s.heads
        self.set_matmul_precision(False)
        self.pos = torch.arange(L - q, L, device=self.dev)
        qc, qs = quant_e4m3_torch(torch, self.tensor("index_q", torch.float32).view(B, q, s.index_heads, s.index_dim), "pow2")
        kc, ks = quant_e4m3_torch(torch, self.tensor("index_k", torch.float32).view(B, L, s.index_dim), "pow2")
        self.q_fp8, self.k_fp8, self.k_scale = qc, kc, ks.float().contiguous()
        self.weights = (self.tensor("index_w", torch.float32).view(B, q, s.index_heads) * qs).contiguous()
        self.ks = torch.zeros(q, dtype=torch.int32, device=self.dev)
        self.ke = (self.pos + 1).to(torch.int32)
        # attention operands: bf16 queries, the latent as the fp8 case rounds it (f32)
        self.Q = self.tensor("mqa_q", torch.bfloat16).float().view(B, q, H, s.mqa_kv_dim)
        lat = self.tensor("latent", torch.float32)
        head, sc = quant_e4m3_torch(torch, lat[..., : s.kv_lora_rank].reshape(B, L, -1, 128), "fp32")
        deq = (head.float() * sc[..., None]).reshape(B, L, s.kv_lora_rank)
        self.KV = torch.cat([deq, lat[..., s.kv_lora_rank :].to(torch.bfloat16).float()], -1)
        del lat, head, deq

    def unsupported_reason(self, case):
        r = TorchAdapter.unsupported_reason(self, case)
        if r:
            return r
        if case.shape.kv_lora_rank % 128:
            return "the FP8 latent uses 128-dim blocks; kv_lora_rank %d is not a multiple" % case.shape.kv_lora_rank
        return None

    def indexer(self, i0, i1):
        import deep_gemm

        torch = self.torch
        c = self.case
        vis = c.context - c.query_len + i1
        rows = []
        for b in range(c.batch):
            logits = deep_gemm.fp8_mqa_logits(
                self.q_fp8[b, i0:i1].contiguous(),
                (self.k_fp8[b, :vis].contiguous(), self.k_scale[b, :vis].contiguous()),
                self.weights[b, i0:i1].contiguous(),
                self.ks[i0:i1],
                self.ke[i0:i1],
            )
            rows.append(logits[:, :vis])
        sc = torch.stack(rows).float()
        return sc.masked_fill_(torch.arange(vis, device=self.dev)[None, :] > self.pos[i0:i1, None], float("-inf"))

    def compute(self):
        self.dsa_loop(lambda i0, i1, sel: self.attention(i0, i1, sel, self.Q, self.KV))
