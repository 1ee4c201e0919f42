"""Dense prefill through torch SDPA's memory-efficient backend (``efficient-sdpa``): a third
library kernel for MHA-mode prefill beside cuDNN and FlashAttention. Bottom-right causal via
``causal_lower_right`` (which torch hands to this kernel natively); unequal qk / v head dims
are accepted by this backend, so V is not padded."""

from .sdpa import _Sdpa


class EfficientSdpa(_Sdpa):
    id = "efficient-sdpa"
    backend_name = "EFFICIENT_ATTENTION"

    def make_mask(self, q, L, device):
        if q == L:
            return None
        from torch.nn.attention.bias import causal_lower_right

        return causal_lower_right(q, L)
