#!/usr/bin/env python3
"""Fingerprint the PTX of every kernel source under every option set the engines compile it with.

A refactor of the CUDA sources that should not change the generated code (moving a helper into
common.cuh, renaming, folding a repeated epilogue into a function) can be checked without a GPU:
take the fingerprints before and after and compare them. PTX is a deterministic function of the
source and the options, and the machine code a deterministic function of the PTX, so equal PTX
means the kernels did not change.

    kernels/fingerprint.py --nvrtc /path/to/libnvrtc.so.12 > before.txt
    (edit)
    kernels/fingerprint.py --nvrtc /path/to/libnvrtc.so.12 --dump /tmp/ptx-after > after.txt
    diff before.txt after.txt

The source NVRTC sees is built as in kernels/src/lib.rs (common.cuh, a #line directive, the
file). The PTX is normalised before hashing: comments, .file/.loc lines and blank lines are
dropped (no -lineinfo is passed), and the labels of inline-asm wait loops (`XX_WAIT:`) are
renamed to one name, since PTX scopes them to their braces.
"""

import argparse
import ctypes
import hashlib
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

SM90A = "--gpu-architecture=sm_90a"
SM90 = "--gpu-architecture=sm_90"

# (file, option sets): the sets engines/src/cuda compiles each source with (kept by hand: an option
# set added there, a new -D switch or prefill tile, belongs here too).
BUILDS = [
    ("generate.cu", [[SM90]]),
    ("dense_prefill.cu", [[SM90, "-DPF_WARPS=8", "-DPF_BN=128", "-DPF_MIN_BLOCKS=1"],
                          [SM90, "-DPF_WARPS=4", "-DPF_BN=64", "-DPF_MIN_BLOCKS=2"]]),
    ("dense_decode.cu", [[SM90], [SM90, "-DDC_FP8_HWCVT"], [SM90A, "-DDC_FP8_HWCVT"], [SM90A]]),
    ("indexer.cu", [[SM90], [SM90A]]),
    ("topk.cu", [[SM90]]),
    ("sparse_mla.cu", [[SM90], [SM90A]]),
]


def load_nvrtc(path):
    lib = ctypes.CDLL(path)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def compile_ptx(lib, name, source, options):
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None)
    if rc != 0:
        raise RuntimeError(f"nvrtcCreateProgram: {lib.nvrtcGetErrorString(rc).decode()}")
    opts = ["--std=c++17"] + options
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        raise RuntimeError(f"{name} {options}: {lib.nvrtcGetErrorString(rc).decode()}\n{log.value.decode()}")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
    ptx = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetPTX(prog, ptx)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode()


WAIT_LABEL = re.compile(r"\b[A-Z][A-Z0-9]*_WAIT\b")


def normalise(ptx):
    out = []
    for line in ptx.splitlines():
        s = line.strip()
        if not s or s.startswith("//") or s.startswith(".file") or s.startswith(".loc"):
            continue
        out.append(WAIT_LABEL.sub("ASM_WAIT", line.rstrip()))
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nvrtc", default=os.environ.get("CTXCOST_NVRTC", "libnvrtc.so"),
                    help="path of libnvrtc (default: $CTXCOST_NVRTC, else libnvrtc.so on the loader path)")
    ap.add_argument("--dump", help="also write each normalised PTX into this folder")
    args = ap.parse_args()
    lib = load_nvrtc(args.nvrtc)
    common = open(os.path.join(HERE, "common.cuh")).read()
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    failed = False
    for name, option_sets in BUILDS:
        body = open(os.path.join(HERE, name)).read()
        source = common + f'\n#line 1 "{name}"\n' + body
        for options in option_sets:
            label = name + " " + " ".join(options)
            try:
                ptx = normalise(compile_ptx(lib, name, source, options))
            except RuntimeError as e:
                print(f"{label}: COMPILE ERROR", flush=True)
                print(e, file=sys.stderr)
                failed = True
                continue
            entries = sorted(set(re.findall(r"\.entry\s+(\w+)", ptx)))
            print(f"{hashlib.sha256(ptx.encode()).hexdigest()[:16]}  {label}  ({len(entries)} entries)", flush=True)
            if args.dump:
                fname = re.sub(r"[^A-Za-z0-9_.=-]+", "_", label) + ".ptx"
                with open(os.path.join(args.dump, fname), "w") as f:
                    f.write(ptx)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
