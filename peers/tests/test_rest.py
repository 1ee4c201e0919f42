"""Rest cases (the rest of a layer's GEMMs): the plan as the runner sends it, the operands and
FP8 definitions, numpy-rest against an independent f64 oracle, the serve loop, the scale
layouts torch-rest hands to ``torch._scaled_mm`` (checked on the CPU against torch's own
rules), and torch-rest itself where a CUDA GPU is present.

The plans here are small hand-made ones: the real plan is Rust's (core/src/rest.rs) and the
Rust tests (harness/tests/peers.rs) run the workers on it."""

import os
import subprocess
import sys
import unittest

import numpy as np

from ctxcost_peers import generate as g
from ctxcost_peers import rest
from ctxcost_peers.adapters.numpy_rest import NumpyRest
from ctxcost_peers.case import Case

from . import ref64
from .ref64 import case_dict
from .test_serve import PEERS, Worker, module

try:
    import torch

    CUDA = torch.cuda.is_available()
except Exception:
    torch = None
    CUDA = False


def gemm(i, name, component, batch, m, k, n, fp8=False, expert=None):
    ws = 0x100 + 2 * i
    return {
        "name": name,
        "component": component,
        "expert": expert,
        "batch": batch,
        "m": m,
        "k": k,
        "n": n,
        "weight_stream": ws,
        "input_stream": ws + 1,
        "weight_scale_stream": ws | (1 << 32),
        "fp8": fp8,
    }


def plan(fp8, m=4):
    """A small plan with every kind of GEMM: a partial k group (96), a partial n block (80),
    k over several groups (320), a batched product, experts with few tokens, all six components."""
    return [
        gemm(0, "q_down", "mla_proj", 1, m, 320, 96, fp8),
        gemm(1, "kv_down", "mla_proj", 1, m, 96, 80, fp8),
        gemm(2, "q_absorb", "mla_proj", 8, m, 8, 64),
        gemm(3, "index_k", "indexer_proj", 1, m, 256, 32, fp8),
        gemm(4, "router", "router", 1, m, 256, 16),
        gemm(5, "expert_gate_up", "moe", 1, 3, 256, 128, fp8, expert=0),
        gemm(6, "expert_down", "moe", 1, 1, 64, 256, fp8, expert=5),
        gemm(7, "dense_down", "dense_mlp", 1, m, 512, 256, fp8),
        gemm(8, "lm_head", "head", 1, m, 256, 1024),
    ]


def rest_case(precision, seed=42):
    return case_dict("rest", "decode", 1024, 4, 1, precision, seed=seed)


def quantise_oracle(x):
    """Group quantisation written element by element: per 128-group (partial last group its
    own), scale = f32(max(amax, 1e-12)) / f32(448), code = e4m3(x / scale)."""
    x = np.asarray(x, np.float32)
    scales, codes = [], []
    for start in range(0, len(x), 128):
        grp = x[start : start + 128]
        amax = np.float32(1e-12)
        for v in grp:
            amax = max(amax, np.float32(abs(v)))
        s = np.float32(amax) / np.float32(448.0)
        scales.append(s)
        codes.extend(float(g.round_e4m3_np(np.float32(v) / s)) for v in grp)
    return np.array(scales, np.float32), np.array(codes, np.float32)


def reference(case, gd, b, r, c):
    """f64 output element [b, r, c] of a GEMM (as core/src/rest.rs reference_* define it)."""
    gm = rest.Gemm(gd)
    x = rest.input_rows_np(case, gm, [(b, r)])[0]
    if gm.fp8:
        s, codes = quantise_oracle(x)
        xs = np.array([float(codes[i]) * float(s[i // 128]) for i in range(gm.k)])
        u = g.uniform_np(case.seed, gm.weight_stream, np.arange(gm.k, dtype=np.int64) * gm.n + c)
        wc = g.round_e4m3_np(np.float32(448.0) * u).astype(np.float64)
        nb = rest.ceil_div(gm.n, 128)
        su = g.uniform_np(case.seed, gm.weight_scale_stream, np.arange(gm.blocks[0], dtype=np.int64) * nb + c // 128)
        ws = ((np.float32(1.5) + np.float32(0.5) * su) / np.float32(448.0)).astype(np.float64)
        w = wc * np.repeat(ws, 128)[: gm.k]
    else:
        idx = (b * gm.k + np.arange(gm.k, dtype=np.int64)) * gm.n + c
        w = g.uniform_np(case.seed, gm.weight_stream, idx)
        w = (w if case.precision == "f32" else g.round_bf16_np(w)).astype(np.float64)
        xs = x.astype(np.float64)
    return float(np.dot(xs, w))


def picks_of(gemms):
    """Rows and columns to compare: first, middle and last of each."""
    out = []
    for gd in gemms:
        rows = sorted({0, gd["m"] // 2, gd["m"] - 1})
        cols = sorted({0, gd["n"] // 3, gd["n"] - 1})
        out.append((rows, cols))
    return out


def expected(case, gemms, picks):
    return [[reference(case, gd, b, r, c) for b in range(gd["batch"]) for r in rows for c in cols] for gd, (rows, cols) in zip(gemms, picks)]


class PlanTest(unittest.TestCase):
    def test_parse_and_refuse(self):
        gs = rest.parse_plan(plan(True))
        self.assertEqual([x.name for x in gs][:3], ["q_down", "kv_down", "q_absorb"])
        self.assertEqual((gs[1].blocks, gs[6].expert), ((1, 1), 5))
        self.assertIn("expert 5", gs[6].describe())
        self.assertIsNone(rest.parse_plan(None))
        bad = [
            dict(gemm(0, "x", "mla_proj", 1, 1, 8, 8), component="attention"),
            {k: v for k, v in gemm(0, "x", "mla_proj", 1, 1, 8, 8).items() if k != "weight_scale_stream"},
            gemm(0, "x", "mla_proj", 2, 1, 8, 8, fp8=True),
            gemm(0, "x", "mla_proj", 1, 0, 8, 8),
        ]
        for d in bad:
            with self.assertRaises(ValueError):
                rest.parse_plan([d])
        with self.assertRaises(ValueError):
            rest.parse_plan({"not": "a list"})

    def test_spans_follow_the_run_order(self):
        gs = rest.parse_plan(plan(False))
        self.assertEqual(
            rest.spans(gs),
            [("mla_proj", 0, 3), ("indexer_proj", 3, 4), ("router", 4, 5), ("moe", 5, 7), ("dense_mlp", 7, 8), ("head", 8, 9)],
        )
        self.assertEqual([s[0] for s in rest.spans(gs)], list(rest.COMPONENTS))

    def test_picks_are_checked(self):
        gs = rest.parse_plan(plan(False))
        ok = [{"rows": [0], "cols": [0]} for _ in gs]
        self.assertEqual(len(rest.check_picks(gs, ok)), len(gs))
        for bad in (ok[:-1], [dict(p) for p in ok[:-1]] + [{"rows": [4], "cols": [0]}], [dict(p) for p in ok[:-1]] + [{"rows": [0], "cols": [1024]}], None):
            with self.assertRaises(ValueError):
                rest.check_picks(gs, bad)

    def test_case_carries_the_plan(self):
        c = Case(rest_case("bf16"), plan(False))
        self.assertTrue(c.is_rest and not c.is_sparse)
        self.assertEqual(len(c.gemms), 9)
        self.assertIsNone(Case(rest_case("bf16")).gemms)


class Fp8DefinitionTest(unittest.TestCase):
    def test_group_quantisation(self):
        x = g.round_bf16_np(g.uniform_np(5, 0x101, np.arange(3 * 300)).reshape(3, 300) * np.float32(2.5))
        x[1, 128:256] = 0.0  # an all-zero group
        x[2, 5] = np.float32(1e-30)
        s, codes = rest.fp8_quantise_np(x)
        self.assertEqual((s.shape, codes.shape), ((3, 3), (3, 300)))
        for r in range(3):
            ws, wc = quantise_oracle(x[r])
            np.testing.assert_array_equal(s[r], ws)
            np.testing.assert_array_equal(codes[r], wc)
        self.assertEqual(float(s[1, 1]), float(np.float32(1e-12) / np.float32(448)))
        self.assertTrue((codes[1, 128:256] == 0).all())
        # The largest magnitude of every group is coded as +-448 exactly.
        for r in (0, 2):
            for grp in range(3):
                sl = slice(128 * grp, min(300, 128 * grp + 128))
                self.assertEqual(float(np.abs(codes[r, sl]).max()), 448.0)
        deq = rest.dequantise_groups_np(s, codes)
        self.assertTrue(np.all(np.abs(deq - x) <= 0.0625 * np.abs(x) + 1e-6))

    def test_weight_codes_and_scales(self):
        c = Case(rest_case("fp8"))
        gm = rest.Gemm(gemm(3, "kv_down", "mla_proj", 1, 4, 300, 200, True))
        codes = rest.weight_np(c, gm)[0]
        u = g.uniform_np(42, gm.weight_stream, np.arange(300 * 200)).reshape(300, 200)
        np.testing.assert_array_equal(codes, g.round_e4m3_np(np.float32(448) * u))
        self.assertTrue((np.abs(codes) <= 448).all() and np.array_equal(g.round_e4m3_np(codes), codes))
        s = rest.fp8_weight_scales_np(c, gm)
        self.assertEqual(s.shape, (3, 2))
        self.assertTrue(((s >= np.float32(1.0 / 448)) & (s < np.float32(2.0 / 448))).all())
        su = g.uniform_np(42, (gm.weight_stream | (1 << 32)), np.arange(6))
        np.testing.assert_array_equal(s.reshape(-1), (np.float32(1.5) + np.float32(0.5) * su) / np.float32(448))
        deq = rest.fp8_weight_dequantised_np(c, gm)
        self.assertEqual(float(deq[299, 199]), float(np.float32(codes[299, 199] * s[2, 1])))
        self.assertEqual(float(deq[127, 128]), float(np.float32(codes[127, 128] * s[0, 1])))

    def test_operands_answer(self):
        c = Case(rest_case("fp8"))
        gm = rest.Gemm(gemm(1, "kv_down", "mla_proj", 1, 4, 96, 80, True))
        irows, wrows = rest.check_operand_rows(gm, [[0, 3]], [[0, 95], [0, 0]])
        out = rest.operands_np(c, gm, irows, wrows)
        x = rest.input_rows_np(c, gm, [(0, 3)])[0]
        self.assertEqual(out["input_bits"][0], x.view(np.uint32).tolist())
        ws, wc = quantise_oracle(x)
        self.assertEqual(out["input_scale_bits"][0], ws.view(np.uint32).tolist())
        self.assertEqual(out["input_code_bits"][0], wc.view(np.uint32).tolist())
        self.assertEqual(len(out["weight_bits"]), 2)
        self.assertEqual(np.array(out["weight_scale_bits"]).shape, (1, 1))
        bf = rest.operands_np(Case(rest_case("bf16")), rest.Gemm(gemm(2, "q_absorb", "mla_proj", 8, 4, 8, 64)), [(7, 3)], [(7, 7)])
        self.assertIsNone(bf["weight_scale_bits"])
        for bad in ([[8, 0]], [[0, 4]], [[0]]):
            with self.assertRaises(ValueError):
                rest.check_operand_rows(rest.Gemm(gemm(2, "q_absorb", "mla_proj", 8, 4, 8, 64)), bad, [])


class NumpyRestTest(unittest.TestCase):
    def check(self, precision, m=4):
        gemms = plan(precision == "fp8", m)
        case = Case(rest_case(precision), gemms)
        a = NumpyRest()
        self.assertIsNone(a.unsupported_reason(case))
        a.case = case
        a.prepare(case)
        ms, comps = a.run()
        self.assertEqual(list(comps), list(rest.COMPONENTS))
        self.assertAlmostEqual(ms, sum(comps.values()), places=9)
        picks = picks_of(gemms)
        got = a.rest_output(picks)
        want = expected(case, gemms, picks)
        tol = "bf16" if precision == "fp8" else precision
        for gd, gv, wv in zip(gemms, got, want):
            ok, why = ref64.compare(gv, wv, tol)
            self.assertTrue(ok, "%s %s: %s" % (precision, gd["name"], why))
        return a, gemms, picks

    def test_f32_bf16_fp8(self):
        for p in ("f32", "bf16", "fp8"):
            self.check(p)
        self.check("fp8", m=1)

    def test_fp8_quantises_the_input(self):
        a, gemms, picks = self.check("fp8")
        # Without the activation quantisation the dot products differ: the emulation is not a
        # bf16 GEMM in disguise.
        c = Case(rest_case("fp8"), gemms)
        gm = rest.Gemm(gemms[0])
        x = rest.input_np(c, gm)[0]
        plain = x @ rest.fp8_weight_dequantised_np(c, gm)
        self.assertGreater(float(np.abs(plain - a.outs[0][0]).max()), 1e-3)

    def test_declines(self):
        a = NumpyRest()
        big = [gemm(0, "lm_head", "head", 1, 64, 7168, 129280)]
        self.assertIn("tiny and small", a.unsupported_reason(Case(rest_case("bf16"), big)))
        self.assertIn("rest", a.unsupported_reason(Case(case_dict("dense", "decode", 64, 1, 1, "f32"))))
        self.assertIn("no GEMM", a.unsupported_reason(Case(rest_case("bf16"), [])))


class RestServeTest(unittest.TestCase):
    def test_session(self):
        gemms = plan(True)
        c = rest_case("fp8")
        w = Worker(module("numpy-rest"))
        try:
            h = w.ask({"op": "hello", "protocol": 1})
            self.assertEqual((h["id"], h["method"], h["timer"]), ("numpy-rest", "rest", "monotonic-clock"))
            self.assertEqual(h["precisions"], ["f32", "bf16", "fp8"])
            self.assertEqual(w.ask({"op": "supports", "case": c, "gemms": gemms}), {"ok": True, "supported": True})
            r = w.ask({"op": "prepare", "case": c})
            self.assertEqual(r["ok"], False)
            self.assertIn("gemms", r["error"])
            self.assertEqual(w.ask({"op": "prepare", "case": c, "gemms": gemms}), {"ok": True})
            picks = picks_of(gemms)
            asked = [{"rows": rs, "cols": cs} for rs, cs in picks]
            out = w.ask({"op": "output", "gemms": asked})  # no run yet: runs once
            self.assertTrue(out["ok"], out)
            want = expected(Case(c, gemms), gemms, picks)
            self.assertEqual([len(v) for v in out["values"]], [len(v) for v in want])
            for gd, gv, wv in zip(gemms, out["values"], want):
                ok, why = ref64.compare(gv, wv, "bf16")
                self.assertTrue(ok, "%s: %s" % (gd["name"], why))
            r = w.ask({"op": "run"})
            self.assertEqual(set(r["components"]), set(rest.COMPONENTS))
            self.assertAlmostEqual(r["ms"], sum(r["components"].values()), places=9)
            r = w.ask({"op": "output", "gemms": asked[:-1]})
            self.assertEqual((r["ok"], r["kind"]), (False, "error"))
            r = w.ask({"op": "gemm_operands", "case": c, "gemm": gemms[1], "input_rows": [[0, 3]], "weight_rows": [[0, 0]]})
            self.assertEqual(len(r["input_code_bits"][0]), 96)
            r = w.ask({"op": "gemm_operands", "case": c, "gemm": gemms[1], "input_rows": [[0, 4]], "weight_rows": []})
            self.assertEqual((r["ok"], r["kind"]), (False, "error"))
            self.assertEqual(w.ask({"op": "release"}), {"ok": True})
        finally:
            self.assertEqual(w.close(), 0)

    def test_faulty_rest_modes(self):
        gemms = plan(False)
        c = rest_case("f32")
        asked = [{"rows": [0], "cols": [0]} for _ in gemms]
        router = [gd["name"] for gd in gemms].index("router")
        good = Worker(module("numpy-rest"))
        good.ask({"op": "prepare", "case": c, "gemms": gemms})
        ref = good.ask({"op": "output", "gemms": asked})["values"]
        good.close()
        w = Worker(["-m", "ctxcost_peers.faulty", "rest-wrong-gemm"])
        self.assertTrue(w.ask({"op": "prepare", "case": c, "gemms": gemms})["ok"])
        got = w.ask({"op": "output", "gemms": asked})["values"]
        self.assertEqual([i for i in range(len(gemms)) if got[i] != ref[i]], [router])
        w.close()
        w = Worker(["-m", "ctxcost_peers.faulty", "rest-short-gemm"])
        self.assertTrue(w.ask({"op": "prepare", "case": c, "gemms": gemms})["ok"])
        got = w.ask({"op": "output", "gemms": asked})["values"]
        self.assertEqual((len(got[router]), len(got[0])), (0, 1))
        w.close()
        w = Worker(["-m", "ctxcost_peers.faulty", "rest-missing-component"])
        self.assertTrue(w.ask({"op": "prepare", "case": c, "gemms": gemms})["ok"])
        r = w.ask({"op": "run"})
        self.assertNotIn("moe", r["components"])
        w.close()

    def test_torch_rest_answers_hello_without_a_gpu(self):
        if CUDA:
            self.skipTest("a CUDA GPU is here")
        w = Worker(module("torch-rest"))
        try:
            h = w.ask({"op": "hello", "protocol": 1})
            self.assertEqual((h["ok"], h["kind"]), (False, "unavailable"), h)
            self.assertTrue("pip install torch" in h["error"] or "CUDA GPU" in h["error"], h)
            s = w.ask({"op": "supports", "case": rest_case("bf16"), "gemms": plan(False)})
            self.assertEqual(s.get("kind"), "unavailable")
        finally:
            self.assertEqual(w.close(), 0)

    def test_list_has_the_rest_peers(self):
        env = dict(os.environ, PYTHONPATH=PEERS)
        out = subprocess.run([sys.executable, "-m", "ctxcost_peers", "--list"], capture_output=True, text=True, env=env)
        rows = dict(line.split() for line in out.stdout.splitlines())
        self.assertEqual((rows["numpy-rest"], rows["torch-rest"]), ("rest", "rest"))


def strides(a):
    return tuple(s // a.itemsize for s in a.strides)


class ScaledMmLayoutTest(unittest.TestCase):
    """The scale operands torch-rest builds, built here with numpy by the same code, held to
    torch's checks (aten ScaledBlas.cpp, ported in ctxcost_peers.rest)."""

    def test_padded_dims(self):
        for (m, k, n), want in [((1, 96, 80), (16, 128, 80)), ((3, 7168, 576), (16, 7168, 576)), ((64, 320, 100), (64, 384, 112))]:
            gm = rest.Gemm(gemm(0, "x", "moe", 1, m, k, n, True))
            mp, kp, np_ = rest.fp8_padded_dims(gm)
            self.assertEqual((mp, kp, np_), want)
            # Padding never adds a 128-block: the scales keep their count.
            self.assertEqual((rest.ceil_div(kp, 128), rest.ceil_div(np_, 128)), gm.blocks)
            self.assertTrue(mp % 16 == 0 and kp % 128 == 0 and np_ % 16 == 0)

    def test_weight_scales(self):
        for kb, nb in [(56, 5), (3, 2), (1, 1), (12, 192), (5, 1)]:
            s = np.arange(kb * nb, dtype=np.float32).reshape(kb, nb) + 1
            kp, np_ = 128 * kb, 128 * nb
            for pad, whole in rest.WEIGHT_SCALE_LAYOUTS:
                sb = rest.weight_scale_operand(s, lambda shape: np.zeros(shape, np.float32), pad, whole)
                if whole:
                    # The whole buffer: the scales, then zero rows up to a multiple of 4.
                    self.assertEqual(sb.shape, (rest.round_up(kb, 4), nb))
                    np.testing.assert_array_equal(sb[:kb], s)
                    self.assertTrue((sb[kb:] == 0).all())
                    self.assertEqual(strides(sb), (1, rest.round_up(kb, 4)))
                    continue
                np.testing.assert_array_equal(sb, s)
                self.assertEqual(sb.shape, (kb, nb))
                # torch checks b.t() ([n, k]) against scale_b.t().
                st = sb.T
                padded = rest.blockwise_128x128_ok((np_, kp), st.shape, strides(st), padded_lead=True)
                plain = rest.blockwise_128x128_ok((np_, kp), st.shape, strides(st), padded_lead=False)
                if pad == 4:
                    self.assertTrue(padded, (kb, nb))
                else:
                    self.assertTrue(plain, (kb, nb))
                if kb % 4 == 0 or nb == 1:
                    self.assertTrue(padded and plain, (kb, nb, pad))
        # The layouts differ only where ceil(k/128) is not a multiple of 4.
        s = np.ones((3, 2), np.float32)
        a = rest.weight_scale_operand(s, lambda shape: np.zeros(shape, np.float32), 4)
        b = rest.weight_scale_operand(s, lambda shape: np.zeros(shape, np.float32), 1)
        self.assertNotEqual(strides(a), strides(b))

    def test_activation_scales(self):
        for m, kb in [(16, 56), (1, 3), (64, 1), (32, 12)]:
            s = np.arange(m * kb, dtype=np.float32).reshape(m, kb)
            sa = rest.activation_scale_operand(s, lambda shape: np.empty(shape, np.float32))
            np.testing.assert_array_equal(sa, s)
            self.assertTrue(rest.blockwise_1x128_ok((m, 128 * kb), sa.shape, strides(sa)), (m, kb))
            # A row-major copy is not what torch reads (unless a dimension is 1).
            if m > 1 and kb > 1:
                self.assertFalse(rest.blockwise_1x128_ok((m, 128 * kb), s.shape, strides(s)))


@unittest.skipUnless(CUDA, "needs a CUDA GPU")
class TorchRestTest(unittest.TestCase):
    def check(self, precision, m=4):
        from ctxcost_peers.adapters.torch_rest import TorchRest

        gemms = plan(precision == "fp8", m)
        case = Case(rest_case(precision), gemms)
        a = TorchRest()
        a.check_available()
        reason = a.unsupported_reason(case)
        if reason:
            self.skipTest(reason)
        a.case = case
        a.prepare(case)
        ms, comps = a.run()
        self.assertEqual(list(comps), list(rest.COMPONENTS))
        self.assertGreater(ms, 0)
        picks = picks_of(gemms)
        got = a.rest_output(picks)
        want = expected(case, gemms, picks)
        for gd, gv, wv in zip(gemms, got, want):
            ok, why = ref64.compare(gv, wv, "bf16")
            self.assertTrue(ok, "%s %s: %s" % (precision, gd["name"], why))
        return a

    def test_bf16_and_fp8(self):
        self.check("bf16")
        self.check("fp8")
        self.check("fp8", m=1)

    def test_operands_match_the_numpy_path(self):
        from ctxcost_peers.adapters.torch_rest import TorchRest

        a = TorchRest()
        for precision in ("bf16", "fp8"):
            c = Case(rest_case(precision))
            for gd in plan(precision == "fp8"):
                gm = rest.Gemm(gd)
                irows = [(0, 0), (gm.batch - 1, gm.m - 1)]
                wrows = [(0, 0), (gm.batch - 1, gm.k - 1)]
                self.assertEqual(a.gemm_operands(c, gm, irows, wrows), rest.operands_np(c, gm, irows, wrows), gd["name"])


if __name__ == "__main__":
    unittest.main()
