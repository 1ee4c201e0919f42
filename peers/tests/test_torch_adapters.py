"""The torch adapters and the torch generator path. Skipped where torch is not installed; the
SDPA adapters need a CUDA GPU (sm_80+)."""

import unittest

import numpy as np

from ctxcost_peers import generate as g
from ctxcost_peers.case import Case

from . import ref64
from .ref64 import case_dict

try:
    import torch

    HAVE_TORCH = True
    CUDA = torch.cuda.is_available()
except Exception:  # not installed (the CI machine)
    HAVE_TORCH = False
    CUDA = False

# MHA geometry of DeepSeek (qk 192 = 128 + 64, v 128) with few heads, for the SDPA adapters.
MHA_SHAPE = dict(ref64.TINY, name="mha-test", heads=2, qk_nope_dim=128, qk_rope_dim=64, v_head_dim=128)


def prepared(adapter, case_d):
    case = Case(case_d)
    reason = adapter.unsupported_reason(case)
    if reason:
        raise unittest.SkipTest(reason)
    adapter.case = case
    adapter.prepare(case)
    return case


@unittest.skipUnless(HAVE_TORCH, "torch is not installed")
class TorchGeneratorTest(unittest.TestCase):
    def test_inputs_bits_match_numpy(self):
        dev = "cuda" if CUDA else "cpu"
        big = case_dict("dsa", "decode", 131072, 64, 1, "bf16", seed=2**64 - 3, shape=dict(ref64.TINY, heads=128, kv_lora_rank=512, qk_rope_dim=64))
        for cd in (case_dict("dense", "prefill", 300, 2, 17, "bf16"), big):
            c = Case(cd)
            for name in g.STREAMS:
                nb, nrows, _ = g.tensor_dims(c, name)
                rows = [[0, 0], [nb - 1, nrows - 1], [nb // 2, nrows // 3]]
                self.assertEqual(g.inputs_torch(torch, c, name, rows, dev), g.inputs_np(c, name, rows), name)

    def test_tensor_torch_matches_numpy(self):
        dev = "cuda" if CUDA else "cpu"
        c = Case(case_dict("dsa", "prefill", 100, 2, 9, "bf16"))
        for name in g.STREAMS:
            t32 = g.tensor_torch(torch, c, name, dev, torch.float32, chunk=1000).cpu().numpy()
            np.testing.assert_array_equal(t32, g.tensor_np(c, name, rounded=False))
            t16 = g.tensor_torch(torch, c, name, dev, torch.bfloat16).float().cpu().numpy()
            np.testing.assert_array_equal(t16, g.round_bf16_np(t32))

    def test_e4m3_torch_matches_numpy(self):
        dev = "cuda" if CUDA else "cpu"
        x = g.uniform_np(3, 6, np.arange(64 * 128)).reshape(64, 128) * np.float32(3.0)
        x[0, :] *= np.float32(1e-3)
        for kind in ("fp32", "pow2"):
            codes, s = g.quant_e4m3_torch(torch, torch.from_numpy(x).to(dev), kind)
            got = (codes.float() * s[:, None]).cpu().numpy()
            want, ws = g.fake_quant_e4m3_np(x, kind)
            np.testing.assert_array_equal(s.cpu().numpy(), ws)
            np.testing.assert_array_equal(got, want)

    def test_fp8_latent_cache_layout(self):
        from ctxcost_peers.adapters.flash_mla import fp8_latent_cache

        dev = "cuda" if CUDA else "cpu"
        lat = g.uniform_np(1, 5, np.arange(3 * 576)).reshape(3, 576)
        packed = fp8_latent_cache(torch, torch.from_numpy(lat).to(dev), 512).cpu().numpy()
        self.assertEqual(packed.shape, (3, 656))
        scales = packed[:, 512:528].copy().view(np.float32)
        np.testing.assert_array_equal(scales[:, 0], np.abs(lat[:, :128]).max(1) / np.float32(448))
        rope = packed[:, 528:].copy().view(np.uint16)
        np.testing.assert_array_equal(rope, g.bf16_bits_np(lat[:, 512:]))


@unittest.skipUnless(HAVE_TORCH, "torch is not installed")
class TorchEagerTest(unittest.TestCase):
    def check_dense(self, phase, L, B, q, precision):
        from ctxcost_peers.adapters.torch_eager import TorchEagerDense

        a = TorchEagerDense()
        case = prepared(a, case_dict("dense", phase, L, B, q, precision))
        ms, comps = a.run()
        self.assertGreater(ms, 0)
        self.assertIsNone(comps)
        view = ref64.View(case)
        queries = sorted({(b, i) for b in range(B) for i in (0, q - 1)})
        vals, idx = a.output(queries, [0, 7])
        self.assertIsNone(idx)
        f = ref64.mha_row if case.dense_mha else ref64.mqa_row
        want = [np.concatenate([f(view, b, i, h) for h in (0, 7)]) for b, i in queries]
        ok, why = ref64.compare(vals, want, precision)
        self.assertTrue(ok, "%s: %s" % (case.describe(), why))
        a.release()

    def test_dense(self):
        for p in ("f32", "bf16"):
            self.check_dense("prefill", 120, 2, 24, p)
            self.check_dense("decode", 150, 3, 1, p)
        self.check_dense("decode", 90, 2, 2, "f32")

    def check_dsa(self, phase, L, B, q, precision):
        from ctxcost_peers.adapters.torch_eager import TorchEagerDsa

        a = TorchEagerDsa()
        case = prepared(a, case_dict("dsa", phase, L, B, q, precision))
        ms, comps = a.run()
        self.assertEqual(set(comps), {"indexer", "topk", "attention"})
        view = ref64.View(case)
        queries = sorted({(b, i) for b in range(B) for i in (0, q // 3, q - 1)})
        vals, idx = a.output(queries, list(range(8)))
        want = []
        for j, (b, i) in enumerate(queries):
            sel = [int(x) for x in idx[j]]
            valid = [x for x in sel if x >= 0]
            self.assertEqual(valid, sorted(valid))
            self.assertTrue(all(x == -1 for x in sel[len(valid) :]))
            scores = ref64.indexer_scores(view, b, i)
            self.assertTrue(ref64.selection_ok(sel, ref64.topk(scores, case.top_k), scores, ref64.TIE_TOL[precision]))
            want.append(np.concatenate([ref64.mqa_row(view, b, i, h, keys=valid) for h in range(8)]))
        ok, why = ref64.compare(vals, want, precision)
        self.assertTrue(ok, "%s: %s" % (case.describe(), why))
        a.release()

    def test_dsa(self):
        for p in ("f32", "bf16"):
            self.check_dsa("prefill", 140, 1, 70, p)
            self.check_dsa("decode", 200, 3, 1, p)

    def test_exact_ties(self):
        from ctxcost_peers.adapters.torch_eager import TorchEagerDsa

        a = TorchEagerDsa()
        a.case = Case(case_dict("dsa", "decode", 6, 1, 1, "f32", shape=dict(ref64.TINY, top_k=2)))
        sc = torch.tensor([[[1.0, 3.0, 3.0, 2.0, 3.0, float("-inf")]]])
        idx, vals = a.topk(sc)
        fixed = a.exact_ties(sc, idx, vals)
        self.assertEqual(fixed.tolist(), [[[1, 2]]])


@unittest.skipUnless(CUDA, "needs a CUDA GPU")
class SdpaTest(unittest.TestCase):
    def check(self, cls, L, q):
        a = cls()
        case = prepared(a, case_dict("dense", "prefill", L, 1, q, "bf16", shape=MHA_SHAPE))
        ms, _ = a.run()
        self.assertGreater(ms, 0)
        view = ref64.View(case)
        queries = [(0, 0), (0, q // 2), (0, q - 1)]
        vals, _ = a.output(queries, [0, 1])
        want = [np.concatenate([ref64.mha_row(view, b, i, h) for h in (0, 1)]) for b, i in queries]
        ok, why = ref64.compare(vals, want, "bf16")
        self.assertTrue(ok, "%s %s: %s" % (a.id, case.describe(), why))
        a.release()

    def test_cudnn(self):
        from ctxcost_peers.adapters.sdpa import CudnnSdpa

        self.check(CudnnSdpa, 256, 64)
        self.check(CudnnSdpa, 128, 128)

    def test_flash(self):
        from ctxcost_peers.adapters.sdpa import FlashSdpa

        self.check(FlashSdpa, 256, 64)
        self.check(FlashSdpa, 128, 128)


if __name__ == "__main__":
    unittest.main()
