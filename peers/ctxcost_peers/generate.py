"""The case inputs, bit for bit as ctxcost builds them (core/src/inputs.rs, core/src/numeric.rs).

Element ``index`` of tensor ``t`` is ``uniform(seed, t.stream, index)``: a SplitMix64 hash of
the index mapped to [-1, 1) with 24 random bits (exact in f32). Every tensor is logically
``[batch, rows, cols]`` with element index ``(b * rows + row) * cols + col``; query tensors have
``rows = query_len``, key tensors ``rows = context``.

Two implementations of the generator share one algorithm written over signed 64-bit integers
(wrapping multiply, logical shifts done as arithmetic shifts plus a mask), so it runs on numpy
``int64`` arrays and on torch ``int64`` tensors (CPU or CUDA) alike:

- :func:`uniform_np` (numpy, host), used by the CPU adapters;
- :func:`uniform_torch` (torch, any device), used by the GPU adapters to build inputs on the
  device in chunks.

The roundings follow the reference (engines/src/reference.rs ``round_row``):

- f32: exact;
- bf16: every tensor rounded to bf16 (nearest even) except the indexer weights (kept f32);
- fp8: the latent's first ``kv_lora_rank`` dims in e4m3 with an fp32 scale
  ``max(amax, 1e-12) / 448`` per 128-dim block (RoPE dims bf16); indexer queries and keys in
  e4m3 with a power-of-two scale ``2^ceil(log2(amax / 448))`` per ``index_dim`` block;
  indexer weights f32; everything else bf16.
"""

import math

import numpy as np

# ---------------------------------------------------------------- tensors

#: name -> stream id (core/src/inputs.rs InputTensor).
STREAMS = {
    "mha_q": 1,
    "mha_k": 2,
    "mha_v": 3,
    "mqa_q": 4,
    "latent": 5,
    "index_q": 6,
    "index_k": 7,
    "index_w": 8,
}

QUERY_TENSORS = ("mha_q", "mqa_q", "index_q", "index_w")


def tensor_cols(case, name):
    """Columns (flattened inner dims) of a tensor for a case."""
    s = case.shape
    if name in ("mha_q", "mha_k"):
        return s.heads * s.mha_qk_dim
    if name == "mha_v":
        return s.heads * s.mha_v_dim
    if name == "mqa_q":
        return s.heads * s.mqa_kv_dim
    if name == "latent":
        return s.mqa_kv_dim
    if name == "index_q":
        return s.index_heads * s.index_dim
    if name == "index_k":
        return s.index_dim
    if name == "index_w":
        return s.index_heads
    raise KeyError("unknown tensor %r (known: %s)" % (name, ", ".join(STREAMS)))


def tensor_rows(case, name):
    """Rows per sequence: query_len for query tensors, context for key tensors."""
    return case.query_len if name in QUERY_TENSORS else case.context


def tensor_dims(case, name):
    return (case.batch, tensor_rows(case, name), tensor_cols(case, name))


# ---------------------------------------------------------------- the generator

MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB
_STREAM_MUL = 0xD1B54A32D192ED03


def splitmix64(z):
    """SplitMix64 finaliser on a Python int (the scalar definition)."""
    z = (z + _GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * _MUL1) & MASK64
    z = ((z ^ (z >> 27)) * _MUL2) & MASK64
    return z ^ (z >> 31)


def stream_base(seed, stream):
    """The per-tensor base: splitmix64(seed ^ stream * 0xD1B54A32D192ED03)."""
    return splitmix64((seed ^ ((stream * _STREAM_MUL) & MASK64)) & MASK64)


def _signed(u):
    """A uint64 constant as the int64 with the same bits."""
    return u - (1 << 64) if u >= (1 << 63) else u


_GOLDEN_S = _signed(_GOLDEN)
_MUL1_S = _signed(_MUL1)
_MUL2_S = _signed(_MUL2)


def _lsr(z, n):
    # Logical right shift of int64 two's-complement bits: arithmetic shift, then clear the
    # n sign-extended top bits.
    return (z >> n) & ((1 << (64 - n)) - 1)


def splitmix64_i64(z):
    """SplitMix64 on an int64 array/tensor (numpy or torch): wrapping arithmetic, same bits."""
    z = z + _GOLDEN_S
    z = (z ^ _lsr(z, 30)) * _MUL1_S
    z = (z ^ _lsr(z, 27)) * _MUL2_S
    return z ^ _lsr(z, 31)


def bits24_i64(base, index):
    """The 24 random bits of elements ``index`` (int64 array/tensor) of the stream ``base``."""
    return _lsr(splitmix64_i64(index + _signed(base)), 40)


def uniform_np(seed, stream, index):
    """Values of elements ``index`` (int64 numpy array) as float32."""
    with np.errstate(over="ignore"):
        bits = bits24_i64(stream_base(seed, stream), np.asarray(index, dtype=np.int64))
    # bits * 2^-23 - 1 == (bits - 2^23) * 2^-23, both exact in f32.
    return (bits - 8388608).astype(np.float32) * np.float32(1.0 / 8388608.0)


def uniform_torch(torch, seed, stream, start, count, device):
    """Values of elements ``start .. start + count`` as a float32 tensor on ``device``."""
    idx = torch.arange(start, start + count, dtype=torch.int64, device=device)
    bits = bits24_i64(stream_base(seed, stream), idx)
    return (bits - 8388608).to(torch.float32) * (1.0 / 8388608.0)


# ---------------------------------------------------------------- number formats (numpy)

E4M3_MAX = 448.0


def round_bf16_np(x):
    """f32 -> nearest bf16 (ties to even), returned as f32 (numeric.rs round_bf16)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    lsb = (b >> np.uint32(16)) & np.uint32(1)
    with np.errstate(over="ignore"):
        r = (b + np.uint32(0x7FFF) + lsb) & np.uint32(0xFFFF0000)
    out = r.view(np.float32)
    return np.where(np.isnan(x), x, out).astype(np.float32)


def bf16_bits_np(x):
    """The bf16 bit patterns (uint16) of round_bf16(x)."""
    return (round_bf16_np(x).view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def round_e4m3_np(x):
    """f32 -> nearest e4m3 value (ties to even, saturating at +-448), as f32 (numeric.rs)."""
    x = np.asarray(x, dtype=np.float32)
    a = np.minimum(np.abs(x), np.float32(E4M3_MAX))
    # floor(log2 a) from the exponent bits (exact; the CUDA kernels do the same), at least -6.
    e = ((a.view(np.uint32) >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int32) - 127
    e = np.maximum(e, -6)
    step = np.ldexp(np.float32(1.0), e - 3).astype(np.float32)
    r = (np.rint(a / step) * step).astype(np.float32)
    r = np.minimum(r, np.float32(E4M3_MAX))
    r = np.where(a == 0, np.float32(0.0), r)
    return np.copysign(r, x).astype(np.float32)


def e4m3_scale_np(blocks, kind):
    """Scale per block (last axis) for e4m3: ``fp32`` = amax/448, ``pow2`` = 2^ceil(log2(amax/448))."""
    amax = np.maximum(np.abs(blocks).max(axis=-1), np.float32(1e-12)).astype(np.float32)
    s = (amax / np.float32(E4M3_MAX)).astype(np.float32)
    if kind == "fp32":
        return s
    # f32 log2 as Rust's f32::log2 gives it (correctly rounded), then ceil and exp2 (exact).
    lg = np.log2(s.astype(np.float64)).astype(np.float32)
    return np.exp2(np.ceil(lg)).astype(np.float32)


def fake_quant_e4m3_np(blocks, kind):
    """Quantise each block (last axis) to e4m3 with one scale; dequantised values and scales."""
    blocks = np.asarray(blocks, dtype=np.float32)
    s = e4m3_scale_np(blocks, kind)
    q = round_e4m3_np(blocks / s[..., None])
    return (q * s[..., None]).astype(np.float32), s


def round_tensor_np(case, name, raw):
    """Apply a case's precision to raw values ``[..., cols]`` of tensor ``name`` (reference round_row)."""
    p = case.precision
    raw = np.asarray(raw, dtype=np.float32)
    if p == "f32" or name == "index_w":
        return raw
    if p == "bf16":
        return round_bf16_np(raw)
    if p == "fp8":
        s = case.shape
        if name == "latent":
            lat = s.kv_lora_rank
            head = raw[..., :lat]
            parts = []
            for start in range(0, lat, 128):
                blk = head[..., start : min(start + 128, lat)]
                parts.append(fake_quant_e4m3_np(blk, "fp32")[0])
            parts.append(round_bf16_np(raw[..., lat:]))
            return np.concatenate(parts, axis=-1)
        if name in ("index_q", "index_k"):
            d = s.index_dim
            shp = raw.shape
            blocks = raw.reshape(shp[:-1] + (shp[-1] // d, d))
            return fake_quant_e4m3_np(blocks, "pow2")[0].reshape(shp)
        return round_bf16_np(raw)
    raise ValueError("unknown precision %r" % p)


def raw_rows_np(case, name, rows):
    """Raw generator values of the given ``(b, row)`` pairs, all columns: float32 ``[n, cols]``."""
    _, nrows, cols = tensor_dims(case, name)
    starts = np.array([(b * nrows + r) * cols for b, r in rows], dtype=np.int64)
    idx = starts[:, None] + np.arange(cols, dtype=np.int64)[None, :]
    return uniform_np(case.seed, STREAMS[name], idx)


def tensor_np(case, name, rounded=True, chunk=1 << 24):
    """The whole tensor ``[B, rows, cols]`` as float32 (rounded to the case's precision)."""
    b, r, c = tensor_dims(case, name)
    n = b * r * c
    out = np.empty(n, dtype=np.float32)
    stream = STREAMS[name]
    rows_per_chunk = max(1, chunk // c)
    step = rows_per_chunk * c
    for start in range(0, n, step):
        cnt = min(step, n - start)
        vals = uniform_np(case.seed, stream, np.arange(start, start + cnt, dtype=np.int64))
        if rounded:
            vals = round_tensor_np(case, name, vals.reshape(-1, c)).reshape(-1)
        out[start : start + cnt] = vals
    return out.reshape(b, r, c)


# ---------------------------------------------------------------- number formats (torch)


def round_bf16_torch(torch, x):
    """bf16 rounding (nearest even) in torch: a plain dtype cast, which rounds to nearest even."""
    return x.to(torch.bfloat16)


def bf16_bits_torch(torch, x_bf16):
    """uint16 bit patterns of a bf16 tensor, as int32 (0..65535)."""
    return x_bf16.view(torch.int16).to(torch.int32) & 0xFFFF


def div_exact(torch, x, d):
    """``x / d`` rounded once (IEEE division), elementwise. On CUDA, torch divides a tensor by a
    Python number as a multiplication by its reciprocal, one ulp off the quotient for some
    values; dividing by a tensor of ``d`` divides."""
    return x / torch.full_like(x, d)


def e4m3_scale_torch(torch, blocks, kind):
    """As :func:`e4m3_scale_np`, on a float32 tensor (blocks on the last axis)."""
    amax = blocks.abs().amax(dim=-1).clamp_min(1e-12)
    s = div_exact(torch, amax, E4M3_MAX)
    if kind == "fp32":
        return s
    lg = torch.log2(s.to(torch.float64)).to(torch.float32)
    return torch.exp2(torch.ceil(lg))


def quant_e4m3_torch(torch, blocks, kind):
    """e4m3 codes (``torch.float8_e4m3fn``) and scales (f32) per block of the last axis.

    The cast to float8_e4m3fn rounds to nearest even; values are clamped to +-448 first, as the
    reference saturates."""
    s = e4m3_scale_torch(torch, blocks, kind)
    codes = (blocks / s.unsqueeze(-1)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return codes, s


def tensor_torch(torch, case, name, device, dtype, chunk=1 << 26):
    """The whole tensor ``[B, rows, cols]`` built on ``device``.

    ``dtype`` is ``torch.float32`` (unrounded f32 values) or ``torch.bfloat16`` (rounded to
    bf16). Built in chunks of whole rows so that 128K-token tensors fit in memory."""
    b, r, c = tensor_dims(case, name)
    n = b * r * c
    out = torch.empty(n, dtype=dtype, device=device)
    stream = STREAMS[name]
    step = max(1, chunk // c) * c
    for start in range(0, n, step):
        cnt = min(step, n - start)
        vals = uniform_torch(torch, case.seed, stream, start, cnt, device)
        out[start : start + cnt] = vals.to(dtype)
        del vals
    return out.view(b, r, c)


def raw_rows_torch(torch, case, name, rows, device):
    """Raw f32 values of the given ``(b, row)`` pairs on ``device``: ``[n, cols]``."""
    _, nrows, cols = tensor_dims(case, name)
    out = []
    for b, r in rows:
        out.append(uniform_torch(torch, case.seed, STREAMS[name], (b * nrows + r) * cols, cols, device))
    return torch.stack(out) if out else torch.empty(0, cols, dtype=torch.float32, device=device)


def check_rows(case, name, rows):
    """Validate ``(b, row)`` pairs for a tensor; raises ValueError with the bad pair."""
    if name not in STREAMS:
        raise ValueError("unknown tensor %r (known: %s)" % (name, ", ".join(STREAMS)))
    nb, nrows, _ = tensor_dims(case, name)
    out = []
    for pair in rows:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError("rows must be [b, row] pairs, got %r" % (pair,))
        b, r = int(pair[0]), int(pair[1])
        if not (0 <= b < nb and 0 <= r < nrows):
            raise ValueError("row [%d, %d] is outside %s [%d, %d, ...]" % (b, r, name, nb, nrows))
        out.append((b, r))
    return out


def inputs_np(case, name, rows):
    """The ``inputs`` op answer from the numpy path: (f32 bits, bf16 bits) per row."""
    rows = check_rows(case, name, rows)
    raw = raw_rows_np(case, name, rows) if rows else np.zeros((0, tensor_cols(case, name)), np.float32)
    f32 = raw.view(np.uint32)
    b16 = bf16_bits_np(raw)
    return [list(map(int, r)) for r in f32], [list(map(int, r)) for r in b16]


def inputs_torch(torch, case, name, rows, device):
    """The ``inputs`` op answer from the torch path (on ``device``)."""
    rows = check_rows(case, name, rows)
    raw = raw_rows_torch(torch, case, name, rows, device)
    f32 = raw.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    b16 = bf16_bits_torch(torch, round_bf16_torch(torch, raw))
    return f32.cpu().tolist(), b16.cpu().tolist()


def softmax_scale(shape):
    """1 / sqrt(MHA qk dim), both modes (shape.rs softmax_scale)."""
    return 1.0 / math.sqrt(shape.mha_qk_dim)
