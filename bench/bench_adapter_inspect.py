"""Inspect 1,000 adapters of 100 MiB each and show that only their headers are read.

Each adapter is a real PEFT LoRA for Llama-3.1-8B shapes (rank 10, all seven linear modules, F32:
exactly 100 MiB of tensor data) written as a sparse file, so 1,000 of them take ~60 MB of disk.

Two measurements:

1. In process, cold page cache: `adapters.inspect.inspect()` on every adapter. Bytes read are
   counted three ways: by the inspector itself, by the kernel's `rchar` (bytes passed through read
   syscalls) and `read_bytes` (bytes fetched from the block device, readahead included; the files
   are dropped from the page cache first with posix_fadvise, no root needed).
2. Whole process, as a user waits for it: `fleetspec adapters check FLEET` on a fleet naming all
   1,000 adapters, next to the same fleet naming one (the fixed cost: interpreter, imports, YAML),
   interleaved A B B A, after one warm-up each. The process reports its own `rchar` at exit.

There is no reference tool doing the same job (reading PEFT adapters without loading them); the
last line reads one adapter in full for contrast.

    .venv/bin/python bench/bench_adapter_inspect.py [--count 1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import adapter_factory  # noqa: E402

from fleetspec.adapters import inspect as adapter_inspect  # noqa: E402

MIB = 1024 * 1024
# Runs the CLI in-process and prints this process's I/O counters to stderr on the way out.
CHILD = ("import sys; from fleetspec.cli import app; code = app.main(sys.argv[1:]); "
         "sys.stderr.write(open('/proc/self/io').read()); sys.exit(code)")


def proc_io(text: str | None = None) -> dict[str, int]:
    if text is None:
        with open("/proc/self/io") as handle:
            text = handle.read()
    pairs = (line.split(": ") for line in text.splitlines() if ": " in line)
    return {key: int(value) for key, value in pairs if value.strip().isdigit()}


def build(directory: pathlib.Path, count: int) -> list[pathlib.Path]:
    targets = adapter_factory.ATTENTION + adapter_factory.MLP
    tensors = adapter_factory.lora_tensors(adapter_factory.LLAMA_8B, 10, targets, dtype="F32")
    first = adapter_factory.write_adapter(directory / "a0000", adapter_factory.LLAMA_8B, rank=10, targets=targets,
                                          tensors=tensors, base_model="meta-llama/Llama-3.1-8B")
    for index in range(1, count):
        target = directory / f"a{index:04d}"
        target.mkdir()
        shutil.copyfile(first / "adapter_config.json", target / "adapter_config.json")
        adapter_factory.write_safetensors(target / "adapter_model.safetensors", tensors)
    return sorted(p for p in directory.iterdir() if p.is_dir())


def evict(paths) -> None:
    """Flush and drop these files from the page cache, so the next read goes to the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def in_process(adapters: list[pathlib.Path]) -> dict:
    evict(f for a in adapters for f in a.iterdir())
    before = proc_io()
    timings, counted, logical = [], 0, 0
    start = time.perf_counter()
    for path in adapters:
        t0 = time.perf_counter()
        info = adapter_inspect.inspect(path)
        timings.append(time.perf_counter() - t0)
        assert info.weights_problem is None and info.tensor_bytes == 100 * MIB and info.ranks == (10,)
        counted += info.bytes_read
        logical += info.weights_bytes
    elapsed = time.perf_counter() - start
    after = proc_io()
    timings.sort()
    return {
        "count": len(adapters), "logical": logical, "counted": counted, "rchar": after["rchar"] - before["rchar"],
        "read_bytes": after["read_bytes"] - before["read_bytes"], "seconds": elapsed,
        "median_ms": statistics.median(timings) * 1000, "p99_ms": timings[int(len(timings) * 0.99) - 1] * 1000,
    }


def write_fleet(path: pathlib.Path, adapters: list[pathlib.Path]) -> None:
    lines = [
        "name: bench", "base_model:", "  id: meta-llama/Llama-3.1-8B", "gpus: 1x H100-80GB", "servers:",
        "  - name: main", "    lora: {max_loras: 8, max_cpu_loras: 64, max_lora_rank: 16}",
        "runtime:", f"  adapter_roots: [{adapters[0].parent}]", "specialists:",
    ]
    for index, adapter in enumerate(adapters):
        lines += [f"  - name: s{index:04d}", "    version: '1'", f"    path: {adapter}"]
    path.write_text("\n".join(lines) + "\n")


def whole_process(fleet: pathlib.Path) -> tuple[float, int]:
    argv = [sys.executable, "-c", CHILD, "adapters", "check", str(fleet), "--format", "json"]
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    io = proc_io(done.stderr)
    if "rchar" not in io:
        raise SystemExit(f"fleetspec adapters check failed:\n{done.stderr}")
    return elapsed, io["rchar"]


def compare(big: pathlib.Path, small: pathlib.Path, runs: int) -> dict:
    whole_process(big), whole_process(small)  # warm-up
    samples = {"big": [], "small": []}
    for run in range(runs):
        order = ("big", "small") if run % 2 == 0 else ("small", "big")
        for name in order:
            samples[name].append(whole_process(big if name == "big" else small))
    return samples


def spread(values: list[float]) -> str:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else ordered * 3
    return (f"median {statistics.median(ordered) * 1000:,.0f} ms, p25–p75 {q[0] * 1000:,.0f}–{q[2] * 1000:,.0f} ms, "
            f"min–max {ordered[0] * 1000:,.0f}–{ordered[-1] * 1000:,.0f} ms")


def report(inner: dict, samples: dict, count: int, full_read: int) -> None:
    n = inner["count"]
    print(f"adapters                  {n:,} × 100 MiB = {inner['logical'] / 1024**3:,.1f} GiB of weights files")
    print("in process, cold cache:")
    print(f"  bytes read (inspector)  {inner['counted']:,} ({inner['counted'] / n:,.0f} per adapter, "
          f"{inner['counted'] / inner['logical']:.4%} of the files)")
    print(f"  bytes read (rchar)      {inner['rchar']:,}")
    print(f"  bytes from disk         {inner['read_bytes']:,} (read_bytes, includes kernel readahead)")
    print(f"  time                    {inner['seconds']:.2f} s, median {inner['median_ms']:.2f} ms, "
          f"p99 {inner['p99_ms']:.2f} ms per adapter")
    big_t, big_r = zip(*samples["big"], strict=True)
    small_t, small_r = zip(*samples["small"], strict=True)
    print(f"whole process `fleetspec adapters check`, {len(big_t)} runs each, warm cache:")
    print(f"  {count:>5} adapters          {spread(list(big_t))}; rchar {statistics.median(big_r):,.0f}")
    print(f"  {1:>5} adapter           {spread(list(small_t))}; rchar {statistics.median(small_r):,.0f}")
    per = (statistics.median(big_t) - statistics.median(small_t)) / (count - 1) * 1000
    per_bytes = (statistics.median(big_r) - statistics.median(small_r)) / (count - 1)
    print(f"  per extra adapter       {per:.2f} ms, {per_bytes:,.0f} bytes read")
    print(f"for contrast: reading one adapter in full = {full_read:,} bytes (rchar)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    directory = pathlib.Path(tempfile.mkdtemp(prefix="fleetspec-bench-adapters-"))
    try:
        adapters = build(directory / "adapters", args.count)
        inner = in_process(adapters)
        write_fleet(directory / "big.yaml", adapters)
        write_fleet(directory / "small.yaml", adapters[:1])
        samples = compare(directory / "big.yaml", directory / "small.yaml", args.runs)
        before = proc_io()
        with open(adapters[0] / "adapter_model.safetensors", "rb") as handle:
            while handle.read(8 * MIB):
                pass
        full_read = proc_io()["rchar"] - before["rchar"]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report(inner, samples, args.count, full_read)


if __name__ == "__main__":
    main()
