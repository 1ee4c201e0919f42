import sys
import unittest

import numpy as np

from ctxcost_peers import generate as g
from ctxcost_peers.case import Case
from .ref64 import case_dict

# Values printed by a standalone C program of the algorithm in core/src/inputs.rs (uint64
# wraparound, f32 arithmetic): (seed, stream, index) -> f32 bits.
PINNED = [
    ((0, 1, 0), 0x3E45E4D8),
    ((42, 4, 0), 0xBF2B85F6),
    ((42, 5, 12345), 0x3F0E1DD4),
    ((7, 3, 5), 0xBEEF7FA4),
    ((2**64 - 1, 8, 2**40 + 3), 0xBEF30034),
]


def uniform_scalar(seed, stream, index):
    """One value, computed with Python ints (slow; the definition the tests pin): the test's
    own oracle, apart from the package's vectorised paths."""
    bits = g.splitmix64((g.stream_base(seed, stream) + index) & g.MASK64) >> 40
    return float(np.float32(np.float32(bits) * np.float32(1.0 / 8388608.0) - np.float32(1.0)))



def uniform_np_u64(seed, stream, index):
    """The same values through numpy uint64 wraparound (an independent check of the int64 path)."""
    with np.errstate(over="ignore"):
        z = np.asarray(index, dtype=np.uint64) + np.uint64(g.stream_base(seed, stream))
        z = z + np.uint64(g._GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(g._MUL1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(g._MUL2)
        z = z ^ (z >> np.uint64(31))
        bits = z >> np.uint64(40)
    return bits.astype(np.float32) * np.float32(1.0 / 8388608.0) - np.float32(1.0)


def bits(x):
    return int(np.float32(x).view(np.uint32))


class GeneratorTest(unittest.TestCase):
    def test_pinned_values(self):
        for (seed, stream, index), want in PINNED:
            self.assertEqual(bits(uniform_scalar(seed, stream, index)), want)
            v = g.uniform_np(seed, stream, np.array([index], dtype=np.int64))[0]
            self.assertEqual(bits(v), want, (seed, stream, index))
            v = uniform_np_u64(seed, stream, np.array([index], dtype=np.uint64))[0]
            self.assertEqual(bits(v), want)

    def test_int64_path_matches_uint64_path(self):
        rng = np.random.default_rng(1)
        for seed in (0, 42, 2**63 + 5, 2**64 - 1):
            for stream in range(1, 9):
                idx = np.concatenate(
                    [np.arange(1000), rng.integers(0, 2**42, 1000), [2**40 * 5 - 1, 64 * 131072 * 576 - 1]]
                ).astype(np.int64)
                a = g.uniform_np(seed, stream, idx).view(np.uint32)
                b = uniform_np_u64(seed, stream, idx.astype(np.uint64)).view(np.uint32)
                np.testing.assert_array_equal(a, b)
        for i in range(0, 50):
            self.assertEqual(bits(g.uniform_np(9, 3, np.array([i]))[0]), bits(uniform_scalar(9, 3, i)))

    def test_range_and_seeding(self):
        v = g.uniform_np(7, 3, np.arange(10000))
        self.assertTrue(((v >= -1) & (v < 1)).all())
        self.assertLess(abs(float(v.astype(np.float64).mean())), 0.05)
        self.assertNotEqual(uniform_scalar(7, 3, 5), uniform_scalar(8, 3, 5))

    def test_tensor_layout(self):
        c = Case(case_dict("dsa", "prefill", 40, 2, 5, "f32"))
        self.assertEqual(g.tensor_dims(c, "mqa_q"), (2, 5, 8 * 80))
        self.assertEqual(g.tensor_dims(c, "latent"), (2, 40, 80))
        self.assertEqual(g.tensor_dims(c, "index_w"), (2, 5, 4))
        t = g.tensor_np(c, "latent", chunk=100)  # chunking must not change anything
        for b, r in [(0, 0), (1, 39), (1, 7)]:
            want = [uniform_scalar(42, 5, (b * 40 + r) * 80 + col) for col in range(80)]
            np.testing.assert_array_equal(t[b, r], np.array(want, dtype=np.float32))
            np.testing.assert_array_equal(g.raw_rows_np(c, "latent", [(b, r)])[0], t[b, r])

    def test_bf16(self):
        r = g.round_bf16_np
        self.assertEqual(r(np.float32(1.0)), 1.0)
        self.assertEqual(r(np.float32(1.0 + 1.0 / 256)), 1.0)  # tie -> even
        self.assertEqual(r(np.float32(1.0 + 3.0 / 256)), np.float32(1.0 + 4.0 / 256))
        self.assertEqual(r(np.float32(-0.3)), np.float32(-0.30078125))
        self.assertEqual(int(g.bf16_bits_np(np.array([1.0], np.float32))[0]), 0x3F80)
        x = g.uniform_np(1, 2, np.arange(100000))
        y = r(x)
        self.assertTrue((np.abs(y - x) <= np.abs(x) * 2.0**-8).all())
        self.assertTrue(((y.view(np.uint32) & 0xFFFF) == 0).all())

    def test_e4m3(self):
        r = g.round_e4m3_np
        cases = [(1.0, 1.0), (1.0625, 1.0), (1.1, 1.125), (500.0, 448.0), (-3.3, -3.25), (2.0**-9, 2.0**-9), (0.0, 0.0)]
        for x, want in cases:
            self.assertEqual(float(r(np.float32(x))), want, x)
        # the 126 positive finite e4m3 values (codes 1..126) are fixed points, and a midpoint
        # between neighbours goes to the even code
        def decode(c):
            e, m = c >> 3, c & 7
            return m * 2.0**-9 if e == 0 else (1 + m / 8.0) * 2.0 ** (e - 7)

        vals = [decode(c) for c in range(1, 127)]
        self.assertEqual(vals[-1], 448.0)
        for c, v in enumerate(vals, start=1):
            self.assertEqual(float(r(np.float32(v))), v)
            self.assertEqual(float(r(np.float32(-v))), -v)
            if c < 126:
                mid = np.float32((v + vals[c]) / 2)
                self.assertEqual(float(r(mid)), v if c % 2 == 0 else vals[c], c)
        q, s = g.fake_quant_e4m3_np(np.array([0.5, -1.0, 0.25], np.float32), "pow2")
        self.assertEqual(float(s), float(np.exp2(np.ceil(np.log2(1.0 / 448.0)))))
        self.assertTrue(np.all(np.abs(q - [0.5, -1.0, 0.25]) <= 0.07 * np.abs([0.5, -1.0, 0.25])))
        q, s = g.fake_quant_e4m3_np(np.array([0.875, -0.1], np.float32), "fp32")
        self.assertEqual(float(s), float(np.float32(0.875) / np.float32(448.0)))
        self.assertEqual(float(q[0]), 0.875)

    def test_fp8_rounding_layout(self):
        c = Case(case_dict("dsa", "decode", 16, 1, 1, "fp8"))
        raw = g.raw_rows_np(c, "latent", [(0, 3)])
        out = g.round_tensor_np(c, "latent", raw)[0]
        lat = c.shape.kv_lora_rank
        np.testing.assert_array_equal(out[lat:], g.round_bf16_np(raw[0, lat:]))
        s = np.float32(np.abs(raw[0, :lat]).max()) / np.float32(448)
        np.testing.assert_array_equal(out[:lat], g.round_e4m3_np(raw[0, :lat] / s) * s)
        w = g.raw_rows_np(c, "index_w", [(0, 0)])
        np.testing.assert_array_equal(g.round_tensor_np(c, "index_w", w), w)

    def test_inputs_bits(self):
        c = Case(case_dict("dense", "decode", 16, 2, 1, "bf16"))
        f32, b16 = g.inputs_np(c, "mqa_q", [[1, 0], [0, 0]])
        self.assertEqual(len(f32), 2)
        self.assertEqual(len(f32[0]), 8 * 80)
        want = [bits(uniform_scalar(42, 4, (1 * 1 + 0) * 640 + col)) for col in range(640)]
        self.assertEqual(f32[0], want)
        self.assertEqual(b16[0], [int(g.bf16_bits_np(np.array([np.uint32(w)]).view(np.float32))[0]) for w in want])
        with self.assertRaises(ValueError):
            g.inputs_np(c, "mqa_q", [[2, 0]])
        with self.assertRaises(ValueError):
            g.inputs_np(c, "nope", [[0, 0]])


if __name__ == "__main__":
    unittest.main()
