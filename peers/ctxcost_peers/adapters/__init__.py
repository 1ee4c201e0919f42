"""The adapters: id -> (module, class, method). Modules are imported only when used, so a
missing library never breaks the others."""

ADAPTERS = {
    "numpy-dense": ("numpy_ref", "NumpyDense", "dense"),
    "numpy-dsa": ("numpy_ref", "NumpyDsa", "dsa"),
    "torch-eager-dense": ("torch_eager", "TorchEagerDense", "dense"),
    "torch-eager-dsa": ("torch_eager", "TorchEagerDsa", "dsa"),
    "cudnn-sdpa": ("sdpa", "CudnnSdpa", "dense"),
    "flash-sdpa": ("sdpa", "FlashSdpa", "dense"),
    "flashinfer": ("flashinfer_mla", "FlashInferMla", "dense"),
    "flash-mla": ("flash_mla", "FlashMlaDense", "dense"),
    "flash-mla-dsa": ("flash_mla", "FlashMlaDsa", "dsa"),
    "deep-gemm": ("deep_gemm", "DeepGemmDsa", "dsa"),
}


def load(adapter_id):
    """An instance of the adapter ``adapter_id`` (KeyError names the known ids)."""
    import importlib

    if adapter_id not in ADAPTERS:
        raise KeyError("unknown adapter %r; known: %s" % (adapter_id, ", ".join(ADAPTERS)))
    module, cls, _ = ADAPTERS[adapter_id]
    mod = importlib.import_module("%s.%s" % (__name__, module))
    return getattr(mod, cls)()
