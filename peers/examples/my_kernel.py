"""Plugging in your own kernel: a complete adapter (dense MQA decode in numpy) served over the
ctxcost protocol. Run it as `python3 peers/examples/my_kernel.py`; replace run() with your kernel."""
import os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np
from ctxcost_peers.generate import softmax_scale, tensor_np
from ctxcost_peers.protocol import Adapter, serve

class MyKernel(Adapter):
    id, method, phases, precisions = "my-kernel", "dense", ("decode",), ("f32", "bf16")

    def prepare(self, case):  # untimed: inputs from the shared generator, rounded to the precision
        s = case.shape
        self.q = tensor_np(case, "mqa_q").reshape(case.batch, case.query_len * s.heads, s.mqa_kv_dim)
        self.kv = tensor_np(case, "latent")  # [B, L, kv_lora_rank + rope]; value = first kv_lora_rank dims

    def run(self):  # one timed execution; self.out must be [B, query_len, heads, v_dim]
        c, s = self.case, self.case.shape
        t0 = time.perf_counter()
        sc = self.q @ self.kv.transpose(0, 2, 1) * np.float32(softmax_scale(s))  # [B, q*H, L]
        pos = np.repeat(c.context - c.query_len + np.arange(c.query_len), s.heads)
        sc[:, np.arange(c.context)[None, :] > pos[:, None]] = -np.inf  # causal (MTP: q > 1)
        p = np.exp(sc - sc.max(-1, keepdims=True))
        o = (p / p.sum(-1, keepdims=True)) @ self.kv[:, :, : s.kv_lora_rank]
        self.out = o.reshape(c.batch, c.query_len, s.heads, s.kv_lora_rank)
        return (time.perf_counter() - t0) * 1e3, None

if __name__ == "__main__":
    sys.exit(serve(MyKernel()))
