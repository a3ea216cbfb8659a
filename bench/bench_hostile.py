"""Peak memory and time of `fleetspec validate` on hostile inputs it must refuse, and on the largest
honest fleet it must accept.

Each case is a fresh `fleetspec validate FILE` process (interpreter, imports and all, as a user or CI
runs it); peak memory is the process's own high-water mark (`ru_maxrss` of the child), time is wall
clock. Cases:

- node-dense: a 4 MiB file of ~2 M one-character list items (refused: too many values);
- key-dense: a 4 MiB flow mapping of 420,000 keys (refused: too many values);
- many errors: 15,000 specialists whose every field has the wrong type (refused, errors capped);
- wide env: one server's env with 300,000 entries (refused: too many values);
- deep: 100,000 nested flow lists `[[[[...]]]]` (refused: nesting);
- alias bomb: nine levels of ten aliases each, 10^9 values once expanded (refused: alias expansion);
- oversized: a 17 MiB file, one byte per line (refused before it is parsed);
- huge numbers: `count: 10000000000`, `replicas: 100000000`, `num_clusters: 10^12` (refused: bounds);
- accepted: 10,000 specialists × 20 keywords in block YAML (~4.4 MiB) on 1,000 GPUs (validates).

Targets (issue 15 and 17): every refusal under 200 MiB and 3 s; the large honest fleet accepted.
Exit 1 if a target is missed.

    .venv/bin/python bench/bench_hostile.py [--runs 3]
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
FLEETSPEC = [sys.executable, "-m", "fleetspec"]
PEAK_LIMIT_MIB = 200
TIME_LIMIT_S = 3.0

HEAD = """\
name: big
base_model: {id: TinyLlama/TinyLlama-1.1B-Chat-v1.0}
gpus: [{type: L4, count: 1000}]
servers:
  - name: main
    replicas: 4
    lora: {max_loras: 8, max_cpu_loras: 64, max_lora_rank: 16}
"""


def honest_fleet(specialists: int = 10_000, keywords: int = 20) -> str:
    lines = [HEAD, "specialists:\n"]
    for i in range(specialists):
        lines.append(
            f"  - name: s{i}\n    version: 1.0.0\n    path: /adapters/s{i}/1.0.0\n    rank: 16\n"
            "    keywords:\n"
        )
        lines.extend(f"      - kw{i}x{k}\n" for k in range(keywords))
    lines.append("routing:\n  rules: [{specialist_signals: true}]\n")
    return "".join(lines)


def cases() -> dict[str, tuple[str, bool]]:
    """name → (file text, whether validate must accept it)."""
    dense = "name: x\nv: [" + "1," * (2 * 1024 * 1024 - 8) + "1]\n"
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        prev, name = chr(ord("a") + level - 1), chr(ord("a") + level)
        bomb.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    huge = HEAD.replace("count: 1000", "count: 10000000000").replace("replicas: 4", "replicas: 100000000") + (
        "routing:\n  rules:\n    - hash_clusters: {num_clusters: 1000000000000, map: {c0: s0}}\n"
    )
    return {
        "node-dense 4 MiB": (dense, False),
        "key-dense 4 MiB": ("name: x\nv: {" + ",".join(f"k{i:x}: 1" for i in range(420_000)) + "}\n", False),
        "many errors (15,000 broken specialists)": (
            HEAD
            + "specialists:\n"
            + (
                "  - {name: [x], version: [x], path: [x], rank: x, alpha: x, priority: x, keywords: ["
                + ",".join(["1"] * 30)
                + "]}\n"
            )
            * 15_000,
            False,
        ),
        "wide env (300,000 entries)": (
            HEAD.replace(
                "    replicas: 4\n",
                "    replicas: 4\n    env: {" + ",".join(f"K{i}: [1]" for i in range(300_000)) + "}\n",
            ),
            False,
        ),
        "deep nesting (100,000 levels)": ("v: " + "[" * 100_000 + "]" * 100_000 + "\n", False),
        "alias bomb (10^9 values)": ("\n".join(bomb) + "\n", False),
        "oversized 17 MiB": ("#\n" * (17 * 512 * 1024), False),
        "huge numbers": (huge, False),
        "10,000 specialists × 20 keywords, 1,000 GPUs": (honest_fleet(), True),
    }


def measure(path: pathlib.Path) -> tuple[float, float, int]:
    """(seconds, peak MiB, exit code) of one `fleetspec validate` process, this process's only child."""
    start = time.perf_counter()
    done = subprocess.run([*FLEETSPEC, "validate", str(path)], capture_output=True, cwd=ROOT, check=False)
    elapsed = time.perf_counter() - start
    return elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, done.returncode


def measure_isolated(path: pathlib.Path) -> tuple[float, float, int]:
    """`measure` in a fresh Python, whose RUSAGE_CHILDREN high-water mark is that one child's."""
    code = (
        f"import sys, pathlib; sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_hostile as b; "
        f"print(*b.measure(pathlib.Path({str(path)!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    failed = False
    print(f"| input | size | exit | time (median of {args.runs}) | peak memory (max) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (text, accepted) in cases().items():
            path = pathlib.Path(tmp, "fleet.yaml")
            path.write_text(text)
            runs = [measure_isolated(path) for _ in range(args.runs)]
            seconds = statistics.median(r[0] for r in runs)
            peak = max(r[1] for r in runs)
            code = runs[0][2]
            ok = (code == 0) if accepted else (code == 1 and peak < PEAK_LIMIT_MIB and seconds < TIME_LIMIT_S)
            failed |= not ok
            size = len(text.encode()) / 2**20
            print(
                f"| {name} | {size:.1f} MiB | {code} | {seconds:.2f} s | {peak:.0f} MiB |{'' if ok else ' MISSED'}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
