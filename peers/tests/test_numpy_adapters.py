"""The numpy adapters against the independent f64 oracle (ref64) on the tiny shape."""

import unittest

import numpy as np

from ctxcost_peers.adapters.numpy_ref import NumpyDense, NumpyDsa, topk_exact
from ctxcost_peers.case import Case

from . import ref64
from .ref64 import case_dict


def run_adapter(adapter, case):
    adapter.case = case
    adapter.prepare(case)
    ms, comps = adapter.run()
    return ms, comps


class NumpyDenseTest(unittest.TestCase):
    def check(self, phase, context, batch, q, precision):
        case = Case(case_dict("dense", phase, context, batch, q, precision))
        a = NumpyDense()
        self.assertIsNone(a.unsupported_reason(case))
        ms, _ = run_adapter(a, case)
        self.assertGreaterEqual(ms, 0)
        view = ref64.View(case)
        queries = sorted({(b, i) for b in range(batch) for i in (0, q // 2, q - 1)})
        heads = [0, 3, 7]
        vals, idx = a.output(queries, heads)
        self.assertIsNone(idx)
        vd = case.v_dim
        want = []
        for b, i in queries:
            row = []
            for h in heads:
                row.extend(ref64.mha_row(view, b, i, h) if case.dense_mha else ref64.mqa_row(view, b, i, h))
            want.append(row)
        self.assertEqual(np.asarray(vals).shape, (len(queries), len(heads) * vd))
        ok, why = ref64.compare(vals, want, precision)
        self.assertTrue(ok, "%s: %s" % (case.describe(), why))

    def test_prefill_chunk(self):
        for p in ("f32", "bf16", "fp8"):
            self.check("prefill", 96, 2, 16, p)

    def test_prefill_whole_prompt(self):
        self.check("prefill", 40, 1, 40, "f32")

    def test_decode(self):
        for p in ("f32", "bf16", "fp8"):
            self.check("decode", 130, 3, 1, p)

    def test_decode_mtp(self):
        self.check("decode", 70, 2, 2, "f32")

    def test_wrong_method_refused(self):
        case = Case(case_dict("dsa", "decode", 64, 1, 1, "f32"))
        self.assertIn("dense", NumpyDense().unsupported_reason(case))


class NumpyDsaTest(unittest.TestCase):
    def check(self, phase, context, batch, q, precision, queries=None):
        case = Case(case_dict("dsa", phase, context, batch, q, precision))
        a = NumpyDsa()
        self.assertIsNone(a.unsupported_reason(case))
        ms, comps = run_adapter(a, case)
        self.assertEqual(set(comps), {"indexer", "topk", "attention"})
        self.assertAlmostEqual(ms, sum(comps.values()), places=6)
        view = ref64.View(case)
        queries = queries or sorted({(b, i) for b in range(batch) for i in (0, q - 1)})
        heads = list(range(8))
        vals, idx = a.output(queries, heads)
        k = case.top_k
        self.assertEqual(np.asarray(idx).shape, (len(queries), k))
        want = []
        for j, (b, i) in enumerate(queries):
            sel = [int(x) for x in idx[j]]
            valid = [x for x in sel if x >= 0]
            self.assertEqual(valid, sorted(valid), "ascending")
            self.assertTrue(all(x == -1 for x in sel[len(valid) :]), "padding at the end")
            scores = ref64.indexer_scores(view, b, i)
            ref_sel = ref64.topk(scores, k)
            self.assertTrue(ref64.selection_ok(sel, ref_sel, scores, ref64.TIE_TOL[precision]), (b, i))
            if precision == "f32":
                self.assertEqual(sel, ref_sel)
            row = []
            for h in heads:
                row.extend(ref64.mqa_row(view, b, i, h, keys=valid))
            want.append(row)
        ok, why = ref64.compare(vals, want, precision)
        self.assertTrue(ok, "%s: %s" % (case.describe(), why))

    def test_prefill_sparse(self):
        # top_k 64 < context: real selection; the first queries see fewer than k keys (-1 padding)
        for p in ("f32", "bf16", "fp8"):
            self.check("prefill", 100, 1, 50, p, queries=[(0, 0), (0, 20), (0, 49)])

    def test_decode_sparse(self):
        for p in ("f32", "bf16", "fp8"):
            self.check("decode", 150, 2, 1, p)

    def test_short_context_is_dense(self):
        self.check("decode", 30, 1, 1, "f32")

    def test_topk_ties(self):
        s = np.array([[1.0, 3.0, 3.0, 2.0, 3.0, -np.inf]], dtype=np.float32)
        self.assertEqual(topk_exact(s, [5], 2).tolist(), [[1, 2]])
        self.assertEqual(topk_exact(s, [5], 4).tolist(), [[1, 2, 3, 4]])
        self.assertEqual(topk_exact(s, [2], 4).tolist(), [[0, 1, -1, -1]])


if __name__ == "__main__":
    unittest.main()
