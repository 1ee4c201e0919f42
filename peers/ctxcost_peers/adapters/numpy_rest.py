"""``numpy-rest``: the rest of a layer in numpy on the CPU, for the small shapes (``tiny``,
``small``): every GEMM of the plan the runner sends, timed per component with
``time.perf_counter``.

Operands come from the shared generator (:mod:`ctxcost_peers.rest`), held as float32 (bf16
and fp8 cases hold bf16-rounded values and round each output to bf16, as ``rest-cpu`` does).
An FP8 GEMM is emulated exactly as the harness defines it: the weight is its e4m3 codes times
their 128 x 128 block scales (dequantised once, in ``prepare``); inside the timed span the
bf16 input is quantised in 1 x 128 groups along k (fp32 scale ``max(amax, 1e-12) / 448``,
e4m3 codes rounded to nearest even) and the dequantised values are multiplied in float32.
"""

import time

import numpy as np

from ..generate import round_bf16_np
from .numpy_ref import NumpyAdapter
from ..rest import dequantise_groups_np, fp8_quantise_np, fp8_weight_dequantised_np, host_bytes, input_np, spans, weight_np

#: Host bytes (operands and outputs as f32) above which numpy-rest declines a case.
MAX_HOST_BYTES = 2 << 30


class NumpyRest(NumpyAdapter):
    id = "numpy-rest"
    method = "rest"

    def too_large(self, case):
        if case.gemms is not None and host_bytes(case.gemms) > MAX_HOST_BYTES:
            return "the rest of a `%s` layer needs %.1f GiB of operands on the host: numpy-rest is for the tiny and small shapes" % (
                case.shape.name,
                host_bytes(case.gemms) / float(1 << 30),
            )
        return None

    def prepare(self, case):
        self.gemms = case.gemms
        self.spans = spans(self.gemms)
        self.inputs_ = [input_np(case, g) for g in self.gemms]
        self.weights = [fp8_weight_dequantised_np(case, g)[None] if g.fp8 else weight_np(case, g) for g in self.gemms]
        self.round_out = case.precision != "f32"

    def gemm(self, i):
        g, x, w = self.gemms[i], self.inputs_[i], self.weights[i]
        if g.fp8:
            s, codes = fp8_quantise_np(x)
            x = dequantise_groups_np(s, codes)
        return np.matmul(x, w)

    def run(self):
        outs = [None] * len(self.gemms)
        comps = {}
        for component, first, end in self.spans:
            t0 = time.perf_counter()
            for i in range(first, end):
                outs[i] = self.gemm(i)
            comps[component] = comps.get(component, 0.0) + (time.perf_counter() - t0) * 1e3
        self.outs = [round_bf16_np(o) for o in outs] if self.round_out else outs
        return sum(comps.values()), comps

    def release(self):
        NumpyAdapter.release(self)
        self.gemms = self.spans = self.inputs_ = self.weights = None
