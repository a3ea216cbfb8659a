"""Print the planner-vs-vLLM-log table of tests/data/calibration.yaml as markdown.

    .venv/bin/python bench/calibration_table.py
"""

from __future__ import annotations

import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "unit"))

import planner_calibration_cases as cases  # noqa: E402


def pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:+.1f} %"


def main() -> None:
    print("| case | vLLM | tp×pp | weights GiB logged / planned | err | KV tokens logged / planned | err |")
    print("|---|---|---|---:|---:|---:|---:|")
    asserted_w, asserted_t = [], []
    for case in cases.load_cases():
        logged, predicted, errors = case["logged"], cases.predict(case), cases.errors(case)
        tokens = logged.get("kv_tokens")
        shape = f"{case['tensor_parallel_size']}×{case['pipeline_parallel_size']}"
        print(f"| [{case['id']}]({case['source']}) | {case['vllm_version']} | {shape} | "
              f"{logged['weights_gib']:.2f} / {predicted['weights_gib']:.2f} | {pct(errors.get('weights_gib'))} | "
              f"{f'{tokens:,}' if tokens else '–'} / {predicted['kv_tokens']:,} | {pct(errors.get('kv_tokens'))} |")
        if case.get("assert", True):
            asserted_w.append(abs(errors["weights_gib"]))
            asserted_t.append(abs(errors["kv_tokens"]))
    print(f"\nvLLM >= 0.8 cases: {len(asserted_w)}; weights mean |err| {statistics.mean(asserted_w) * 100:.2f} %, "
          f"max {max(asserted_w) * 100:.2f} %; KV tokens mean |err| {statistics.mean(asserted_t) * 100:.2f} %, "
          f"max {max(asserted_t) * 100:.2f} %")


if __name__ == "__main__":
    main()
