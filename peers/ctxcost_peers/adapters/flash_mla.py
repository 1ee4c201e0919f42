"""FlashMLA (deepseek-ai/FlashMLA) as engines:

- ``flash-mla`` (dense decode, bf16): ``flash_mla_with_kvcache`` over a paged bf16 latent cache
  (blocks of 64 tokens).
- ``flash-mla-dsa`` (DSA): the indexer and top-k in eager PyTorch (as torch-eager-dsa), the
  attention in FlashMLA's sparse kernels: decode with the FP8 cache (656 bytes per token:
  512 e4m3, 4 fp32 block scales, 64 bf16 RoPE; exactly the reference's fp8 rounding) through
  ``flash_mla_with_kvcache(..., is_fp8_kvcache=True, indices=...)``; prefill in bf16 through
  ``flash_mla_sparse_fwd``. Components: indexer, topk, attention.

FlashMLA is built from source (see README.md); it is not installed on the project's GPU
machine, where both answer ``unavailable``.
"""

from .torch_common import TorchAdapter
from .torch_eager import DsaParts
from ..generate import quant_e4m3_torch, softmax_scale

HINT = (
    "flash_mla is not installed: build FlashMLA from source "
    "(git clone https://github.com/deepseek-ai/FlashMLA && cd FlashMLA && git submodule update --init --recursive "
    "&& pip install -v --no-build-isolation .)"
)
BLOCK = 64


def _geometry_reason(s):
    if s.kv_lora_rank != 512 or s.qk_rope_dim != 64:
        return "FlashMLA's kernels are built for latent 512 + RoPE 64 (DeepSeek geometry)"
    return None


def _paged(torch, x, B, L, block):
    """[B, L, D] -> [B * nb, block, 1, D] with L padded to a multiple of block (zeros)."""
    nb = (L + block - 1) // block
    if nb * block != L:
        x = torch.nn.functional.pad(x, (0, 0, 0, nb * block - L))
    return x.reshape(B * nb, block, 1, x.shape[-1]).contiguous(), nb


class FlashMlaDense(TorchAdapter):
    id = "flash-mla"
    method = "dense"
    phases = ("decode",)
    precisions = ("bf16",)
    needs_cuda = True
    extra_library = (("flash_mla", HINT),)

    def unsupported_reason(self, case):
        return TorchAdapter.unsupported_reason(self, case) or _geometry_reason(case.shape)

    def build(self, case):
        import flash_mla

        torch = self.torch
        s = case.shape
        B, q, L, H = case.batch, case.query_len, case.context, s.heads
        self.cache, nb = _paged(torch, self.tensor("latent", torch.bfloat16), B, L, BLOCK)
        self.block_table = torch.arange(B * nb, dtype=torch.int32, device=self.dev).view(B, nb)
        self.seqlens = torch.full((B,), L, dtype=torch.int32, device=self.dev)
        self.q = self.tensor("mqa_q", torch.bfloat16).view(B, q, H, s.mqa_kv_dim)
        self.meta, self.splits = flash_mla.get_mla_metadata(self.seqlens, q * H, 1)

    def compute(self):
        import flash_mla

        c, s = self.case, self.case.shape
        self.part("total")
        o, _ = flash_mla.flash_mla_with_kvcache(
            self.q, self.cache, self.block_table, self.seqlens, s.kv_lora_rank, self.meta, self.splits,
            softmax_scale=softmax_scale(s), causal=True,
        )
        self.part(None)
        self.out = o


def fp8_latent_cache(torch, latent, lat):
    """The 656-byte FP8 latent format (for lat 512, rope 64) from f32 latents [N, lat + rope]:
    e4m3 codes with an fp32 scale per 128 dims (amax / 448), RoPE in bf16."""
    n = latent.shape[0]
    codes, scales = quant_e4m3_torch(torch, latent[:, :lat].reshape(n, lat // 128, 128), "fp32")
    rope = latent[:, lat:].to(torch.bfloat16)
    return torch.cat(
        [codes.reshape(n, lat).view(torch.uint8), scales.contiguous().view(torch.uint8).reshape(n, -1), rope.view(torch.uint8)],
        dim=1,
    )


class FlashMlaDsa(DsaParts, TorchAdapter):
    id = "flash-mla-dsa"
    method = "dsa"
    precisions = ("bf16", "fp8")
    needs_cuda = True
    extra_library = (("flash_mla", HINT),)

    def unsupported_reason(self, case):
        r = TorchAdapter.unsupported_reason(self, case) or _geometry_reason(case.shape)
        if r:
            return r
        if case.phase == "decode" and case.precision != "fp8":
            return "FlashMLA's sparse decode reads the FP8 cache only: use precision fp8"
        if case.phase == "prefill" and case.precision != "bf16":
            return "FlashMLA's sparse prefill is bf16: use precision bf16"
        if case.shape.heads not in (64, 128):
            return "FlashMLA's sparse kernels take 64 or 128 query heads"
        if case.top_k % 64:
            return "FlashMLA's sparse kernels need k = min(top_k, context) to be a multiple of 64"
        return None

    def build(self, case):
        import flash_mla

        torch = self.torch
        s = case.shape
        B, q, L, H = case.batch, case.query_len, case.context, s.heads
        self.set_matmul_precision(True)  # indexer operands are bf16 or e4m3 x 2^k: exact in TF32
        self.build_dsa_inputs(case, None)
        if case.precision == "fp8":
            self.IQ = self._fp8_dequant(self.tensor("index_q", torch.float32), s.index_dim).view_as(self.IQ)
            self.IK = self._fp8_dequant(self.tensor("index_k", torch.float32), s.index_dim).view_as(self.IK)
        self.q = self.tensor("mqa_q", torch.bfloat16).view(B, q, H, s.mqa_kv_dim)
        if case.phase == "decode":
            lat32 = self.tensor("latent", torch.float32).view(B * L, s.mqa_kv_dim)
            packed = fp8_latent_cache(torch, lat32, s.kv_lora_rank).view(B, L, -1)
            del lat32
            self.cache, self.nb = _paged(torch, packed, B, L, BLOCK)
            self.meta, self.splits = flash_mla.get_mla_metadata()
        else:
            self.kv = self.tensor("latent", torch.bfloat16).view(B, L, 1, s.mqa_kv_dim)

    def _fp8_dequant(self, x, d):
        codes, s = quant_e4m3_torch(self.torch, x.reshape(-1, d), "pow2")
        return codes.float() * s[:, None]

    def compute(self):
        self.dsa_loop(self._attend)

    def _attend(self, i0, i1, sel):
        import flash_mla

        torch = self.torch
        c, s = self.case, self.case.shape
        scale = softmax_scale(s)
        if c.phase == "decode":
            base = (torch.arange(c.batch, device=self.dev) * (self.nb * BLOCK))[:, None, None]
            idx = torch.where(sel >= 0, sel + base, torch.full_like(sel, -1)).to(torch.int32)
            o, _ = flash_mla.flash_mla_with_kvcache(
                self.q[:, i0:i1].contiguous(), self.cache, None, None, s.kv_lora_rank, self.meta, None,
                softmax_scale=scale, causal=False, is_fp8_kvcache=True, indices=idx,
            )
            return o
        outs = []
        for b in range(c.batch):
            r = flash_mla.flash_mla_sparse_fwd(
                self.q[b, i0:i1].contiguous(), self.kv[b], sel[b].to(torch.int32)[:, None, :].contiguous(), scale, s.kv_lora_rank
            )
            outs.append(r[0])
        return torch.stack(outs)
