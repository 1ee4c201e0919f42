"""The rest of a layer (``rest`` cases): the GEMM plan the runner sends, and the GEMM operands
bit for bit as ctxcost builds them (core/src/rest.rs).

The plan is Rust's (``ctxcost_core::rest::plan``): the runner sends it with ``supports`` and
``prepare`` as ``gemms``, in run order, so no worker re-derives shapes or routing. Every GEMM
computes ``out[b] = input[b] (m x k) x weight[b] (k x n)``, row-major:

- input element ``[b, row, col]`` is ``uniform(seed, input_stream, (b*m + row)*k + col)``,
  weight element ``[b, row, col]`` is ``uniform(seed, weight_stream, (b*k + row)*n + col)``,
  both rounded to bf16 in ``bf16`` and ``fp8`` cases (f32 cases: unrounded);
- a GEMM with ``fp8: true`` (only in ``fp8`` cases, only with ``batch == 1``) multiplies e4m3
  weight codes ``e4m3(448 x uniform(seed, weight_stream, row*n + col))`` times one fp32 scale
  per 128 x 128 block, ``(1.5 + 0.5 x uniform(seed, weight_scale_stream, kb*ceil(n/128) + nb)) / 448``,
  with the bf16 input quantised in groups of 128 along k: ``scale = max(amax, 1e-12) / 448``
  (fp32), ``code = e4m3(x / scale)`` (nearest even, saturating at 448).

Timing components are the six names of :data:`COMPONENTS`, one per run of consecutive GEMMs
of the same component (:func:`spans`).

The torch helpers take the ``torch`` module as an argument, so importing this module never
imports torch.
"""

import numpy as np

from .generate import E4M3_MAX, e4m3_scale_np, round_bf16_np, round_e4m3_np, uniform_np, uniform_torch

#: The timing components of a rest case, in the order the plan runs them (core/src/rest.rs
#: ``Component::name``).
COMPONENTS = ("mla_proj", "indexer_proj", "router", "moe", "dense_mlp", "head")

#: Edge of an FP8 scale block: 1 x 128 activation groups, 128 x 128 weight blocks.
FP8_BLOCK = 128

_GEMM_INTS = ("batch", "m", "k", "n", "weight_stream", "input_stream", "weight_scale_stream")


def ceil_div(a, b):
    return -(-int(a) // int(b))


def round_up(a, b):
    return ceil_div(a, b) * int(b)


class Gemm:
    """One entry of the plan: ``batch`` products ``[m, k] x [k, n]``."""

    def __init__(self, d, index=None):
        where = "gemm %s" % index if index is not None else "gemm"
        if not isinstance(d, dict):
            raise ValueError("%s must be an object, got %r" % (where, d))
        missing = [f for f in ("name", "component", "fp8") + _GEMM_INTS if f not in d]
        if missing:
            raise ValueError("%s lacks field(s) %s" % (where, ", ".join(missing)))
        self.name = str(d["name"])
        self.component = str(d["component"])
        if self.component not in COMPONENTS:
            raise ValueError("%s (%s): component %r is not one of %s" % (where, self.name, self.component, ", ".join(COMPONENTS)))
        self.expert = None if d.get("expert") is None else int(d["expert"])
        for f in _GEMM_INTS:
            setattr(self, f, int(d[f]))
        self.fp8 = bool(d["fp8"])
        if min(self.batch, self.m, self.k, self.n) < 1:
            raise ValueError("%s (%s): batch, m, k and n must be positive" % (where, self.name))
        if self.fp8 and self.batch != 1:
            raise ValueError("%s (%s): an fp8 GEMM has batch 1" % (where, self.name))
        self.raw = dict(d)

    @property
    def blocks(self):
        """128-element blocks along k and along n (the last ones partial)."""
        return ceil_div(self.k, FP8_BLOCK), ceil_div(self.n, FP8_BLOCK)

    def describe(self):
        e = "" if self.expert is None else ", expert %d" % self.expert
        return "%s%s (%d x [%d x %d] x [%d x %d])" % (self.name, e, self.batch, self.m, self.k, self.k, self.n)


def parse_plan(gemms):
    """The ``gemms`` field of a request as a list of :class:`Gemm` (None stays None)."""
    if gemms is None:
        return None
    if not isinstance(gemms, list):
        raise ValueError("gemms must be a list of GEMM objects")
    return [Gemm(d, i) for i, d in enumerate(gemms)]


def spans(gemms):
    """The component spans of a plan: ``(component, first, end)`` in run order."""
    out = []
    for i, g in enumerate(gemms):
        if out and out[-1][0] == g.component:
            out[-1][2] = i + 1
        else:
            out.append([g.component, i, i + 1])
    return [tuple(s) for s in out]


def host_bytes(gemms):
    """Bytes of every input, weight and output as f32 (what a numpy worker holds)."""
    return sum(4 * g.batch * (g.m * g.k + g.k * g.n + g.m * g.n) for g in gemms)


def check_picks(gemms, picks):
    """Validate the ``output`` request of a rest case: one ``{"rows", "cols"}`` per GEMM."""
    if not isinstance(picks, list) or len(picks) != len(gemms):
        n = len(picks) if isinstance(picks, list) else "no"
        raise ValueError("output of a rest case needs one {rows, cols} per GEMM: got %s for %d GEMMs" % (n, len(gemms)))
    out = []
    for i, (g, p) in enumerate(zip(gemms, picks)):
        if not isinstance(p, dict) or not isinstance(p.get("rows"), list) or not isinstance(p.get("cols"), list):
            raise ValueError("output pick %d (%s) must be {\"rows\": [...], \"cols\": [...]}" % (i, g.name))
        rows = [int(r) for r in p["rows"]]
        cols = [int(c) for c in p["cols"]]
        if any(not 0 <= r < g.m for r in rows):
            raise ValueError("output pick %d (%s): a row is outside 0..%d" % (i, g.name, g.m))
        if any(not 0 <= c < g.n for c in cols):
            raise ValueError("output pick %d (%s): a column is outside 0..%d" % (i, g.name, g.n))
        out.append((rows, cols))
    return out


# ---------------------------------------------------------------- operands (numpy)


def _rounded(case, x):
    return x if case.precision == "f32" else round_bf16_np(x)


def input_rows_np(case, g, rows):
    """Input rows ``[(b, row), ...]`` as the GEMM reads them before any FP8 quantisation:
    float32 ``[len(rows), k]``, rounded to the case's precision."""
    if not rows:
        return np.zeros((0, g.k), np.float32)
    starts = np.array([(b * g.m + r) * g.k for b, r in rows], dtype=np.int64)
    idx = starts[:, None] + np.arange(g.k, dtype=np.int64)[None, :]
    return _rounded(case, uniform_np(case.seed, g.input_stream, idx))


def input_np(case, g):
    """The whole input ``[batch, m, k]`` (rounded to the case's precision)."""
    idx = np.arange(g.batch * g.m * g.k, dtype=np.int64)
    return _rounded(case, uniform_np(case.seed, g.input_stream, idx)).reshape(g.batch, g.m, g.k)


def weight_rows_np(case, g, rows):
    """Weight rows ``[(b, row), ...]``, all ``n`` columns: the rounded values, or for an FP8
    GEMM the e4m3 codes (as float32)."""
    if not rows:
        return np.zeros((0, g.n), np.float32)
    starts = np.array([(b * g.k + r) * g.n for b, r in rows], dtype=np.int64)
    idx = starts[:, None] + np.arange(g.n, dtype=np.int64)[None, :]
    u = uniform_np(case.seed, g.weight_stream, idx)
    if g.fp8:
        return round_e4m3_np(np.float32(E4M3_MAX) * u)
    return _rounded(case, u)


def weight_np(case, g):
    """The whole weight ``[batch, k, n]``: rounded values, or FP8 codes (float32)."""
    return weight_rows_np(case, g, [(b, r) for b in range(g.batch) for r in range(g.k)]).reshape(g.batch, g.k, g.n)


def fp8_weight_scales_np(case, g):
    """The fp32 scales of an FP8 GEMM's 128 x 128 weight blocks, ``[ceil(k/128), ceil(n/128)]``."""
    kb, nb = g.blocks
    u = uniform_np(case.seed, g.weight_scale_stream, np.arange(kb * nb, dtype=np.int64))
    return ((np.float32(1.5) + np.float32(0.5) * u) / np.float32(E4M3_MAX)).astype(np.float32).reshape(kb, nb)


def fp8_quantise_np(x):
    """Quantise rows ``[..., k]`` in groups of 128 along k, as the engines do: the fp32 scales
    ``[..., ceil(k/128)]`` and the e4m3 codes ``[..., k]`` (float32). A partial last group is
    its own group."""
    x = np.asarray(x, dtype=np.float32)
    k = x.shape[-1]
    groups = ceil_div(k, FP8_BLOCK)
    padded = np.zeros(x.shape[:-1] + (groups * FP8_BLOCK,), np.float32)
    padded[..., :k] = x  # zeros change no group's amax (and an all-zero group keeps 1e-12)
    g = padded.reshape(x.shape[:-1] + (groups, FP8_BLOCK))
    s = e4m3_scale_np(g, "fp32")
    codes = round_e4m3_np(g / s[..., None]).reshape(padded.shape)[..., :k]
    return s, codes


def dequantise_groups_np(scales, codes):
    """``code x scale`` per 128-group along the last axis (float32)."""
    k = codes.shape[-1]
    per_col = np.repeat(scales, FP8_BLOCK, axis=-1)[..., :k]
    return (codes * per_col).astype(np.float32)


def fp8_weight_dequantised_np(case, g):
    """An FP8 GEMM's weight as it multiplies: codes times block scales, ``[k, n]`` float32."""
    codes = weight_np(case, g)[0]
    s = np.repeat(np.repeat(fp8_weight_scales_np(case, g), FP8_BLOCK, axis=0), FP8_BLOCK, axis=1)[: g.k, : g.n]
    return (codes * s).astype(np.float32)


def f32_bits(a):
    """A 2-D float32 array as lists of IEEE bit patterns (unsigned ints), one list per row."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).tolist()


def operands_np(case, g, input_rows, weight_rows):
    """The ``gemm_operands`` answer from the numpy path (see PROTOCOL.md)."""
    inputs = input_rows_np(case, g, input_rows)
    out = {
        "input_bits": f32_bits(inputs),
        "weight_bits": f32_bits(weight_rows_np(case, g, weight_rows)),
        "weight_scale_bits": None,
        "input_scale_bits": None,
        "input_code_bits": None,
    }
    if g.fp8:
        s, codes = fp8_quantise_np(inputs)
        out["weight_scale_bits"] = f32_bits(fp8_weight_scales_np(case, g))
        out["input_scale_bits"] = f32_bits(s)
        out["input_code_bits"] = f32_bits(codes)
    return out


def check_operand_rows(g, input_rows, weight_rows):
    """Validate the ``[b, row]`` pairs of a ``gemm_operands`` request."""

    def pairs(rows, nrows, what):
        out = []
        for pair in rows or []:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError("%s rows must be [b, row] pairs, got %r" % (what, pair))
            b, r = int(pair[0]), int(pair[1])
            if not (0 <= b < g.batch and 0 <= r < nrows):
                raise ValueError("%s row [%d, %d] is outside [%d, %d, ...] of %s" % (what, b, r, g.batch, nrows, g.name))
            out.append((b, r))
        return out

    return pairs(input_rows, g.m, "input"), pairs(weight_rows, g.k, "weight")


# ---------------------------------------------------------------- torch: generation and layouts


def generate_torch(torch, seed, stream, count, device, convert, out, chunk=1 << 26):
    """Fill the flat tensor ``out`` (``count`` elements) with ``convert(uniform values)``,
    generated on ``device`` in chunks (so a 1 GB weight never needs its f32 copy at once)."""
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        out[start : start + n] = convert(uniform_torch(torch, seed, stream, start, n, device))
    return out


#: Token rows of an FP8 GEMM are padded to a multiple of this (zero rows): the activation
#: scales are passed M-major, one column of M floats per 128-group, and cuBLASLt's block-scaled
#: FP8 path wants those columns 16-byte aligned; a multiple of 16 also keeps every operand
#: dimension a multiple of 16, which ``torch._scaled_mm`` checks.
FP8_ROW_ALIGN = 16
#: The output width of an FP8 GEMM is padded to a multiple of 16 (zero weight columns):
#: ``torch._scaled_mm`` requires both dimensions of its second operand divisible by 16.
FP8_COL_ALIGN = 16


def fp8_padded_dims(g):
    """``(rows, k, cols)`` an FP8 GEMM runs at: ``m`` up to a multiple of 16, ``k`` up to a
    multiple of 128 (zero columns in the last group change no amax and add nothing), ``n`` up
    to a multiple of 16. The 128-block counts stay ``ceil(k/128)`` and ``ceil(n/128)``."""
    return round_up(g.m, FP8_ROW_ALIGN), round_up(g.k, FP8_BLOCK), round_up(g.n, FP8_COL_ALIGN)


#: The layouts of the 128 x 128 weight scales tried in order, as ``(pad, whole)`` (torch
#: versions differ; see :func:`weight_scale_operand`): the leading dimension of the scale
#: memory padded to a multiple of 4 (cuBLASLt's layout for 2-D block scales; torch 2.9's
#: ``_scaled_mm`` checks this stride), then unpadded (torch 2.8 checks a stride of exactly
#: ceil(k/128)), then the whole padded buffer (shape ``[round_up(kb, 4), nb]``, as torch's
#: newer scaled-mm tests pass it). All three are the same when ceil(k/128) is a multiple of 4,
#: as it is for every FP8 GEMM of the DeepSeek shapes.
WEIGHT_SCALE_LAYOUTS = ((4, False), (1, False), (4, True))


def weight_scale_operand(scales, zeros, pad=4, whole=False):
    """The 128 x 128 block scales ``[kb, nb]`` (kb = ceil(k/128), nb = ceil(n/128)) as
    ``torch._scaled_mm`` reads ``scale_b`` for a ``[k, n]`` column-major weight: shape
    ``[kb, nb]``, kb-major (stride ``(1, round_up(kb, pad))``), held in a buffer
    ``[nb, round_up(kb, pad)]`` whose padding is zero; ``whole``: the whole buffer, shape
    ``[round_up(kb, pad), nb]``.

    ``zeros(shape)`` allocates (numpy or torch: only indexing and ``.T`` are used, so the same
    code is tested on the CPU with numpy)."""
    kb, nb = scales.shape
    buf = zeros((nb, round_up(kb, pad)))
    buf[:, :kb] = scales.T
    return buf.T if whole else buf[:, :kb].T


def activation_scale_operand(scales, empty):
    """Per-group activation scales ``[m, kb]`` as ``torch._scaled_mm`` reads ``scale_a`` for
    1 x 128 groups: shape ``[m, kb]``, M-major (stride ``(1, m)``), held in a ``[kb, m]``
    buffer. ``empty(shape)`` allocates (numpy or torch)."""
    m, kb = scales.shape
    buf = empty((kb, m))
    buf[...] = scales.T
    return buf.T


def blockwise_1x128_ok(t_shape, scale_shape, scale_strides):
    """torch's check that ``scale`` holds 1 x 128 scales of the ``[rows, cols]`` FP8 operand
    ``t`` (aten/src/ATen/native/cuda ``is_blockwise_1x128_scaling``; a size-1 dimension's
    stride is not checked). Used by the tests to hold our layouts to torch's rule."""
    rows, cols = t_shape
    return _size_stride(scale_shape, scale_strides, 0, rows, 1) and _size_stride(scale_shape, scale_strides, 1, ceil_div(cols, 128), rows)


def blockwise_128x128_ok(t_shape, scale_shape, scale_strides, padded_lead):
    """torch's check that ``scale`` holds 128 x 128 scales of ``t`` (``is_blockwise_128x128_scaling``):
    shape ``[ceil(rows/128), ceil(cols/128)]``, row stride ``ceil(cols/128)`` rounded up to 4
    (``padded_lead``, torch 2.9+) or exactly (torch 2.8), column stride 1. The runtime applies
    it to ``b.t()`` and ``scale_b.t()``."""
    rows, cols = t_shape
    lead = round_up(ceil_div(cols, 128), 4) if padded_lead else ceil_div(cols, 128)
    return _size_stride(scale_shape, scale_strides, 0, ceil_div(rows, 128), lead) and _size_stride(scale_shape, scale_strides, 1, ceil_div(cols, 128), 1)


def _size_stride(shape, strides, dim, size, stride):
    return shape[dim] == size and (size <= 1 or strides[dim] == stride)
