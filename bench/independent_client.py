#!/usr/bin/env python3
"""The same endpoint cases measured by an independent client (guidellm), beside ctxcost's.

Used by bench/independent-client.sh; standard library only.

  prompts  --records ctxcost.jsonl --out DIR --requests N
      For each case of ctxcost's records (phase, target), a guidellm data file DIR/<phase>-<target>.jsonl
      of N prompts built as ctxcost builds them (engines/src/http/prompt.rs): a unique nonce,
      a blank line, the shipped corpus (engines/data/) cut after a number of words, a blank
      line, the instruction. The number of words is the one that gives the prompt length ctxcost
      measured, by serve-mock's token rule (one token per whitespace-separated word on
      /v1/completions), so both clients send prompts of one length.
  compare  --records ctxcost.jsonl --dir DIR [--tolerance-pct 5 --tolerance-ms 2]
      Medians side by side: TTFT of prefill cases, TPOT of decode cases (guidellm's
      inter_token_latency_ms, (last token - first token) / (N - 1): vLLM's TPOT and ctxcost's).
      Prints a Markdown table; exits 1 when a median differs by more than the tolerance.
"""

import argparse
import json
import pathlib
import random
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = [ROOT / "engines/data/julius-caesar.txt", ROOT / "engines/data/macbeth.txt"]
INSTRUCTION = "Summarise the text above."


def read_records(path):
    out = []
    for line in pathlib.Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("status") == "ok" and r.get("endpoint"):
                out.append(r)
    return out


def case_name(r):
    return f"{r['case']['phase']}-{r['case']['context']}"


def measured_tokens(r):
    toks = sorted(q["prompt_tokens"] for q in r["endpoint"]["requests"] if q.get("prompt_tokens") is not None)
    return toks[len(toks) // 2]


def corpus_cut(units):
    text = "\n\n".join(p.read_text().strip() for p in CORPUS)
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    copies, rest = divmod(units, len(ends))
    parts = [text] * copies + ([text[: ends[rest - 1]]] if rest else [])
    return "\n\n".join(parts)


def prompts(args):
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    for r in read_records(args.records):
        tokens = measured_tokens(r)
        nonce_words, instruction_words = 2, len(INSTRUCTION.split())
        body = corpus_cut(tokens - nonce_words - instruction_words)
        with open(out / f"{case_name(r)}.jsonl", "w") as f:
            for _ in range(args.requests):
                d = rng.randrange(10**12)
                nonce = f"[ref {d // 10**8:04d}-{d // 10**4 % 10**4:04d}-{d % 10**4:04d}]"
                prompt = f"{nonce}\n\n{body}\n\n{INSTRUCTION}"
                assert len(prompt.split()) == tokens
                f.write(json.dumps({"prompt": prompt, "output_tokens_count": r["endpoint"]["max_tokens"]}) + "\n")
        print(f"{case_name(r)}: {args.requests} prompts of {tokens} tokens")


def guidellm_medians(path):
    b = json.loads(pathlib.Path(path).read_text())["benchmarks"][0]
    m = b["metrics"]
    med = lambda k: (m[k]["successful"] or {}).get("median")
    return {
        "ttft": med("time_to_first_token_ms"),
        "tpot": med("inter_token_latency_ms"),
        "prompt_tokens": med("prompt_token_count"),
        "ok": m["request_totals"]["successful"],
    }


def compare(args):
    rows, bad = [], 0
    for r in sorted(read_records(args.records), key=lambda r: (r["case"]["phase"] != "prefill", r["case"]["context"])):
        phase, metric = r["case"]["phase"], ("ttft" if r["case"]["phase"] == "prefill" else "tpot")
        ours = r["endpoint"]["metrics"][f"{metric}_ms"]["median"]
        g = guidellm_medians(pathlib.Path(args.dir) / f"guidellm-{case_name(r)}.json")
        theirs = g[metric]
        diff = theirs - ours
        ok = abs(diff) <= max(args.tolerance_ms, args.tolerance_pct / 100 * ours)
        bad += not ok
        rows.append(
            f"| {phase} | {r['case']['context']} | {measured_tokens(r)} / {g['prompt_tokens']:.0f} | {metric.upper()} "
            f"| {ours:.2f} | {theirs:.2f} | {diff:+.2f} ({100 * diff / ours:+.1f}%) | {len(r['endpoint']['requests'])} / {g['ok']} | {'yes' if ok else 'NO'} |"
        )
    print("| phase | target | prompt tokens (ctxcost / guidellm) | median | ctxcost ms | guidellm ms | guidellm - ctxcost | requests | agree |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nagreement: within {args.tolerance_pct:g}% or {args.tolerance_ms:g} ms, whichever is larger: "
          f"{len(rows) - bad} of {len(rows)} cases")
    return 1 if bad else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prompts")
    a.add_argument("--records", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--requests", type=int, default=8)
    c = sub.add_parser("compare")
    c.add_argument("--records", required=True)
    c.add_argument("--dir", required=True)
    c.add_argument("--tolerance-pct", type=float, default=5.0)
    c.add_argument("--tolerance-ms", type=float, default=2.0)
    args = p.parse_args()
    if args.cmd == "prompts":
        prompts(args)
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
