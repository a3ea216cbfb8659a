"""Benchmark: the whole `fleetspec validate` process next to `docker-compose config`.

What a user waits for is the process, not a function call: interpreter start, imports, YAML
parsing, model validation, cross-field checks and the verdict. So both tools run as subprocesses,
many times, interleaved (A B B A ...) so that machine noise lands on both alike, and the report
gives the median, the spread and the ratio of medians on the same machine in the same run.

Inputs, each paired with a docker-compose file of about the same number of lines:
  - the largest example in examples/ (by lines),
  - a generated fleet of 1,000 specialists (`--specialists` to change).

docker-compose runs `config --quiet` (parse, interpolate, validate; print nothing), which is the
same job as `fleetspec validate`; `--compose-full` adds plain `config` (prints the normalised file).

Usage: .venv/bin/python bench/bench_validate.py [--runs 30] [--specialists 1000] [--importtime]
Figures go to docs/benchmarks.md, section "Validate".
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPOSE = "/usr/bin/docker-compose"


# ---------------------------------------------------------------------------------------------
# Inputs


def generate_fleet(specialists: int) -> str:
    """A valid fleet with `specialists` adapters over 4 servers and 32 GPUs, block-style YAML."""
    lines = [
        "# yaml-language-server: $schema=../schemas/fleet.schema.json",
        f"name: generated-{specialists}",
        "base_model:",
        "  id: meta-llama/Llama-3.1-8B-Instruct",
        "  max_model_len: 8192",
        "gpus:",
        "  - {type: H100-80GB, count: 16}",
        "  - {type: A100-80GB, count: 16}",
        "servers:",
    ]
    for i, gpu in enumerate(["H100-80GB", "H100-80GB", "A100-80GB", "A100-80GB"]):
        lines += [
            f"  - name: pool-{i}",
            f"    gpu_type: {gpu}",
            "    replicas: 8",
            "    tensor_parallel_size: 1",
            "    lora: {max_loras: 16, max_cpu_loras: 128, max_lora_rank: 64}",
        ]
    lines.append("specialists:")
    for i in range(specialists):
        lines += [
            f"  - name: spec-{i:04d}",
            "    version: 1.0.0",
            f"    path: /adapters/spec-{i:04d}/1.0.0",
            f"    rank: {(8, 16, 32, 64)[i % 4]}",
            f"    domains: [domain-{i % 50}]",
            f"    keywords: [kw{i:04d}, topic{i:04d}]",
            f"    extensions: [.x{i:04d}]",
            f"    servers: [pool-{i % 4}]",
        ]
    lines += ["routing:", "  fallback: base", "  rules:"]
    for i in range(0, specialists, max(1, specialists // 20)):
        lines.append(f"    - {{name: rule-{i:04d}, keywords: [special{i:04d}], to: spec-{i:04d}}}")
    lines += [
        "    - {name: signals, specialist_signals: true}",
        "runtime:",
        "  target: docker",
        "  engine: vllm",
        "  adapter_roots: [/adapters]",
    ]
    return "\n".join(lines) + "\n"


def generate_compose(services: int, target_lines: int) -> str:
    """A valid compose file with `services` services padded with labels to about `target_lines`."""
    fixed = 8  # lines per service below, before padding
    per_service = max(fixed, round(target_lines / max(1, services)))
    lines = ['version: "3.8"', "services:"]
    for i in range(services):
        lines += [
            f"  svc-{i:04d}:",
            "    image: vllm/vllm-openai:v0.33.0",
            f'    command: ["--enable-lora", "--lora-modules", "spec-{i:04d}=/adapters/spec-{i:04d}/1.0.0"]',
            '    environment: {VLLM_ALLOW_RUNTIME_LORA_UPDATING: "true"}',
            f'    ports: ["127.0.0.1:{10000 + i}:8000"]',
            '    volumes: ["/adapters:/adapters:ro"]',
            "    labels:",
            f"      fleetspec.specialist: spec-{i:04d}",
        ]
        lines += [f'      fleetspec.pad-{k}: "{k}"' for k in range(per_service - fixed)]
    return "\n".join(lines) + "\n"


def largest_example() -> pathlib.Path:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    return max(examples, key=lambda p: len(p.read_text(encoding="utf-8").splitlines()))


def count_specialists(text: str) -> int:
    """Specialist entries of a fleet file, counted from the text (no fleetspec import here)."""
    import yaml

    return len(yaml.safe_load(text).get("specialists") or [])


# ---------------------------------------------------------------------------------------------
# Measuring


def fleetspec_argv(path: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "fleetspec", "validate", str(path)]


def compose_argv(path: pathlib.Path, quiet: bool = True) -> list[str]:
    return [COMPOSE, "-f", str(path), "config", *(["--quiet"] if quiet else [])]


def run_once(argv: list[str], cwd: pathlib.Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed (exit {done.returncode}):\n{done.stderr.decode()}")
    return elapsed


def measure(commands: dict[str, list[str]], runs: int, cwd: pathlib.Path) -> dict[str, list[float]]:
    """Interleaved runs; the order flips every round so neither command always goes first."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for name in names:  # warm the page cache and .pyc files once, untimed
        run_once(commands[name], cwd)
    for round_index in range(runs):
        for name in names if round_index % 2 == 0 else reversed(names):
            samples[name].append(run_once(commands[name], cwd))
    return samples


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=4) if len(ordered) >= 4 else [ordered[0], ordered[-1], ordered[-1]]
    return {"median": statistics.median(ordered), "p25": q[0], "p75": q[2],
            "min": ordered[0], "max": ordered[-1]}


def importtime(path: pathlib.Path, cwd: pathlib.Path, top: int = 15) -> list[tuple[int, int, str]]:
    """(cumulative µs, self µs, module) of the slowest imports of one validate run."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "fleetspec", "validate", str(path)],
                          cwd=cwd, capture_output=True, text=True)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative_us, module = (part.strip() for part in line[len("import time:"):].split("|"))
        rows.append((int(cumulative_us), int(self_us), module))
    return sorted(rows, reverse=True)[:top]


# ---------------------------------------------------------------------------------------------
# Report


def _size(text: str) -> tuple[int, int]:
    return len(text.splitlines()), len(text.encode("utf-8"))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def table(cases: list[dict]) -> str:
    out = [
        "| input | tool | file lines / KiB | median ms | p25–p75 ms | min–max ms | fleetspec / compose |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        base = summary(case["samples"]["docker-compose config -q"])["median"]
        for tool, values in case["samples"].items():
            s = summary(values)
            lines, size = case["size"][tool]
            ratio = f"**{s['median'] / base:.2f}×**" if tool == "fleetspec validate" else ""
            out.append(f"| {case['name']} | `{tool}` | {lines} / {size / 1024:.0f} | {ms(s['median'])} | "
                       f"{ms(s['p25'])}–{ms(s['p75'])} | {ms(s['min'])}–{ms(s['max'])} | {ratio} |")
    return "\n".join(out)


def machine() -> str:
    compose = subprocess.run([COMPOSE, "version", "--short"], capture_output=True, text=True).stdout.strip()
    return (f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()} "
            f"(fleetspec), docker-compose {compose} (Debian package, Python)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per command (default 30)")
    parser.add_argument("--specialists", type=int, default=1000)
    parser.add_argument("--compose-full", action="store_true", help="also time `docker-compose config`")
    parser.add_argument("--importtime", action="store_true", help="list the slowest imports of validate")
    args = parser.parse_args(argv)
    if not pathlib.Path(COMPOSE).exists() and shutil.which("docker-compose") is None:
        raise SystemExit("docker-compose is not installed: `apt-get install docker-compose` (Debian).")

    with tempfile.TemporaryDirectory(prefix="fleetspec-bench-") as tmp:
        work = pathlib.Path(tmp)
        example = largest_example()
        generated = work / f"fleet-{args.specialists}.yaml"
        generated.write_text(generate_fleet(args.specialists), encoding="utf-8")
        cases = []
        for name, fleet in ((example.relative_to(ROOT).as_posix(), example),
                            (f"generated, {args.specialists} specialists", generated)):
            text = fleet.read_text(encoding="utf-8")
            compose = work / f"compose-{fleet.stem}.yaml"
            compose_text = generate_compose(count_specialists(text), len(text.splitlines()))
            compose.write_text(compose_text, encoding="utf-8")
            commands = {"fleetspec validate": fleetspec_argv(fleet),
                        "docker-compose config -q": compose_argv(compose)}
            if args.compose_full:
                commands["docker-compose config"] = compose_argv(compose, quiet=False)
            size = {tool: _size(text if tool.startswith("fleetspec") else compose_text) for tool in commands}
            print(f"measuring {name}: {args.runs} interleaved runs per command ...", file=sys.stderr)
            cases.append({"name": name, "size": size, "samples": measure(commands, args.runs, ROOT)})
        print(f"Machine: {machine()}\nRuns: {args.runs} per command, interleaved, after one untimed warm-up.\n")
        print(table(cases))
        if args.importtime:
            for fleet in (example, generated):
                print(f"\nSlowest imports of `fleetspec validate {fleet.name}` (cumulative ms, self ms):\n")
                for cumulative, self_us, module in importtime(fleet, ROOT):
                    print(f"    {cumulative / 1000:8.1f} {self_us / 1000:8.1f}  {module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
