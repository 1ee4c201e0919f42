"""Dense prefill through torch's fused SDPA backends: cuDNN (``cudnn-sdpa``) and
FlashAttention-2 (``flash-sdpa``, the twin for shapes cuDNN refuses).

MLA in MHA mode (V3.2: 128 heads, qk 192, v 128), the chunk's q queries at [L-q, L) over L
keys, causal with bottom-right alignment:

- q == L: ``is_causal=True`` (top-left and bottom-right coincide).
- q < L, cuDNN: torch's cuDNN path applies ``is_causal`` top-left (cudnn-frontend
  ``set_causal_mask``), and ``torch.nn.attention.bias.causal_lower_right`` only dispatches to
  the flash / mem-efficient kernels (it materialises a mask for anything else). So the adapter
  passes an explicit additive bf16 mask [1, 1, q, L] (0 / -inf), built once in prepare (its
  row stride padded to 16 bytes), which cuDNN applies as a bias.
- q < L, flash: ``causal_lower_right(q, L)`` as ``attn_mask``: torch dispatches it to the flash
  kernel with its native bottom-right causal mask. FlashAttention needs equal q/k/v head dims,
  so V is zero-padded from 128 to 192 dims in prepare and the output sliced back to 128.
"""

import warnings

from .torch_common import TorchAdapter
from ..generate import softmax_scale
from ..protocol import Unsupported

MAX_MASK_BYTES = 8 << 30


class _Sdpa(TorchAdapter):
    method = "dense"
    phases = ("prefill",)
    precisions = ("bf16",)
    needs_cuda = True
    backend_name = None
    _probe_cache = None

    def backend(self):
        from torch.nn.attention import SDPBackend

        return getattr(SDPBackend, self.backend_name)

    def unsupported_reason(self, case):
        r = TorchAdapter.unsupported_reason(self, case)
        if r:
            return r
        torch = self.torch
        major, minor = torch.cuda.get_device_capability(0)
        if major < 8:
            return "%s needs sm_80 or newer, this GPU is sm_%d%d" % (self.id, major, minor)
        r = self.shape_reason(case)
        if r:
            return r
        return self.probe(case)

    def shape_reason(self, case):
        return None

    def probe(self, case):
        """Run the backend once on small tensors of the case's head dims and mask kind; the
        error (and torch's warnings saying why a kernel was not used) is the reason."""
        s = case.shape
        key = (s.heads, s.mha_qk_dim, s.mha_v_dim, case.query_len == case.context)
        cache = self._probe_cache if self._probe_cache is not None else {}
        self._probe_cache = cache
        if key not in cache:
            torch = self.torch
            sq = 64
            sk = sq if case.query_len == case.context else sq + 64
            q = torch.zeros(1, sq, s.heads, s.mha_qk_dim, dtype=torch.bfloat16, device="cuda").transpose(1, 2)
            k = torch.zeros(1, sk, s.heads, s.mha_qk_dim, dtype=torch.bfloat16, device="cuda").transpose(1, 2)
            v = torch.zeros(1, sk, s.heads, s.mha_v_dim, dtype=torch.bfloat16, device="cuda").transpose(1, 2)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    self.attend(q, k, v, self.make_mask(sq, sk, "cuda"), s)
                    torch.cuda.synchronize()
                    cache[key] = None
                except Exception as e:
                    why = "; ".join(str(w.message) for w in caught)
                    cache[key] = "%s refuses this shape (heads %d, qk %d, v %d%s): %s%s" % (
                        self.backend_name,
                        s.heads,
                        s.mha_qk_dim,
                        s.mha_v_dim,
                        "" if sq == sk else ", chunk q < L",
                        str(e).splitlines()[0] if str(e) else type(e).__name__,
                        (" [" + why + "]") if why else "",
                    )
        return cache[key]

    def build(self, case):
        torch = self.torch
        s = case.shape
        B, q, L, H = case.batch, case.query_len, case.context, s.heads
        self.set_matmul_precision(False)
        # [B, rows, H, d] storage viewed as [B, H, rows, d]: the layout both backends take.
        self.Q = self.tensor("mha_q", torch.bfloat16).view(B, q, H, s.mha_qk_dim).transpose(1, 2)
        self.K = self.tensor("mha_k", torch.bfloat16).view(B, L, H, s.mha_qk_dim).transpose(1, 2)
        self.V = self.prepare_v(self.tensor("mha_v", torch.bfloat16).view(B, L, H, s.mha_v_dim)).transpose(1, 2)
        self.mask = self.make_mask(q, L, self.dev)

    def prepare_v(self, v):
        return v

    def compute(self):
        self.part("total")
        o = self.attend(self.Q, self.K, self.V, self.mask, self.case.shape)
        self.part(None)
        self.out = o.transpose(1, 2)[..., : self.case.shape.mha_v_dim]  # [B, q, H, v]

    def attend(self, q, k, v, mask, shape):
        import torch.nn.functional as F
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel([self.backend()]):
            if mask is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=softmax_scale(shape))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=softmax_scale(shape))


class CudnnSdpa(_Sdpa):
    id = "cudnn-sdpa"
    backend_name = "CUDNN_ATTENTION"

    def shape_reason(self, case):
        if case.query_len < case.context:
            need = case.query_len * ((case.context + 7) // 8 * 8) * 2
            if need > MAX_MASK_BYTES:
                return "the bottom-right mask for cuDNN would take %.1f GiB (q %d x L %d); use flash-sdpa" % (
                    need / 2**30,
                    case.query_len,
                    case.context,
                )
        return None

    def make_mask(self, q, L, device):
        if q == L:
            return None
        torch = self.torch
        Lp = (L + 7) // 8 * 8
        buf = torch.zeros(q, Lp, dtype=torch.bfloat16, device=device)
        m = buf[:, :L]
        pos = torch.arange(L - q, L, device=device)
        m.masked_fill_(torch.arange(L, device=device)[None, :] > pos[:, None], float("-inf"))
        return m.view(1, 1, q, L)


class FlashSdpa(_Sdpa):
    id = "flash-sdpa"
    backend_name = "FLASH_ATTENTION"

    def make_mask(self, q, L, device):
        if q == L:
            return None
        from torch.nn.attention.bias import causal_lower_right

        return causal_lower_right(q, L)

    def prepare_v(self, v):
        s = self.case.shape
        pad = s.mha_qk_dim - s.mha_v_dim
        if pad < 0:
            raise Unsupported("flash-sdpa pads v up to the qk dim; here v %d > qk %d" % (s.mha_v_dim, s.mha_qk_dim))
        if pad == 0:
            return v
        return self.torch.nn.functional.pad(v, (0, pad)).contiguous()

    def probe(self, case):
        s = case.shape
        if s.mha_qk_dim > 256:
            return "flash attention takes head dims up to 256; qk is %d" % s.mha_qk_dim
        # the probe's v is padded like the real one
        return _Sdpa.probe(self, _PaddedProbeCase(case))


class _PaddedProbeCase:
    """The case as the flash probe sees it: v padded to the qk dim."""

    def __init__(self, case):
        self.__dict__.update(case.__dict__)
        sh = type(case.shape).__new__(type(case.shape))
        sh.__dict__.update(case.shape.__dict__)
        sh.v_head_dim = case.shape.mha_qk_dim
        self.shape = sh
