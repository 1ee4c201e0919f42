"""The adapters, listed once in ``ctxcost_peers/adapters.json`` (id, method, module, class,
description), which the Rust engine table reads too: adding a peer is its module here and one
entry there. Modules are imported only when used, so a missing library never breaks the
others."""

import json
import os

_LIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "adapters.json")

with open(_LIST) as _f:
    #: id -> (module, class, method)
    ADAPTERS = {e["id"]: (e["module"], e["class"], e["method"]) for e in json.load(_f)}


def load(adapter_id):
    """An instance of the adapter ``adapter_id`` (KeyError names the known ids)."""
    import importlib

    if adapter_id not in ADAPTERS:
        raise KeyError("unknown adapter %r; known: %s" % (adapter_id, ", ".join(ADAPTERS)))
    module, cls, _ = ADAPTERS[adapter_id]
    mod = importlib.import_module("%s.%s" % (__name__, module))
    return getattr(mod, cls)()
