"""CPU adapters in numpy: dense (MHA prefill / MQA decode) and DSA (indexer, exact top-k,
sparse MQA). Inputs are rounded to the case's precision (f32, bf16, fp8 as the reference
rounds them) and the arithmetic is f32. Meant for the small shapes (``tiny``, ``small``)."""

import time

import numpy as np

from ..generate import softmax_scale, tensor_np
from ..protocol import Adapter

#: Elements of one score block (queries x keys x heads) computed at once.
BLOCK = 1 << 23


def softmax_rows(s):
    """Softmax over the last axis in f32 (rows of -inf only do not occur here)."""
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - m)
    p /= p.sum(axis=-1, keepdims=True)
    return p


def topk_exact(scores, visible, k):
    """Exact top-k of each row: the k largest of ``scores[r, :visible[r]]``, ties to the smaller
    position, ascending, padded with -1 to k."""
    n = scores.shape[0]
    out = np.full((n, k), -1, dtype=np.int64)
    for r in range(n):
        vis = int(visible[r])
        if vis <= k:
            out[r, :vis] = np.arange(vis)
            continue
        s = scores[r, :vis]
        t = np.partition(s, vis - k)[vis - k]  # the k-th largest value
        gt = np.flatnonzero(s > t)
        eq = np.flatnonzero(s == t)[: k - len(gt)]
        out[r] = np.sort(np.concatenate([gt, eq]))
    return out


class NumpyAdapter(Adapter):
    """What the numpy CPU workers share: their precisions, their clock, and a size limit
    (``too_large``) checked after the protocol's own checks."""

    precisions = ("f32", "bf16", "fp8")
    timer = "monotonic-clock"

    def too_large(self, case):
        """Why the case is too large for a CPU worker, or None."""
        return None

    def unsupported_reason(self, case):
        return Adapter.unsupported_reason(self, case) or self.too_large(case)


class _NumpyBase(NumpyAdapter):
    def too_large(self, case):
        s = case.shape
        cols = max(s.heads * s.mqa_kv_dim, s.heads * s.mha_qk_dim)
        work = case.batch * case.query_len * case.context * cols
        if work > 2e11:
            return "too large for the numpy CPU adapter (%.1e multiply-adds); use a GPU engine" % work
        return None


class NumpyDense(_NumpyBase):
    id = "numpy-dense"
    method = "dense"

    def prepare(self, case):
        s = case.shape
        B, q, L, H = case.batch, case.query_len, case.context, s.heads
        if case.dense_mha:
            self.q = tensor_np(case, "mha_q").reshape(B, q, H, s.mha_qk_dim).transpose(0, 2, 1, 3).copy()
            self.k = tensor_np(case, "mha_k").reshape(B, L, H, s.mha_qk_dim).transpose(0, 2, 1, 3).copy()
            self.v = tensor_np(case, "mha_v").reshape(B, L, H, s.mha_v_dim).transpose(0, 2, 1, 3).copy()
        else:
            self.q = tensor_np(case, "mqa_q").reshape(B, q, H, s.mqa_kv_dim)
            self.kv = tensor_np(case, "latent")

    def run(self):
        t0 = time.perf_counter()
        self.out = self._mha() if self.case.dense_mha else self._mqa()
        return (time.perf_counter() - t0) * 1e3, None

    def _mha(self):
        c, s = self.case, self.case.shape
        B, q, L, H = c.batch, c.query_len, c.context, s.heads
        scale = np.float32(softmax_scale(s))
        out = np.empty((B, H, q, s.mha_v_dim), dtype=np.float32)
        qc = max(1, BLOCK // (H * L))
        for b in range(B):
            for i0 in range(0, q, qc):
                i1 = min(q, i0 + qc)
                vis = c.query_position(i1 - 1) + 1  # keys the last query of the block sees
                sc = np.matmul(self.q[b, :, i0:i1], self.k[b, :, :vis].transpose(0, 2, 1)) * scale
                pos = c.query_position(np.arange(i0, i1))
                sc[:, np.arange(vis)[None, :] > pos[:, None]] = -np.inf
                out[b, :, i0:i1] = np.matmul(softmax_rows(sc), self.v[b, :, :vis])
        return out.transpose(0, 2, 1, 3)

    def _mqa(self):
        c, s = self.case, self.case.shape
        B, q, L, H = c.batch, c.query_len, c.context, s.heads
        lat = s.mqa_v_dim
        scale = np.float32(softmax_scale(s))
        out = np.empty((B, q, H, lat), dtype=np.float32)
        qc = max(1, BLOCK // (H * L))
        for b in range(B):
            for i0 in range(0, q, qc):
                i1 = min(q, i0 + qc)
                vis = c.query_position(i1 - 1) + 1
                qs = self.q[b, i0:i1].reshape(-1, s.mqa_kv_dim)  # [(i, h), D]
                sc = (qs @ self.kv[b, :vis].T) * scale
                pos = np.repeat(c.query_position(np.arange(i0, i1)), H)
                sc[np.arange(vis)[None, :] > pos[:, None]] = -np.inf
                out[b, i0:i1] = (softmax_rows(sc) @ self.kv[b, :vis, :lat]).reshape(i1 - i0, H, lat)
        return out


class NumpyDsa(_NumpyBase):
    id = "numpy-dsa"
    method = "dsa"

    def prepare(self, case):
        s = case.shape
        B, q, H = case.batch, case.query_len, s.heads
        self.q = tensor_np(case, "mqa_q").reshape(B, q, H, s.mqa_kv_dim)
        self.kv = tensor_np(case, "latent")
        self.iq = tensor_np(case, "index_q").reshape(B, q, s.index_heads, s.index_dim)
        self.ik = tensor_np(case, "index_k")
        self.iw = tensor_np(case, "index_w")

    def indexer(self, b, i0, i1):
        """Scores ``[i1 - i0, vis]`` of queries i0..i1 of sequence b over the keys the last of
        them sees; keys after a query's position are -inf."""
        c, s = self.case, self.case.shape
        vis = c.query_position(i1 - 1) + 1
        logits = self.iq[b, i0:i1].reshape(-1, s.index_dim) @ self.ik[b, :vis].T  # [(i, j), vis]
        logits = np.maximum(logits, 0).reshape(i1 - i0, s.index_heads, vis)
        sc = np.matmul(self.iw[b, i0:i1][:, None, :], logits)[:, 0, :]
        pos = c.query_position(np.arange(i0, i1))
        sc[np.arange(vis)[None, :] > pos[:, None]] = -np.inf
        return sc, pos + 1

    def attend(self, b, i0, i1, sel):
        """Sparse MQA of queries i0..i1 over their selections ``sel`` ([n, k], -1 = none)."""
        s = self.case.shape
        lat = s.mqa_v_dim
        scale = np.float32(softmax_scale(s))
        g = self.kv[b][np.maximum(sel, 0)]  # [n, k, D]
        sc = np.matmul(self.q[b, i0:i1], g.transpose(0, 2, 1)) * scale
        sc = np.where((sel < 0)[:, None, :], np.float32(-np.inf), sc)
        return np.matmul(softmax_rows(sc), g[..., :lat])

    def run(self):
        c, s = self.case, self.case.shape
        B, q, H, k = c.batch, c.query_len, s.heads, c.top_k
        self.out = np.empty((B, q, H, s.mqa_v_dim), dtype=np.float32)
        self.sel = np.empty((B, q, k), dtype=np.int64)
        t = {"indexer": 0.0, "topk": 0.0, "attention": 0.0}
        qc = max(1, BLOCK // (s.index_heads * c.context))
        for b in range(B):
            for i0 in range(0, q, qc):
                i1 = min(q, i0 + qc)
                t0 = time.perf_counter()
                sc, visible = self.indexer(b, i0, i1)
                t1 = time.perf_counter()
                sel = topk_exact(sc, visible, k)
                t2 = time.perf_counter()
                self.out[b, i0:i1] = self.attend(b, i0, i1, sel)
                t3 = time.perf_counter()
                self.sel[b, i0:i1] = sel
                t["indexer"] += t1 - t0
                t["topk"] += t2 - t1
                t["attention"] += t3 - t2
        comps = {name: v * 1e3 for name, v in t.items()}
        return sum(comps.values()), comps
