"""The worker side of the external-engine protocol (peers/PROTOCOL.md): one JSON object per
line in, one per line out.

An adapter subclasses :class:`Adapter` and hands an instance to :func:`serve`. ``serve``
keeps stdout clean (everything printed by Python or by libraries goes to stderr; responses go
to the saved real stdout), turns every exception into a ``{"ok": false, ...}`` response and
stays alive until ``bye`` or the end of stdin.
"""

import json
import math
import os
import sys
import time
import traceback

PROTOCOL_VERSION = 1

_REAL_STDOUT = None


class WorkerError(Exception):
    """A failure with a protocol kind (``error``, ``unsupported``, ``oom``, ``unavailable``)."""

    kind = "error"


class Unavailable(WorkerError):
    """The adapter's library is missing or unusable here; the text says what to install."""

    kind = "unavailable"


class Unsupported(WorkerError):
    """The adapter cannot run this request (a case it does not handle)."""

    kind = "unsupported"


class Answered(Exception):
    """Raised by an adapter that wrote its response line itself (used by the faulty workers)."""


def real_stdout():
    """The file the responses go to (the process's stdout before the guard moved it)."""
    return _REAL_STDOUT if _REAL_STDOUT is not None else sys.stdout


def guard_stdout():
    """Move fd 1 and ``sys.stdout`` to stderr; return a file on the original stdout.

    After this, ``print`` and C libraries writing to fd 1 land on stderr, and only the
    protocol writes to the returned file. Idempotent."""
    global _REAL_STDOUT
    if _REAL_STDOUT is not None:
        return _REAL_STDOUT
    try:
        sys.stdout.flush()
    except Exception:
        pass
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _REAL_STDOUT = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
    return _REAL_STDOUT


def is_oom(exc):
    """Whether an exception is an out-of-memory (CUDA or host)."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    if name in ("OutOfMemoryError", "OutOfMemoryErrorCUDA"):
        return True
    text = str(exc)
    return "out of memory" in text.lower() or "CUDA_ERROR_OUT_OF_MEMORY" in text or "cudaErrorMemoryAllocation" in text


def finite_rows(rows):
    """Lists of floats with non-finite values as None (JSON has no NaN)."""
    out = []
    for r in rows:
        out.append([v if (v is not None and math.isfinite(v)) else None for v in r])
    return out


def array_values(arr):
    """A numpy array, flattened, as a JSON-ready list (exact doubles of f32 values; non-finite -> None)."""
    import numpy as np

    arr = np.asarray(arr).reshape(-1)
    vals = arr.astype(np.float64).tolist()
    if arr.size and not np.isfinite(arr).all():
        vals = finite_rows([vals])[0]
    return vals


def array_rows(arr):
    """A 2-D numpy array as JSON-ready lists (exact doubles of f32 values; non-finite -> None)."""
    import numpy as np

    arr = np.asarray(arr)
    rows = arr.astype(np.float64).tolist()
    if arr.size and not np.isfinite(arr).all():
        rows = finite_rows(rows)
    return rows


class Adapter:
    """Base of every adapter. Subclasses set the class fields and implement prepare/run; the
    defaults cover hello, supports (method, phase, precision), output (from ``self.out`` and
    ``self.sel``; rest cases: from ``self.outs``, one ``[batch, m, n]`` array or tensor per
    GEMM), inputs and gemm_operands (numpy generator) and release."""

    id = "adapter"
    method = "dense"
    phases = ("prefill", "decode")
    precisions = ("f32", "bf16")
    timer = "monotonic-clock"

    def __init__(self):
        self.case = None
        self.out = None  # [B, q, H, v_dim] array or tensor after run
        self.sel = None  # [B, q, k] int array or tensor after run (DSA)
        self.outs = None  # rest cases: per GEMM, its output [batch, m, n] after run
        self.ran = False

    # -- hello ----------------------------------------------------------------------------
    def device(self):
        return "cpu"

    def library(self):
        import numpy

        return "numpy %s, python %s" % (numpy.__version__, sys.version.split()[0])

    def check_available(self):
        """Raise :class:`Unavailable` when the adapter's library cannot be used."""

    def hello(self):
        self.check_available()
        return {
            "id": self.id,
            "method": self.method,
            "phases": list(self.phases),
            "precisions": list(self.precisions),
            "device": self.device(),
            "library": self.library(),
            "timer": self.timer,
        }

    # -- supports -------------------------------------------------------------------------
    def unsupported_reason(self, case):
        """None when the case can run, else the reason. Subclasses extend it."""
        if case.method != self.method:
            what = "the rest of a layer (rest)" if self.method == "rest" else "%s attention" % self.method
            return "%s computes %s; the case asks for %s" % (self.id, what, case.method)
        if case.phase not in self.phases:
            return "%s runs %s only" % (self.id, " and ".join(self.phases))
        if case.precision not in self.precisions:
            return "%s runs precision %s only" % (self.id, ", ".join(self.precisions))
        if case.is_sparse and not case.shape.has_indexer:
            return "shape %s has no indexer (DSA needs index_heads, index_dim and top_k)" % case.shape.name
        if case.is_rest and case.gemms is not None and not case.gemms:
            return "the plan of this rest case has no GEMM"
        return None

    # -- the case -------------------------------------------------------------------------
    def prepare(self, case):
        raise NotImplementedError

    def run(self):
        """One timed execution: return ``(ms, components or None)``."""
        raise NotImplementedError

    def output(self, queries, heads):
        """Values ``[n, len(heads) * v_dim]`` and indices ``[n, k]`` (or None) as arrays/lists."""
        import numpy as np

        out = self.out
        if hasattr(out, "detach"):  # torch tensor: fetch only the requested rows
            import torch

            bi = torch.tensor([b for b, _ in queries], dtype=torch.long, device=out.device)
            qi = torch.tensor([i for _, i in queries], dtype=torch.long, device=out.device)
            hi = torch.tensor(heads, dtype=torch.long, device=out.device)
            vals = out[bi, qi][:, hi].float().reshape(len(queries), -1).cpu().numpy()
        else:
            bi = np.array([b for b, _ in queries], dtype=np.int64)
            qi = np.array([i for _, i in queries], dtype=np.int64)
            vals = np.asarray(out)[bi, qi][:, np.array(heads, dtype=np.int64)].reshape(len(queries), -1)
        idx = None
        if self.case.is_sparse:
            sel = self.sel
            if hasattr(sel, "detach"):
                idx = sel[bi, qi].cpu().numpy()
            else:
                idx = np.asarray(sel)[bi, qi]
        return vals, idx

    def gemm_output(self, i):
        """Rest cases: the output ``[batch, m, n]`` of GEMM ``i`` of the last run."""
        return self.outs[i]

    def rest_output(self, picks):
        """Rest cases: per GEMM, the picked elements (``picks[i] = (rows, cols)``) as one flat
        array in (batch, row, column) order."""
        import numpy as np

        vals = []
        for i, (rows, cols) in enumerate(picks):
            out = self.gemm_output(i)
            if hasattr(out, "detach"):  # torch tensor: fetch only the picked elements
                import torch

                r = torch.tensor(rows, dtype=torch.long, device=out.device)
                c = torch.tensor(cols, dtype=torch.long, device=out.device)
                vals.append(out[:, r][:, :, c].float().reshape(-1).cpu().numpy())
            else:
                out = np.asarray(out)
                vals.append(out[:, np.array(rows, dtype=np.int64)][:, :, np.array(cols, dtype=np.int64)].reshape(-1))
        return vals

    def inputs(self, case, tensor, rows):
        from .generate import inputs_np

        return inputs_np(case, tensor, rows)

    def gemm_operands(self, case, gemm, input_rows, weight_rows):
        """The ``gemm_operands`` answer (rest cases; see PROTOCOL.md)."""
        from .rest import operands_np

        return operands_np(case, gemm, input_rows, weight_rows)

    def release(self):
        self.case = None
        self.out = None
        self.sel = None
        self.outs = None
        self.ran = False


def _check_queries(case, queries, heads):
    qs = []
    for pair in queries:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError("queries must be [b, i] pairs, got %r" % (pair,))
        b, i = int(pair[0]), int(pair[1])
        if not (0 <= b < case.batch and 0 <= i < case.query_len):
            raise ValueError("query [%d, %d] is outside batch %d x query_len %d" % (b, i, case.batch, case.query_len))
        qs.append((b, i))
    hs = []
    for h in heads:
        h = int(h)
        if not (0 <= h < case.shape.heads):
            raise ValueError("head %d is outside 0..%d" % (h, case.shape.heads))
        hs.append(h)
    return qs, hs


class Server:
    """Dispatches requests to an adapter."""

    def __init__(self, adapter):
        self.adapter = adapter

    def handle(self, req):
        from .case import Case

        a = self.adapter
        op = req.get("op")
        if op == "hello":
            proto = req.get("protocol", PROTOCOL_VERSION)
            if proto != PROTOCOL_VERSION:
                raise Unsupported("this worker speaks protocol %d, not %r" % (PROTOCOL_VERSION, proto))
            info = a.hello()
            return dict({"ok": True, "protocol": PROTOCOL_VERSION}, **info)
        if op == "supports":
            case = Case(req.get("case"), req.get("gemms"))
            a.check_available()
            reason = a.unsupported_reason(case)
            if reason is None:
                return {"ok": True, "supported": True}
            return {"ok": True, "supported": False, "reason": reason}
        if op == "prepare":
            case = Case(req.get("case"), req.get("gemms"))
            if case.is_rest and case.gemms is None:
                raise WorkerError("prepare of a rest case needs its GEMM plan (field `gemms`)")
            a.check_available()
            reason = a.unsupported_reason(case)
            if reason is not None:
                raise Unsupported(reason)
            if a.case is not None:
                a.release()
            a.ran = False
            a.case = case
            try:
                a.prepare(case)
            except Answered:
                raise
            except BaseException:
                a.case = None
                raise
            a.case = case
            return {"ok": True}
        if op == "run":
            if a.case is None:
                raise WorkerError("run before prepare")
            ms, comps = a.run()
            a.ran = True
            resp = {"ok": True, "ms": float(ms)}
            if comps:
                resp["components"] = {k: float(v) for k, v in comps.items()}
            return resp
        if op == "output":
            if a.case is None:
                raise WorkerError("output before prepare")
            if a.case.is_rest:
                from .rest import check_picks

                picks = check_picks(a.case.gemms, req.get("gemms"))
                if not a.ran:
                    a.run()
                    a.ran = True
                return {"ok": True, "values": [array_values(v) for v in a.rest_output(picks)]}
            qs, hs = _check_queries(a.case, req.get("queries", []), req.get("heads", []))
            if not a.ran:
                a.run()
                a.ran = True
            vals, idx = a.output(qs, hs)
            resp = {"ok": True, "values": array_rows(vals) if len(qs) else []}
            if idx is None:
                resp["indices"] = None
            else:
                import numpy as np

                resp["indices"] = np.asarray(idx, dtype=np.int64).tolist()
            return resp
        if op == "inputs":
            case = Case(req.get("case"))
            tensor = req.get("tensor")
            f32, b16 = a.inputs(case, tensor, req.get("rows", []))
            return {"ok": True, "f32_bits": f32, "bf16_bits": b16}
        if op == "gemm_operands":
            from .rest import Gemm, check_operand_rows

            case = Case(req.get("case"))
            gemm = Gemm(req.get("gemm"))
            irows, wrows = check_operand_rows(gemm, req.get("input_rows", []), req.get("weight_rows", []))
            return dict({"ok": True}, **a.gemm_operands(case, gemm, irows, wrows))
        if op == "release":
            a.release()
            return {"ok": True}
        if op == "bye":
            return {"ok": True}
        raise WorkerError("unknown op %r (known: hello, supports, prepare, run, output, inputs, gemm_operands, release, bye)" % (op,))


def _failure(exc):
    if isinstance(exc, WorkerError):
        kind = exc.kind
    elif is_oom(exc):
        kind = "oom"
    else:
        kind = "error"
    text = str(exc) if isinstance(exc, WorkerError) else "%s: %s" % (type(exc).__name__, exc)
    return {"ok": False, "kind": kind, "error": text}


def write(obj):
    """Write one response line to the real stdout and flush."""
    out = real_stdout()
    try:
        line = json.dumps(obj, allow_nan=False, separators=(",", ":"))
    except ValueError as e:  # a stray NaN somewhere: report it rather than break the stream
        line = json.dumps({"ok": False, "kind": "error", "error": "response not encodable: %s" % e})
    out.write(line + "\n")
    out.flush()


def serve(adapter, stdin=None):
    """Serve requests from stdin until ``bye`` or EOF (then exit status 0)."""
    guard_stdout()
    server = Server(adapter)
    src = stdin if stdin is not None else sys.stdin.buffer
    while True:
        raw = src.readline()
        if not raw:
            break
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        raw = raw.strip()
        if not raw:
            continue
        try:
            req = json.loads(raw)
            if not isinstance(req, dict):
                raise ValueError("a request must be a JSON object")
        except ValueError as e:
            write({"ok": False, "kind": "error", "error": "bad request line: %s" % e})
            continue
        started = time.time()
        try:
            resp = server.handle(req)
        except Answered:
            continue
        except Exception as e:  # every failure becomes a response; the worker stays alive
            sys.stderr.write("[%s] op %r failed:\n%s" % (adapter.id, req.get("op"), traceback.format_exc()))
            sys.stderr.flush()
            resp = _failure(e)
        write(resp)
        if req.get("op") == "bye":
            break
        if time.time() - started > 5:
            sys.stderr.write("[%s] op %r took %.1f s\n" % (adapter.id, req.get("op"), time.time() - started))
            sys.stderr.flush()
    return 0
