"""``torch-rest``: the rest of a layer in PyTorch on a CUDA GPU, every GEMM of the plan the
runner sends, timed per component with CUDA events after the L2 flush.

- bf16 GEMMs: ``torch.matmul`` on bf16 operands (batched for the per-head absorbed products),
  fp32 accumulation (reduced-precision bf16 reductions off), bf16 output.
- FP8 GEMMs (``fp8`` cases, the GEMMs the plan marks ``fp8``): ``torch._scaled_mm`` with
  block scales, DeepSeek-V3's recipe: the weight is an FP8 checkpoint (e4m3 codes and one fp32
  scale per 128 x 128 block, generated on the GPU in ``prepare``); the bf16 activations are
  quantised in torch inside the timed span, in 1 x 128 groups along k (fp32 scale
  ``max(amax, 1e-12) / 448``, e4m3 codes by the rounding cast after a clamp to +-448), as
  ``rest-cuda`` does; output bf16. Operand padding (zero rows and columns, see
  :func:`ctxcost_peers.rest.fp8_padded_dims`) is laid out once in ``prepare``.

Every operand is generated on the GPU from the shared generator in ``prepare``; nothing is
generated or copied from the host inside the timed span. Where ``torch._scaled_mm`` refuses
block scales (torch or CUDA too old, not a Hopper GPU), fp8 cases are declined with torch's
own words (one probe per worker).
"""

from ..generate import E4M3_MAX, div_exact, uniform_torch
from ..protocol import Unsupported
from ..rest import (
    FP8_BLOCK,
    WEIGHT_SCALE_LAYOUTS,
    activation_scale_operand,
    fp8_padded_dims,
    generate_torch,
    spans,
    weight_scale_operand,
)
from .torch_common import TorchAdapter


def quantise_1x128(torch, x):
    """Quantise ``x`` ``[rows, kp]`` (bf16, contiguous, ``kp`` a multiple of 128) in 1 x 128
    groups: the fp32 scales ``[rows, kp / 128]`` and the e4m3 codes ``[rows, kp]``. The cast
    to ``float8_e4m3fn`` rounds to nearest even; the clamp first makes it saturate at 448 as
    the definition does."""
    rows, kp = x.shape
    xg = x.view(rows, kp // FP8_BLOCK, FP8_BLOCK).float()
    s = div_exact(torch, xg.abs().amax(dim=-1).clamp_min(1e-12), E4M3_MAX)
    q = (xg / s.unsqueeze(-1)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(rows, kp)
    return s, q


def weight_codes(torch, u):
    """e4m3 weight codes (as ``float8_e4m3fn``) of generator values ``u``: ``e4m3(448 u)``;
    ``|448 u| < 448``, so the rounding cast never saturates."""
    return (E4M3_MAX * u).to(torch.float8_e4m3fn)


def weight_scales(torch, case, g, device):
    """The fp32 128 x 128 block scales ``[ceil(k/128), ceil(n/128)]`` of an FP8 GEMM."""
    kb, nb = g.blocks
    u = uniform_torch(torch, case.seed, g.weight_scale_stream, 0, kb * nb, device)
    return div_exact(torch, 1.5 + 0.5 * u, E4M3_MAX).view(kb, nb)


def one_line(exc, limit=800):
    text = " ".join(str(exc).split())
    text = text if len(text) <= limit else text[:limit] + " ..."
    return "%s: %s" % (type(exc).__name__, text)


def probe_blockwise_fp8(torch, device):
    """'' when ``torch._scaled_mm`` runs a small block-scaled FP8 product correctly here, else
    why not (torch's exception text)."""
    try:
        m, k, n = 16, 512, 256
        a = torch.ones(m, k, device=device).to(torch.float8_e4m3fn)
        b = torch.ones(n, k, device=device).to(torch.float8_e4m3fn)  # b.t(): [k, n] column-major
        sa = activation_scale_operand(torch.full((m, k // FP8_BLOCK), 0.5, device=device), lambda s: torch.empty(s, device=device))
        sb = weight_scale_operand(torch.full((k // FP8_BLOCK, n // FP8_BLOCK), 0.25, device=device), lambda s: torch.zeros(s, device=device))
        out = torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
        torch.cuda.synchronize()
        got = float(out.float()[0, 0])
        if got != k * 0.125:
            return "a probe product (ones, scales 0.5 and 0.25, k = %d) gave %r instead of %r" % (k, got, k * 0.125)
        return ""
    except Exception as e:
        return one_line(e)


class TorchRest(TorchAdapter):
    id = "torch-rest"
    method = "rest"
    precisions = ("bf16", "fp8")
    needs_cuda = True

    def __init__(self):
        TorchAdapter.__init__(self)
        self._fp8_refusal = None
        self.ops = None

    def fp8_refusal(self):
        """Why block-scaled FP8 cannot run here ('' when it can); probed once."""
        if self._fp8_refusal is None:
            self._fp8_refusal = probe_blockwise_fp8(self.torch, self.dev)
        return self._fp8_refusal

    def unsupported_reason(self, case):
        r = TorchAdapter.unsupported_reason(self, case)
        if r:
            return r
        if case.precision == "fp8" and (case.gemms is None or any(g.fp8 for g in case.gemms)):
            why = self.fp8_refusal()
            if why:
                return "torch._scaled_mm refuses block-scaled FP8 here (1 x 128 activation groups, 128 x 128 weight blocks): %s" % why
        return None

    # -- prepare --------------------------------------------------------------------------
    def build(self, case):
        torch = self.torch
        # fp32 accumulation end to end, as cuBLAS runs rest-cuda's GEMMs.
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        self.gemms = case.gemms
        self.spans = spans(self.gemms)
        self.ops = []
        try:
            for g in self.gemms:
                self.ops.append(self.build_fp8(case, g) if g.fp8 else self.build_bf16(case, g))
        except BaseException:
            self.release()
            raise

    def generated(self, case, stream, count, dtype, convert):
        torch = self.torch
        out = torch.empty(count, dtype=dtype, device=self.dev)
        return generate_torch(torch, case.seed, stream, count, self.dev, convert, out)

    def build_bf16(self, case, g):
        torch = self.torch
        bf16 = torch.bfloat16
        x = self.generated(case, g.input_stream, g.batch * g.m * g.k, bf16, lambda v: v.to(bf16)).view(g.batch, g.m, g.k)
        w = self.generated(case, g.weight_stream, g.batch * g.k * g.n, bf16, lambda v: v.to(bf16)).view(g.batch, g.k, g.n)
        if g.batch == 1:
            x2, w2 = x[0], w[0]
            return lambda: torch.matmul(x2, w2)
        return lambda: torch.matmul(x, w)

    def build_fp8(self, case, g):
        torch = self.torch
        dev = self.dev
        mp, kp, np_ = fp8_padded_dims(g)
        # Activations: bf16 in a zero-padded [mp, kp] buffer (zero rows for the few tokens of an
        # expert, zero columns up to a whole last group), quantised by every run.
        x = torch.zeros(mp, kp, dtype=torch.bfloat16, device=dev)
        x[: g.m, : g.k] = self.generated(case, g.input_stream, g.m * g.k, torch.bfloat16, lambda v: v.to(torch.bfloat16)).view(g.m, g.k)
        # Weights: e4m3 codes [k, n] stored transposed ([np, kp], zero-padded), so that
        # wt.t() is the column-major [kp, np] operand _scaled_mm wants. Moved as bytes.
        codes = self.generated(case, g.weight_stream, g.k * g.n, torch.uint8, lambda v: weight_codes(torch, v).view(torch.uint8))
        wt = torch.zeros(np_, kp, dtype=torch.uint8, device=dev)
        wt[: g.n, : g.k] = codes.view(g.k, g.n).t()
        del codes
        mat2 = wt.view(torch.float8_e4m3fn).t()
        scales = weight_scales(torch, case, g, dev)

        def empty(shape):
            return torch.empty(shape, dtype=torch.float32, device=dev)

        def zeros(shape):
            return torch.zeros(shape, dtype=torch.float32, device=dev)

        def run_with(sb):
            s, q = quantise_1x128(torch, x)
            return torch._scaled_mm(q, mat2, scale_a=activation_scale_operand(s, empty), scale_b=sb, out_dtype=torch.bfloat16)

        # The weight-scale layout this torch accepts (WEIGHT_SCALE_LAYOUTS), chosen here,
        # untimed; the first layout torch takes is the one verification then checks.
        refusals = []
        for pad, whole in WEIGHT_SCALE_LAYOUTS:
            sb = weight_scale_operand(scales, zeros, pad, whole)
            try:
                run_with(sb)
                torch.cuda.synchronize()
            except RuntimeError as e:
                if "out of memory" in str(e).lower():
                    raise
                refusals.append("scales %s padded to %d: %s" % ("whole" if whole else "lead", pad, one_line(e, 400)))
                continue
            return lambda: run_with(sb)
        raise Unsupported("torch._scaled_mm refuses the block scales of %s: %s" % (g.describe(), "; ".join(refusals)))

    # -- run ------------------------------------------------------------------------------
    def compute(self):
        self.outs = None
        outs = [None] * len(self.ops)
        for component, first, end in self.spans:
            self.part(component)
            for i in range(first, end):
                outs[i] = self.ops[i]()
        self.outs = outs

    def gemm_output(self, i):
        g, out = self.gemms[i], self.outs[i]
        if g.fp8:
            return out[: g.m, : g.n].unsqueeze(0)
        return out.unsqueeze(0) if out.dim() == 2 else out

    # -- bit identity ---------------------------------------------------------------------
    def gemm_operands(self, case, g, input_rows, weight_rows):
        """The ``gemm_operands`` answer from this adapter's own device path (generation,
        weight codes and scales, and the activation quantisation of the timed span)."""
        self.check_available()
        torch, dev = self.torch, self.dev

        def rows(stream, starts, width):
            if not starts:
                return torch.zeros(0, width, dtype=torch.float32, device=dev)
            return torch.stack([uniform_torch(torch, case.seed, stream, s, width, dev) for s in starts])

        def bits(t):
            return (t.float().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF).cpu().tolist()

        x = rows(g.input_stream, [(b * g.m + r) * g.k for b, r in input_rows], g.k)
        if case.precision != "f32":
            x = x.to(torch.bfloat16)
        w = rows(g.weight_stream, [(b * g.k + r) * g.n for b, r in weight_rows], g.n)
        if g.fp8:
            w = weight_codes(torch, w)
        elif case.precision != "f32":
            w = w.to(torch.bfloat16)
        out = {"input_bits": bits(x), "weight_bits": bits(w), "weight_scale_bits": None, "input_scale_bits": None, "input_code_bits": None}
        if g.fp8:
            _, kp, _ = fp8_padded_dims(g)
            xp = torch.zeros(len(input_rows), kp, dtype=torch.bfloat16, device=dev)
            xp[:, : g.k] = x
            s, q = quantise_1x128(torch, xp)
            out["weight_scale_bits"] = bits(weight_scales(torch, case, g, dev))
            out["input_scale_bits"] = bits(s)
            out["input_code_bits"] = bits(q.float()[:, : g.k])
        return out

    def release(self):
        self.ops = None
        self.outs = None
        self.gemms = None
        TorchAdapter.release(self)
