"""The serve loop over a pipe: a worker subprocess, the protocol's ops, failures, faulty workers."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

import numpy as np

from ctxcost_peers.case import Case

from . import ref64
from .ref64 import case_dict

PEERS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Worker:
    def __init__(self, args):
        env = dict(os.environ)
        env["PYTHONPATH"] = PEERS + os.pathsep + env.get("PYTHONPATH", "")
        self.p = subprocess.Popen(
            [sys.executable] + args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def send(self, obj):
        self.p.stdin.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
        self.p.stdin.flush()

    def line(self):
        return self.p.stdout.readline()

    def ask(self, obj):
        self.send(obj)
        line = self.line()
        if not line:
            raise AssertionError("worker closed stdout; stderr: %s" % self.p.stderr.read()[-2000:])
        return json.loads(line)

    def close(self, timeout=20):
        try:
            self.p.stdin.close()
        except Exception:
            pass
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        self.p.stdout.close()
        self.p.stderr.close()
        return rc


def module(adapter):
    return ["-m", "ctxcost_peers", adapter]


class ServeTest(unittest.TestCase):
    def test_full_session_dense(self):
        w = Worker(module("numpy-dense"))
        try:
            h = w.ask({"op": "hello", "protocol": 1})
            self.assertEqual(
                (h["ok"], h["protocol"], h["id"], h["method"], h["device"], h["timer"]),
                (True, 1, "numpy-dense", "dense", "cpu", "monotonic-clock"),
            )
            self.assertEqual(h["phases"], ["prefill", "decode"])
            self.assertIn("bf16", h["precisions"])
            self.assertIn("numpy", h["library"])
            c = case_dict("dense", "decode", 64, 2, 1, "f32", engine="numpy-dense")
            self.assertEqual(w.ask({"op": "supports", "case": c}), {"ok": True, "supported": True})
            no = w.ask({"op": "supports", "case": case_dict("dsa", "decode", 64, 2, 1, "f32")})
            self.assertEqual((no["ok"], no["supported"]), (True, False))
            self.assertTrue(no["reason"])
            self.assertEqual(w.ask({"op": "prepare", "case": c}), {"ok": True})
            r = w.ask({"op": "run"})
            self.assertTrue(r["ok"])
            self.assertIsInstance(r["ms"], float)
            out = w.ask({"op": "output", "queries": [[1, 0], [0, 0]], "heads": [5, 0]})
            self.assertTrue(out["ok"])
            self.assertIsNone(out["indices"])
            self.assertEqual(len(out["values"]), 2)
            self.assertEqual(len(out["values"][0]), 2 * 64)
            case = Case(c)
            view = ref64.View(case)
            want = list(ref64.mqa_row(view, 1, 0, 5)) + list(ref64.mqa_row(view, 1, 0, 0))
            self.assertTrue(ref64.compare([out["values"][0]], [want], "f32")[0])
            inp = w.ask({"op": "inputs", "case": c, "tensor": "latent", "rows": [[1, 63]]})
            self.assertEqual(len(inp["f32_bits"][0]), 80)
            self.assertEqual(len(inp["bf16_bits"][0]), 80)
            self.assertEqual(w.ask({"op": "release"}), {"ok": True})
            self.assertEqual(w.ask({"op": "bye"}), {"ok": True})
            self.assertEqual(w.p.wait(timeout=20), 0)
        finally:
            w.close()

    def test_dsa_output_has_indices_and_runs_once_if_needed(self):
        w = Worker(module("numpy-dsa"))
        try:
            c = case_dict("dsa", "prefill", 100, 1, 10, "bf16")
            self.assertTrue(w.ask({"op": "prepare", "case": c})["ok"])
            out = w.ask({"op": "output", "queries": [[0, 9]], "heads": [1]})  # no run yet
            self.assertTrue(out["ok"])
            self.assertEqual(len(out["indices"][0]), 64)
            self.assertEqual(len(out["values"][0]), 64)
            r = w.ask({"op": "run"})
            self.assertEqual(set(r["components"]), {"indexer", "topk", "attention"})
        finally:
            self.assertEqual(w.close(), 0)

    def test_errors_keep_the_worker_alive(self):
        w = Worker(module("numpy-dense"))
        try:
            for req in (
                "not json at all",
                {"op": "frobnicate"},
                {"op": "run"},
                {"op": "output", "queries": [[0, 0]], "heads": [0]},
                {"op": "prepare", "case": {"shape": {}}},
                {"op": "inputs", "case": case_dict("dense", "decode", 8, 1, 1, "f32"), "tensor": "nope", "rows": [[0, 0]]},
            ):
                r = w.ask(req)
                self.assertEqual((r["ok"], r["kind"]), (False, "error"), req)
                self.assertTrue(r["error"])
            r = w.ask({"op": "prepare", "case": case_dict("dsa", "decode", 8, 1, 1, "f32")})
            self.assertEqual((r["ok"], r["kind"]), (False, "unsupported"))
            r = w.ask({"op": "hello", "protocol": 2})
            self.assertEqual(r["ok"], False)
            c = case_dict("dense", "decode", 8, 1, 1, "f32")
            self.assertTrue(w.ask({"op": "prepare", "case": c})["ok"])
            r = w.ask({"op": "output", "queries": [[1, 0]], "heads": [0]})
            self.assertEqual((r["ok"], r["kind"]), (False, "error"))
            self.assertTrue(w.ask({"op": "hello", "protocol": 1})["ok"])
        finally:
            self.assertEqual(w.close(), 0)  # EOF -> exit 0

    def test_stdout_stays_clean(self):
        script = textwrap.dedent(
            """
            import os, sys
            sys.path.insert(0, %r)
            from ctxcost_peers.protocol import guard_stdout, serve
            guard_stdout()
            from ctxcost_peers.adapters.numpy_ref import NumpyDense
            class Noisy(NumpyDense):
                def prepare(self, case):
                    print("hello from print")
                    os.write(1, b"hello from fd 1\\n")
                    NumpyDense.prepare(self, case)
            print("noise at start-up")
            serve(Noisy())
            """
            % PEERS
        )
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(script)
        w = Worker([f.name])
        try:
            self.assertEqual(w.ask({"op": "prepare", "case": case_dict("dense", "decode", 8, 1, 1, "f32")}), {"ok": True})
            self.assertTrue(w.ask({"op": "run"})["ok"])
            self.assertEqual(w.ask({"op": "bye"}), {"ok": True})
            self.assertEqual(w.line(), "")
            err = w.p.stderr.read()
            self.assertIn("hello from print", err)
            self.assertIn("hello from fd 1", err)
        finally:
            w.close()
            os.unlink(f.name)

    def test_list(self):
        env = dict(os.environ, PYTHONPATH=PEERS)
        out = subprocess.run([sys.executable, "-m", "ctxcost_peers", "--list"], capture_output=True, text=True, env=env)
        self.assertEqual(out.returncode, 0)
        rows = dict(line.split() for line in out.stdout.splitlines())
        self.assertEqual(rows["numpy-dense"], "dense")
        self.assertEqual(rows["numpy-dsa"], "dsa")
        self.assertEqual(rows["cudnn-sdpa"], "dense")


class LibraryAdaptersTest(unittest.TestCase):
    """Adapters whose library is missing answer `unavailable` with what to install."""

    def test_unavailable_says_what_to_install(self):
        libs = {
            "torch-eager-dense": ("torch", "pip install torch"),
            "torch-eager-dsa": ("torch", "pip install torch"),
            "cudnn-sdpa": ("torch", "pip install torch"),
            "flash-sdpa": ("torch", "pip install torch"),
            "flashinfer": ("flashinfer", "pip install flashinfer-python"),
            "flash-mla": ("flash_mla", "FlashMLA"),
            "flash-mla-dsa": ("flash_mla", "FlashMLA"),
            "deep-gemm": ("deep_gemm", "DeepGEMM"),
            "torch-rest": ("torch", "pip install torch"),
        }
        for aid, (mod, hint) in libs.items():
            try:
                __import__(mod)
                continue  # installed here: nothing to check
            except Exception:
                pass
            w = Worker(module(aid))
            try:
                h = w.ask({"op": "hello", "protocol": 1})
                self.assertEqual((h["ok"], h["kind"]), (False, "unavailable"), aid)
                self.assertIn(hint, h["error"], aid)
                s = w.ask({"op": "supports", "case": case_dict("dense", "decode", 8, 1, 1, "bf16")})
                self.assertEqual(s.get("kind"), "unavailable", aid)
            finally:
                self.assertEqual(w.close(), 0)


class FaultyTest(unittest.TestCase):
    CASE = case_dict("dense", "decode", 16, 1, 1, "f32")

    def start(self, mode):
        w = Worker(["-m", "ctxcost_peers.faulty", mode])
        self.assertTrue(w.ask({"op": "hello", "protocol": 1})["ok"])
        self.assertTrue(w.ask({"op": "supports", "case": self.CASE})["supported"])
        return w

    def test_crash_on_prepare(self):
        w = self.start("crash-on-prepare")
        w.send({"op": "prepare", "case": self.CASE})
        self.assertEqual(w.line(), "")
        self.assertEqual(w.p.wait(timeout=20), 3)
        self.assertIn("crash", w.p.stderr.read())
        w.close()

    def test_crash_on_run(self):
        w = self.start("crash-on-run")
        self.assertTrue(w.ask({"op": "prepare", "case": self.CASE})["ok"])
        w.send({"op": "run"})
        part = w.p.stdout.read()
        self.assertTrue(part and not part.endswith("\n"))
        self.assertEqual(w.p.wait(timeout=20), 5)
        w.close()

    def test_hang_on_run(self):
        w = self.start("hang-on-run")
        self.assertTrue(w.ask({"op": "prepare", "case": self.CASE})["ok"])
        w.send({"op": "run"})
        with self.assertRaises(subprocess.TimeoutExpired):
            w.p.wait(timeout=1.0)
        w.p.kill()
        w.close()

    def test_garbage(self):
        w = self.start("garbage")
        w.send({"op": "prepare", "case": self.CASE})
        line = w.line()
        with self.assertRaises(ValueError):
            json.loads(line)
        w.send({"op": "run"})
        with self.assertRaises(ValueError):
            json.loads(w.line())
        self.assertEqual(w.close(), 0)

    def test_wrong_and_nan(self):
        good = Worker(module("numpy-dense"))
        good.ask({"op": "prepare", "case": self.CASE})
        ref = good.ask({"op": "output", "queries": [[0, 0]], "heads": [0]})["values"][0]
        good.close()
        w = self.start("wrong")
        self.assertTrue(w.ask({"op": "prepare", "case": self.CASE})["ok"])
        self.assertTrue(w.ask({"op": "run"})["ok"])
        got = w.ask({"op": "output", "queries": [[0, 0]], "heads": [0]})["values"][0]
        self.assertGreater(max(abs(a - b) for a, b in zip(got, ref)), 0.5)
        w.close()
        w = self.start("nan")
        self.assertTrue(w.ask({"op": "prepare", "case": self.CASE})["ok"])
        self.assertTrue(w.ask({"op": "run"})["ok"])
        got = w.ask({"op": "output", "queries": [[0, 0]], "heads": [0]})
        self.assertTrue(got["ok"])
        self.assertTrue(all(v is None for v in got["values"][0]))
        w.close()


class ExampleTest(unittest.TestCase):
    def test_example_kernel_matches_the_reference(self):
        w = Worker([os.path.join(PEERS, "examples", "my_kernel.py")])
        try:
            h = w.ask({"op": "hello", "protocol": 1})
            self.assertEqual((h["id"], h["method"], h["phases"]), ("my-kernel", "dense", ["decode"]))
            c = case_dict("dense", "decode", 200, 3, 2, "f32", engine="my-kernel")
            self.assertTrue(w.ask({"op": "supports", "case": c})["supported"])
            self.assertTrue(w.ask({"op": "prepare", "case": c})["ok"])
            self.assertTrue(w.ask({"op": "run"})["ok"])
            queries = [[b, i] for b in range(3) for i in range(2)]
            out = w.ask({"op": "output", "queries": queries, "heads": list(range(8))})
            view = ref64.View(Case(c))
            want = [np.concatenate([ref64.mqa_row(view, b, i, h) for h in range(8)]) for b, i in queries]
            ok, why = ref64.compare(out["values"], want, "f32")
            self.assertTrue(ok, why)
        finally:
            self.assertEqual(w.close(), 0)


if __name__ == "__main__":
    unittest.main()
