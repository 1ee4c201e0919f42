"""FlashInfer's MLA decode (``flashinfer.mla.BatchMLAPagedAttentionWrapper``, backend ``fa3`` on
sm_90) as the dense decode engine: MQA mode over a paged latent cache split into the 512-dim
compressed KV and the 64-dim RoPE part, bf16.

FlashInfer's FP8 MLA cache is scaled per tensor, not per 128-dim block as the harness's fp8
case (the 656-byte FlashMLA format) is, so fp8 is declined rather than compared unlike with
unlike. Not installed on the project's GPU machine: there it answers ``unavailable``.
"""

from .torch_common import TorchAdapter
from ..generate import softmax_scale

HINT = "flashinfer is not installed: pip install flashinfer-python (matching your torch and CUDA)"


class FlashInferMla(TorchAdapter):
    id = "flashinfer"
    method = "dense"
    phases = ("decode",)
    precisions = ("bf16",)
    needs_cuda = True
    extra_library = (("flashinfer", HINT),)

    def unsupported_reason(self, case):
        r = TorchAdapter.unsupported_reason(self, case)
        if r:
            return r
        if case.shape.kv_lora_rank != 512 or case.shape.qk_rope_dim != 64:
            return "FlashInfer's MLA kernels are built for latent 512 + RoPE 64 (DeepSeek geometry)"
        return None

    def build(self, case):
        import flashinfer

        torch = self.torch
        s = case.shape
        B, q, L, H = case.batch, case.query_len, case.context, s.heads
        lat, rope = s.kv_lora_rank, s.qk_rope_dim
        page = 64 if L % 64 == 0 else 1
        pages = L // page
        kv = self.tensor("latent", torch.bfloat16).view(B * pages, page, lat + rope)
        self.ckv = kv[..., :lat].contiguous()
        self.kpe = kv[..., lat:].contiguous()
        del kv
        mq = self.tensor("mqa_q", torch.bfloat16).view(B * q, H, lat + rope)
        self.q_nope = mq[..., :lat].contiguous()
        self.q_pe = mq[..., lat:].contiguous()
        del mq
        i32 = dict(dtype=torch.int32, device=self.dev)
        self.ws = torch.empty(128 << 20, dtype=torch.int8, device=self.dev)
        major, _ = torch.cuda.get_device_capability(0)
        self.wrapper = flashinfer.mla.BatchMLAPagedAttentionWrapper(self.ws, backend="fa3" if major == 9 else "auto")
        self.wrapper.plan(
            torch.arange(B + 1, **i32) * q,
            torch.arange(B + 1, **i32) * pages,
            torch.arange(B * pages, **i32),
            torch.full((B,), L, **i32),
            H,
            lat,
            rope,
            page,
            q > 1,
            softmax_scale(s),
            torch.bfloat16,
            torch.bfloat16,
        )

    def compute(self):
        c, s = self.case, self.case.shape
        self.part("total")
        o = self.wrapper.run(self.q_nope, self.q_pe, self.ckv, self.kpe)
        self.part(None)
        self.out = o.view(c.batch, c.query_len, s.heads, s.kv_lora_rank)
