"""One line per runner record: case, verification, total and per-component medians, and the attention
component's rate (attention FLOPs over its median time). Usage: python3 bench/dsa_summary.py FILE.jsonl..."""
import json
import statistics
import sys

for path in sys.argv[1:]:
    for line in open(path):
        r = json.loads(line)
        c = r.get("case", {})
        ver = r.get("verification") or {}
        out = ver.get("output") or {}
        comp = r.get("components_ms") or {}
        att = comp.get("attention")
        a_ms = statistics.median(att) if att else float("nan")
        af = (r.get("work") or {}).get("attention_flops", 0.0)
        tf = af / (a_ms * 1e-3) / 1e12 if att else float("nan")
        print(f"{path.split('/')[-1]:16s} {c.get('phase')} L={c.get('context')} B={c.get('batch')} q={c.get('query_len')} "
              f"{c.get('precision')} status={r.get('status')} ver={ver.get('passed')} nre={out.get('norm_rel_err')} "
              f"mism={out.get('mismatches')} nonfin={out.get('non_finite')} total_ms={(r.get('stats') or {}).get('median')} "
              f"attn_ms={a_ms:.4f} attn_TF={tf:.1f} comps={ {k: round(statistics.median(v), 4) for k, v in comp.items()} }")
