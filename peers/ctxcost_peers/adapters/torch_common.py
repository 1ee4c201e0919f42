"""Shared pieces of the torch-based adapters: importing torch (or saying what to install), the
device, inputs built on the device from the shared generator, the L2 flush and the timers."""

import sys
import time

from ..generate import inputs_torch, tensor_torch
from ..protocol import Adapter, Unavailable

TORCH_HINT = "torch is not installed: pip install torch (a CUDA build for GPU runs, see https://pytorch.org)"


def import_torch():
    try:
        import torch  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA install
        raise Unavailable("%s (%s: %s)" % (TORCH_HINT, type(e).__name__, e))
    return torch


class Clock:
    """Marks on the device timeline: CUDA events on GPU, perf_counter on CPU (where torch ops
    are synchronous)."""

    def __init__(self, torch, cuda):
        self.torch = torch
        self.cuda = cuda

    def mark(self):
        if self.cuda:
            e = self.torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def ms(self, a, b):
        """Milliseconds between two marks (after :meth:`sync`)."""
        if self.cuda:
            return a.elapsed_time(b)
        return (b - a) * 1e3

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()


class TorchAdapter(Adapter):
    """Base of the torch adapters. Subclasses implement ``build`` (untimed) and ``compute``
    (the timed work: it calls ``self.part(name)`` between parts when it reports components)."""

    needs_cuda = False
    extra_library = ()  # (module name, install hint) pairs checked by check_available

    def __init__(self):
        Adapter.__init__(self)
        self._torch = None
        self.flush_buf = None

    # -- availability ---------------------------------------------------------------------
    @property
    def torch(self):
        if self._torch is None:
            self._torch = import_torch()
        return self._torch

    def check_available(self):
        for mod, hint in self.extra_library:  # the adapter's own library first: its hint matters most
            try:
                __import__(mod)
            except Exception as e:
                raise Unavailable("%s (%s: %s)" % (hint, type(e).__name__, e))
        torch = self.torch
        if self.needs_cuda and not torch.cuda.is_available():
            raise Unavailable("%s needs a CUDA GPU; torch %s sees none" % (self.id, torch.__version__))

    @property
    def cuda(self):
        return self.torch.cuda.is_available()

    @property
    def dev(self):
        return self.torch.device("cuda") if self.cuda else self.torch.device("cpu")

    @property
    def timer(self):
        return "cuda-events" if self.cuda else "monotonic-clock"

    def device(self):
        if self.cuda:
            return self.torch.cuda.get_device_name(0)
        return "cpu"

    def library(self):
        torch = self.torch
        parts = ["torch %s" % torch.__version__]
        if self.cuda:
            parts.append("CUDA %s" % torch.version.cuda)
            try:
                parts.append("cuDNN %s" % torch.backends.cudnn.version())
            except Exception:
                pass
        for mod, _ in self.extra_library:
            try:
                m = __import__(mod)
                parts.append("%s %s" % (mod, getattr(m, "__version__", "?")))
            except Exception:
                pass
        parts.append("python %s" % sys.version.split()[0])
        return ", ".join(parts)

    # -- inputs ---------------------------------------------------------------------------
    def inputs(self, case, tensor, rows):
        self.check_available()
        return inputs_torch(self.torch, case, tensor, rows, self.dev)

    def tensor(self, name, dtype):
        """Tensor ``name`` of the current case on the device: f32 values, or rounded to bf16."""
        return tensor_torch(self.torch, self.case, name, self.dev, dtype)

    def compute_dtype(self):
        torch = self.torch
        return torch.float32 if self.case.precision == "f32" else torch.bfloat16

    def set_matmul_precision(self, tf32):
        """TF32 off for f32 cases (so f32 matmuls are f32); on where the operands are exact in
        TF32 (bf16 or fp8 values held in f32), where it changes no product."""
        torch = self.torch
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
        torch.backends.cudnn.allow_tf32 = bool(tf32)

    def free_bytes(self):
        torch = self.torch
        if self.cuda:
            free, _ = torch.cuda.mem_get_info()
            return free
        return 16 << 30

    def budget(self):
        """Bytes one chunk of intermediates may take."""
        return max(256 << 20, min(8 << 30, self.free_bytes() // 6))

    # -- timing ---------------------------------------------------------------------------
    def flush_l2(self):
        """Evict the L2 cache: write a buffer of at least twice its size (256 MiB or more)."""
        if not self.cuda:
            return
        torch = self.torch
        if self.flush_buf is None:
            l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or (50 << 20)
            self.flush_buf = torch.empty(max(256 << 20, 2 * l2), dtype=torch.uint8, device=self.dev)
        self.flush_buf.zero_()

    def part(self, name):
        """Close the current part (if any) and open ``name`` (None: just close)."""
        m = self.clock.mark()
        if self._part is not None:
            self._marks.append((self._part[0], self._part[1], m))
        self._part = (name, m) if name else None

    def run(self):
        torch = self.torch
        self.clock = Clock(torch, self.cuda)
        self._marks = []
        self._part = None
        self.flush_l2()
        with torch.no_grad():
            self.compute()
        self.part(None)
        self.clock.sync()
        comps = {}
        for name, a, b in self._marks:
            comps[name] = comps.get(name, 0.0) + self.clock.ms(a, b)
        total = sum(comps.values())
        if list(comps) == ["total"]:
            return total, None
        return total, comps

    def compute(self):
        raise NotImplementedError

    def prepare(self, case):
        torch = self.torch
        with torch.no_grad():
            self.build(case)
            # Warm-up (compiles, autotunes, allocator), untimed.
            self.clock = Clock(torch, self.cuda)
            self._marks, self._part = [], None
            self.compute()
            self.part(None)
            self.clock.sync()
        self.ran = False

    def build(self, case):
        raise NotImplementedError

    def release(self):
        Adapter.release(self)
        for k in list(self.__dict__):
            if k not in ("_torch", "case", "out", "sel", "ran") and hasattr(self.__dict__[k], "data_ptr"):
                self.__dict__[k] = None
        self.flush_buf = None
        if self._torch is not None and self.cuda:
            self.torch.cuda.empty_cache()
