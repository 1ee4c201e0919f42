"""Workers that fail on purpose, for the runner's tests:
``python3 -m ctxcost_peers.faulty MODE``. Until the failure they behave as numpy-dense (the
``rest-*`` modes: as numpy-rest).

Modes:
- ``crash-on-prepare``: on prepare, write a message to stderr and exit with status 3.
- ``crash-on-run``: on run, write part of a response line to stdout, then exit with status 5.
- ``hang-on-run``: on run, sleep forever.
- ``garbage``: answer prepare and run with a line that is not JSON
  (``garbage-on-prepare`` / ``garbage-on-run``: only that op).
- ``wrong``: outputs off by +1.0 (fails verification).
- ``nan``: outputs NaN (written as null).
- ``rest-wrong-gemm``: one element of the ``router`` GEMM's output off by +1.0 (fails
  verification).
- ``rest-short-gemm``: the ``output`` answer of the ``router`` GEMM lacks its last value.
- ``rest-missing-component``: ``run`` leaves ``moe`` out of its components (and out of ``ms``).
"""

import os
import sys
import time

from .adapters.numpy_ref import NumpyDense
from .adapters.numpy_rest import NumpyRest
from .protocol import Answered, real_stdout

MODES = (
    "crash-on-prepare",
    "crash-on-run",
    "hang-on-run",
    "garbage",
    "garbage-on-prepare",
    "garbage-on-run",
    "wrong",
    "nan",
    "rest-wrong-gemm",
    "rest-short-gemm",
    "rest-missing-component",
)

#: The GEMM the rest modes spoil.
SPOILED_GEMM = "router"


class Faulty(NumpyDense):
    def __init__(self, mode):
        NumpyDense.__init__(self)
        self.mode = mode
        self.id = "faulty-" + mode

    def _garbage(self, op):
        out = real_stdout()
        out.write("this is not JSON: %s went wrong <<<\n" % op)
        out.flush()
        raise Answered()

    def prepare(self, case):
        if self.mode == "crash-on-prepare":
            sys.stderr.write("faulty worker: crashing on prepare as asked (exit 3)\n")
            sys.stderr.flush()
            os._exit(3)
        if self.mode in ("garbage", "garbage-on-prepare"):
            NumpyDense.prepare(self, case)
            self._garbage("prepare")
        NumpyDense.prepare(self, case)

    def run(self):
        if self.mode == "crash-on-run":
            out = real_stdout()
            out.write('{"ok":true,"ms":1.')
            out.flush()
            sys.stderr.write("faulty worker: crashing mid-run as asked (exit 5)\n")
            sys.stderr.flush()
            os._exit(5)
        if self.mode == "hang-on-run":
            sys.stderr.write("faulty worker: hanging on run as asked\n")
            sys.stderr.flush()
            while True:
                time.sleep(3600)
        if self.mode in ("garbage", "garbage-on-run"):
            self._garbage("run")
        ms, comps = NumpyDense.run(self)
        if self.mode == "wrong":
            self.out = self.out + 1.0
        elif self.mode == "nan":
            self.out = self.out * float("nan")
        return ms, comps


class FaultyRest(NumpyRest):
    def __init__(self, mode):
        NumpyRest.__init__(self)
        self.mode = mode
        self.id = "faulty-" + mode

    def spoiled(self):
        return [i for i, g in enumerate(self.gemms) if g.name == SPOILED_GEMM][0]

    def run(self):
        ms, comps = NumpyRest.run(self)
        if self.mode == "rest-wrong-gemm":
            i = self.spoiled()
            self.outs[i] = self.outs[i].copy()
            self.outs[i][0, 0, 0] += 1.0
        elif self.mode == "rest-missing-component":
            ms -= comps.pop("moe")
        return ms, comps

    def rest_output(self, picks):
        vals = NumpyRest.rest_output(self, picks)
        if self.mode == "rest-short-gemm":
            i = self.spoiled()
            vals[i] = vals[i][:-1]
        return vals


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or argv[0] not in MODES:
        sys.stderr.write("usage: python3 -m ctxcost_peers.faulty MODE  (MODE: %s)\n" % ", ".join(MODES))
        return 2
    from .protocol import guard_stdout, serve

    guard_stdout()
    return serve(FaultyRest(argv[0]) if argv[0].startswith("rest-") else Faulty(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
