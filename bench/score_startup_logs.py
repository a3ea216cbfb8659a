"""Score the planner on any set of vLLM startup logs.

    .venv/bin/python bench/score_startup_logs.py MANIFEST.yaml [--json]

MANIFEST lists one record per log: `id`, `log` (a file, relative to the manifest) and `gpu` (the
catalog GPU type: logs rarely name it), plus anything the log does not print or that should
override it (`model` when the served checkpoint is not in the catalog under its own name,
`gpu_memory_utilization`, `max_num_seqs`, `max_num_batched_tokens`, `vllm_version`, `source`;
`enable_lora` with `max_lora_rank` / `max_loras` when the launcher turned LoRA on: the weights line of
V1 and of V0 from 0.8.0 holds the LoRA buffers, and the planned figure compared with it does too).
Everything else (version, model, dtype, max_model_len, tp/pp, quantization, KV dtype, eager) is read
from the log's engine config line. Prints one row per record and median / p90 of |error|.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import yaml

from fleetspec.planner import log_score


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f} %"


def run(manifest: pathlib.Path) -> tuple[list[log_score.Scored], dict]:
    records = yaml.safe_load(manifest.read_text(encoding="utf-8"))["records"]
    results = [
        log_score.score(r, (manifest.parent / r["log"]).read_text(encoding="utf-8", errors="replace"))
        for r in records
    ]
    return results, log_score.summary(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=pathlib.Path)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    results, totals = run(args.manifest)
    if args.json:
        print(json.dumps({"records": [r.__dict__ for r in results], "summary": totals}, indent=2))
        return 0
    print("| record | weights err | KV tokens err | logged failure | plan fits | note |")
    print("|---|---:|---:|---|---|---|")
    for r in results:
        print(
            f"| {r.id} | {pct(r.errors.get('weights_gib'))} | {pct(r.errors.get('kv_tokens'))} | "
            f"{r.logged_failure or ''} | {'yes' if r.plan_fits else 'no'} | {r.unmodelled or ''} |"
        )
    print()
    print(json.dumps(totals, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
