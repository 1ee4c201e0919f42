"""Dense attention and DSA as a researcher writes them in plain PyTorch (matmul, softmax,
topk, gather), on CUDA when available, else on the CPU.

- Dense prefill: MLA in MHA mode, the chunk's queries at [L-q, L) over L keys, causal with
  bottom-right alignment (query i sees keys 0..L-q+i), chunked over queries to fit memory.
- Dense decode: MQA mode over the latent (value = its first kv_lora_rank dims).
- DSA: indexer scores ``sum_j w[j] * relu(q_I[j] . k_I)`` (fp32 logits: an fp32 matmul, TF32
  allowed for bf16 cases, where the bf16 operands are exact in TF32), causal mask, ``torch.topk``,
  indices sorted ascending, then MQA over the gathered latents.

Top-k ties: ``torch.topk`` does not promise which of equal scores it keeps. Between the timed
top-k and the timed attention (outside both timed parts) the adapter checks each row for a tie
at the k-th score that straddles the cut, and only in such rows replaces the selection by the
exact rule (ties to the smaller position). The timed path is plain topk + sort.
"""

from .torch_common import TorchAdapter
from ..generate import softmax_scale


def _mask_after(torch, pos, n_keys, device):
    """[len(pos), n_keys] bool: True where the key comes after the query's position."""
    return torch.arange(n_keys, device=device)[None, :] > pos[:, None]


class TorchEagerDense(TorchAdapter):
    id = "torch-eager-dense"
    method = "dense"
    precisions = ("f32", "bf16")

    def build(self, case):
        torch = self.torch
        s = case.shape
        B, q, L, H = case.batch, case.query_len, case.context, s.heads
        dt = self.compute_dtype()
        self.set_matmul_precision(False)
        if case.dense_mha:
            self.Q = self.tensor("mha_q", dt).view(B, q, H, s.mha_qk_dim).transpose(1, 2).contiguous()
            self.K = self.tensor("mha_k", dt).view(B, L, H, s.mha_qk_dim).transpose(1, 2).contiguous()
            self.V = self.tensor("mha_v", dt).view(B, L, H, s.mha_v_dim).transpose(1, 2).contiguous()
        else:
            self.Q = self.tensor("mqa_q", dt).view(B, q * H, s.mqa_kv_dim)
            self.KV = self.tensor("latent", dt)
        self.pos = torch.arange(L - q, L, device=self.dev)

    def compute(self):
        self.part("total")
        if self.case.dense_mha:
            self.out = self._mha()
        else:
            self.out = self._mqa()

    def _mha(self):
        torch = self.torch
        c, s = self.case, self.case.shape
        B, q, L, H = c.batch, c.query_len, c.context, s.heads
        scale = softmax_scale(s)
        out = torch.empty(B, H, q, s.mha_v_dim, dtype=self.Q.dtype, device=self.dev)
        per_query = B * H * L * 12  # scores (dtype) + f32 scores + f32 probs + probs (dtype)
        qc = max(1, min(q, self.budget() // per_query))
        for i0 in range(0, q, qc):
            i1 = min(q, i0 + qc)
            vis = L - q + i1
            sc = torch.matmul(self.Q[:, :, i0:i1], self.K[:, :, :vis].transpose(-1, -2)) * scale
            sc = sc.float().masked_fill(_mask_after(torch, self.pos[i0:i1], vis, self.dev), float("-inf"))
            p = torch.softmax(sc, dim=-1).to(self.V.dtype)
            out[:, :, i0:i1] = torch.matmul(p, self.V[:, :, :vis])
        return out.transpose(1, 2)  # [B, q, H, v]

    def _mqa(self):
        torch = self.torch
        c, s = self.case, self.case.shape
        B, q, L, H = c.batch, c.query_len, c.context, s.heads
        scale = softmax_scale(s)
        lat = s.kv_lora_rank
        out = torch.empty(B, q * H, lat, dtype=self.Q.dtype, device=self.dev)
        per_seq = q * H * L * 12
        bc = max(1, min(B, self.budget() // per_seq))
        mask = _mask_after(torch, self.pos.repeat_interleave(H), L, self.dev) if q > 1 else None
        for b0 in range(0, B, bc):
            b1 = min(B, b0 + bc)
            kv = self.KV[b0:b1]
            sc = torch.bmm(self.Q[b0:b1], kv.transpose(1, 2)) * scale
            sc = sc.float()
            if mask is not None:
                sc = sc.masked_fill(mask, float("-inf"))
            p = torch.softmax(sc, dim=-1).to(kv.dtype)
            out[b0:b1] = torch.bmm(p, kv[:, :, :lat])
        return out.view(B, q, H, lat)


class DsaParts:
    """The three DSA parts in eager PyTorch, shared by the DSA adapters (mix-in of TorchAdapter)."""

    def build_dsa_inputs(self, case, index_dtype):
        """Indexer tensors as f32 holding the case's rounded values; MQA tensors in compute dtype."""
        torch = self.torch
        s = case.shape
        B, q, L, H = case.batch, case.query_len, case.context, s.heads
        if case.precision == "f32":
            iq = self.tensor("index_q", torch.float32)
            ik = self.tensor("index_k", torch.float32)
        else:
            iq = self.tensor("index_q", torch.bfloat16).float()
            ik = self.tensor("index_k", torch.bfloat16).float()
        self.IW = self.tensor("index_w", torch.float32).view(B, q, s.index_heads)
        self.IQ = iq.view(B, q, s.index_heads, s.index_dim)
        self.IK = ik.view(B, L, s.index_dim)
        self.pos = torch.arange(L - q, L, device=self.dev)

    def query_chunk(self):
        c, s = self.case, self.case.shape
        per_query = max(
            c.batch * s.index_heads * c.context * 8,  # f32 logits + relu product
            c.batch * c.top_k * (s.mqa_kv_dim * 2 + s.heads * 12),  # gathered latents + scores
        )
        return max(1, min(c.query_len, self.budget() // per_query))

    def indexer(self, i0, i1):
        """Scores [B, n, vis] (f32) of queries i0..i1 over the keys the last of them sees."""
        torch = self.torch
        c, s = self.case, self.case.shape
        B, n = c.batch, i1 - i0
        vis = c.context - c.query_len + i1
        logits = torch.matmul(self.IQ[:, i0:i1].reshape(B, n * s.index_heads, s.index_dim), self.IK[:, :vis].transpose(1, 2))
        logits = logits.view(B, n, s.index_heads, vis).relu_()
        sc = (logits * self.IW[:, i0:i1, :, None]).sum(dim=2)
        return sc.masked_fill_(_mask_after(torch, self.pos[i0:i1], vis, self.dev), float("-inf"))

    def topk(self, sc):
        """torch.topk + ascending sort; -1 for slots beyond the visible keys, padded to k."""
        torch = self.torch
        k = self.case.top_k
        vis = sc.shape[-1]
        kk = min(k, vis)
        vals, idx = torch.topk(sc, kk, dim=-1)
        invalid = vals == float("-inf")
        idx = torch.where(invalid, torch.full_like(idx, vis), idx)
        idx = torch.sort(idx, dim=-1).values
        idx = torch.where(idx == vis, torch.full_like(idx, -1), idx)
        if kk < k:
            idx = torch.nn.functional.pad(idx, (0, k - kk), value=-1)
        return idx, vals

    def exact_ties(self, sc, idx, vals):
        """Untimed: where a tie at the k-th score straddles the cut, take the smaller positions."""
        torch = self.torch
        kk = vals.shape[-1]
        t = vals[..., kk - 1 : kk]  # k-th largest (topk returns sorted values)
        n_gt = (sc > t).sum(-1, keepdim=True)
        is_eq = sc == t
        ambiguous = (is_eq.sum(-1, keepdim=True) > kk - n_gt) & (t > float("-inf"))
        if not bool(ambiguous.any()):
            return idx
        keep = (sc > t) | (is_eq & (is_eq.cumsum(-1) <= kk - n_gt))
        vis = sc.shape[-1]
        ar = torch.arange(vis, device=sc.device).expand_as(sc)
        fixed = torch.sort(torch.where(keep, ar, torch.full_like(ar, vis)), dim=-1).values[..., :kk]
        fixed = torch.where(fixed == vis, torch.full_like(fixed, -1), fixed)
        if idx.shape[-1] > kk:
            fixed = torch.nn.functional.pad(fixed, (0, idx.shape[-1] - kk), value=-1)
        return torch.where(ambiguous, fixed, idx)

    def attention(self, i0, i1, sel, Q, KV):
        """Sparse MQA of queries i0..i1 over ``sel`` [B, n, k]: [B, n, H, kv_lora_rank]."""
        torch = self.torch
        c, s = self.case, self.case.shape
        B = c.batch
        lat = s.kv_lora_rank
        g = KV[torch.arange(B, device=self.dev)[:, None, None], sel.clamp_min(0)]  # [B, n, k, D]
        sc = torch.matmul(Q[:, i0:i1], g.transpose(-1, -2)) * softmax_scale(s)  # [B, n, H, k]
        sc = sc.float().masked_fill((sel < 0)[:, :, None, :], float("-inf"))
        p = torch.softmax(sc, dim=-1).to(g.dtype)
        return torch.matmul(p, g[..., :lat])

    def dsa_loop(self, attention):
        """indexer -> topk -> (untimed tie check) -> attention per query chunk, timed by part."""
        torch = self.torch
        c, s = self.case, self.case.shape
        B, q, H, k = c.batch, c.query_len, s.heads, c.top_k
        out = None
        sel_all = torch.empty(B, q, k, dtype=torch.int64, device=self.dev)
        qc = self.query_chunk()
        for i0 in range(0, q, qc):
            i1 = min(q, i0 + qc)
            self.part("indexer")
            sc = self.indexer(i0, i1)
            self.part("topk")
            idx, vals = self.topk(sc)
            self.part(None)
            idx = self.exact_ties(sc, idx, vals)
            del sc, vals
            self.part("attention")
            o = attention(i0, i1, idx)
            self.part(None)
            if out is None:
                out = torch.empty((B, q) + tuple(o.shape[2:]), dtype=o.dtype, device=self.dev)
            out[:, i0:i1] = o
            sel_all[:, i0:i1] = idx
        self.out, self.sel = out, sel_all


class TorchEagerDsa(DsaParts, TorchEagerDense):
    id = "torch-eager-dsa"
    method = "dsa"
    precisions = ("f32", "bf16")

    def build(self, case):
        s = case.shape
        B, q, H = case.batch, case.query_len, s.heads
        self.set_matmul_precision(case.precision != "f32")
        self.build_dsa_inputs(case, None)
        dt = self.compute_dtype()
        self.Q = self.tensor("mqa_q", dt).view(B, q, H, s.mqa_kv_dim)
        self.KV = self.tensor("latent", dt)

    def compute(self):
        self.dsa_loop(lambda i0, i1, sel: self.attention(i0, i1, sel, self.Q, self.KV))
