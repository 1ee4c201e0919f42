"""An independent f64 oracle for the tests, written row by row after engines/src/reference.rs
(it shares only the generator and the roundings with the package, which other tests pin)."""

import math

import numpy as np

from ctxcost_peers.generate import raw_rows_np, round_tensor_np, tensor_cols

TINY = {
    "name": "tiny",
    "layers": 61,
    "heads": 8,
    "kv_lora_rank": 64,
    "qk_nope_dim": 8,
    "qk_rope_dim": 16,
    "v_head_dim": 16,
    "index_heads": 4,
    "index_dim": 32,
    "top_k": 64,
    "active_params": 37e9,
}


def case_dict(method, phase, context, batch, query_len, precision, seed=42, shape=None, engine="test"):
    return {
        "engine": engine,
        "method": method,
        "shape": dict(shape or TINY),
        "phase": phase,
        "context": context,
        "batch": batch,
        "query_len": query_len,
        "precision": precision,
        "seed": seed,
    }


class View:
    """Rounded rows as f64, cached per tensor."""

    def __init__(self, case):
        self.case = case
        self.cache = {}

    def row(self, name, b, r):
        key = (name, b, r)
        if key not in self.cache:
            raw = raw_rows_np(self.case, name, [(b, r)])
            self.cache[key] = round_tensor_np(self.case, name, raw)[0].astype(np.float64)
        return self.cache[key]


def attend(scores, values):
    m = max(scores)
    ps = [math.exp(s - m) for s in scores]
    den = sum(ps)
    out = np.zeros(len(values[0]))
    for p, v in zip(ps, values):
        out += p * v
    return out / den


def mha_row(view, b, i, h):
    c, s = view.case, view.case.shape
    qk, vd = s.mha_qk_dim, s.mha_v_dim
    scale = 1.0 / math.sqrt(qk)
    q = view.row("mha_q", b, i)[h * qk : (h + 1) * qk]
    scores, values = [], []
    for key in range(c.query_position(i) + 1):
        k = view.row("mha_k", b, key)[h * qk : (h + 1) * qk]
        scores.append(float(np.dot(q, k)) * scale)
        values.append(view.row("mha_v", b, key)[h * vd : (h + 1) * vd])
    return attend(scores, values)


def mqa_row(view, b, i, h, keys=None):
    c, s = view.case, view.case.shape
    kd, vd = s.mqa_kv_dim, s.mqa_v_dim
    scale = 1.0 / math.sqrt(s.mha_qk_dim)
    q = view.row("mqa_q", b, i)[h * kd : (h + 1) * kd]
    pos = range(c.query_position(i) + 1) if keys is None else [k for k in keys if k >= 0]
    scores, values = [], []
    for p in pos:
        lat = view.row("latent", b, p)
        scores.append(float(np.dot(q, lat)) * scale)
        values.append(lat[:vd])
    return attend(scores, values)


def indexer_scores(view, b, i):
    c, s = view.case, view.case.shape
    d = s.index_dim
    q = view.row("index_q", b, i)
    w = view.row("index_w", b, i)
    out = []
    for key in range(c.query_position(i) + 1):
        k = view.row("index_k", b, key)
        out.append(sum(w[j] * max(float(np.dot(q[j * d : (j + 1) * d], k)), 0.0) for j in range(s.index_heads)))
    return out


def topk(scores, k):
    order = sorted(range(len(scores)), key=lambda a: (-scores[a], a))[:k]
    sel = sorted(order)
    return sel + [-1] * (k - len(sel))


TOL = {"f32": (1e-4, 1e-3, 1e-4), "bf16": (2e-2, 5e-2, 2e-2), "fp8": (6e-2, 1.5e-1, 6e-2)}


def compare(got, want, precision):
    """verify.rs compare: element-wise abs + rel * |ref| and the norm-relative error."""
    ab, rel, norm = TOL[precision]
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape or not np.isfinite(got).all():
        return False, "shape or non-finite"
    d = np.abs(got - want)
    bad = int((d > ab + rel * np.abs(want)).sum())
    nrm = float(np.sqrt((d**2).sum() / max((want**2).sum(), 1e-300)))
    return bad == 0 and nrm <= norm, "mismatches %d, norm error %.2e" % (bad, nrm)


def selection_ok(got, want, scores, tie_tol):
    """verify.rs compare_selection for one row."""
    g, w = sorted(got), sorted(want)
    if g == w:
        return True
    valid = [scores[i] for i in w if i >= 0]
    kth = min(valid)
    rng = max(max(abs(x) for x in scores), 1e-30)
    diff = [i for i in g if i not in w] + [i for i in w if i not in g]
    return all(0 <= i < len(scores) and abs(scores[i] - kth) <= tie_tol * rng for i in diff)


TIE_TOL = {"f32": 1e-6, "bf16": 1e-3, "fp8": 1e-2}
