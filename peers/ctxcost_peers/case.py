"""The case a request carries: the Rust ``Case`` as serde writes it (core/src/case.rs)."""


class Shape:
    """ModelShape (core/src/shape.rs) with the derived dims the math uses."""

    FIELDS = (
        "name",
        "layers",
        "heads",
        "kv_lora_rank",
        "qk_nope_dim",
        "qk_rope_dim",
        "v_head_dim",
        "index_heads",
        "index_dim",
        "top_k",
    )

    def __init__(self, d):
        missing = [f for f in self.FIELDS if f not in d]
        if missing:
            raise ValueError("shape lacks field(s) %s" % ", ".join(missing))
        self.raw = dict(d)
        self.name = str(d["name"])
        for f in self.FIELDS[1:]:
            setattr(self, f, int(d[f]))

    @property
    def mha_qk_dim(self):
        return self.qk_nope_dim + self.qk_rope_dim

    @property
    def mha_v_dim(self):
        return self.v_head_dim

    @property
    def mqa_kv_dim(self):
        return self.kv_lora_rank + self.qk_rope_dim

    @property
    def mqa_v_dim(self):
        return self.kv_lora_rank

    @property
    def has_indexer(self):
        return self.index_heads > 0 and self.index_dim > 0 and self.top_k > 0


class Case:
    """One measured case (engine, method, shape, phase, context, batch, query_len, precision, seed).

    A ``rest`` case also carries ``gemms``, the GEMM plan the runner sends beside it (a list of
    :class:`ctxcost_peers.rest.Gemm`, or None where the request had none)."""

    def __init__(self, d, gemms=None):
        if not isinstance(d, dict):
            raise ValueError("case must be an object")
        for f in ("shape", "phase", "context", "batch", "query_len", "precision", "seed"):
            if f not in d:
                raise ValueError("case lacks field %r" % f)
        self.raw = dict(d)
        self.engine = str(d.get("engine", ""))
        self.method = str(d.get("method") or ("dsa" if self.engine.startswith("dsa") else "dense")).lower()
        self.shape = Shape(d["shape"])
        self.phase = str(d["phase"]).lower()
        self.context = int(d["context"])
        self.batch = int(d["batch"])
        self.query_len = int(d["query_len"])
        self.precision = str(d["precision"]).lower()
        self.seed = int(d["seed"])
        if self.phase not in ("prefill", "decode"):
            raise ValueError("phase must be prefill or decode, got %r" % self.phase)
        if self.precision not in ("f32", "bf16", "fp8"):
            raise ValueError("precision must be f32, bf16 or fp8, got %r" % self.precision)
        if self.method not in ("dense", "dsa", "rest"):
            raise ValueError("method must be dense, dsa or rest, got %r" % self.method)
        if self.context < 1 or self.batch < 1 or self.query_len < 1 or self.query_len > self.context:
            raise ValueError(
                "need context >= query_len >= 1 and batch >= 1 (context %d, query_len %d, batch %d)"
                % (self.context, self.query_len, self.batch)
            )
        if not (0 <= self.seed < (1 << 64)):
            raise ValueError("seed must be a u64")
        self.gemms = None
        if gemms is not None:
            from .rest import parse_plan

            self.gemms = parse_plan(gemms)

    @property
    def is_rest(self):
        return self.method == "rest"

    @property
    def is_sparse(self):
        return self.method == "dsa"

    @property
    def dense_mha(self):
        """Dense prefill runs MLA in MHA mode; everything else is MQA mode over the latent."""
        return not self.is_sparse and self.phase == "prefill"

    @property
    def v_dim(self):
        return self.shape.mha_v_dim if self.dense_mha else self.shape.mqa_v_dim

    @property
    def top_k(self):
        """k = min(top_k, context)."""
        return min(self.shape.top_k, self.context)

    def query_position(self, i):
        return self.context - self.query_len + i

    def describe(self):
        return "%s %s %s L=%d B=%d q=%d %s" % (
            self.method,
            self.shape.name,
            self.phase,
            self.context,
            self.batch,
            self.query_len,
            self.precision,
        )
