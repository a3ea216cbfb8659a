"""`fleetspec plan` as people read it: on an 80-column terminal and in a CI log (no terminal).

For every shipped example, every figure `plan --format json` gives per replica must appear whole in
that replica's part of the text (never `39…`), and no line may be wider than the terminal. Sizes
are compared by value, whatever the unit the text chose (GiB, MiB), to the JSON's two decimals.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import pty
import re
import struct
import subprocess
import sys
import termios
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?\s*(GiB|MiB|KiB|GB|MB)?")
UNITS = {None: 1.0, "GiB": 1.0, "GB": 1.0, "MiB": 1 / 1024, "MB": 1 / 1024, "KiB": 1 / 1024 ** 2}
SIZES = ("total_gib", "budget_gib", "weights_gib", "lora_gib", "activation_gib", "non_torch_gib", "cudagraph_gib",
         "kv_cache_gib", "cuda_context_gib")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    return env


def plan_on_pty(path: pathlib.Path, columns: int = 80) -> str:
    """stdout and stderr of `fleetspec plan` on a pseudo-terminal `columns` wide, ANSI codes removed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        done = subprocess.run([sys.executable, "-m", "fleetspec", "plan", str(path), "--memory-only"], cwd=ROOT,
                              stdin=slave, stdout=slave, stderr=slave, env=_env(), timeout=60)
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    text = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")).replace("\r\n", "\n")
    assert done.returncode == 0, text
    return text


def plan_in_log(path: pathlib.Path) -> str:
    done = subprocess.run([sys.executable, "-m", "fleetspec", "plan", str(path), "--memory-only"], cwd=ROOT,
                          capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def plan_json(path: pathlib.Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "fleetspec", "plan", str(path), "--memory-only", "--format", "json"],
                          cwd=ROOT, capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def replica_blocks(text: str) -> dict[tuple[str, int], str]:
    """(server, replica) → the lines of text about that replica: its `replica N:` line and the lines
    indented under it."""
    blocks: dict[tuple[str, int], list[str]] = {}
    server, current = None, None
    for line in text.splitlines():
        heading = re.match(r"^server ([\w-]+)", line)
        replica = re.match(r"^  replica (\d+):", line)
        if heading:
            server, current = heading.group(1), None
        elif replica and server is not None:
            current = blocks.setdefault((server, int(replica.group(1))), [])
            current.append(line)
        elif current is not None and line.startswith("    "):
            current.append(line)
        else:
            current = None
    return {key: "\n".join(lines) for key, lines in blocks.items()}


def numbers(text: str) -> list[float]:
    """Every figure of the text as written, and in GiB where it carries a size unit or sits under a
    "MiB per GPU:" heading (the plan picks MiB for tiny models, so no figure reads 0.00)."""
    found = []
    heading = re.search(r"\b(GiB|MiB|KiB) per (?:GPU|worker)", text)
    for whole, fraction, unit in NUMBER.findall(text):
        value = float(whole.replace(",", "") + (fraction or ""))
        found.append(value)
        if unit or heading:
            found.append(value * UNITS[unit or heading.group(1)])
    return found


def missing_figures(replica: dict, block: str) -> list[str]:
    figures = numbers(block)

    def shown(value: float, tolerance: float) -> bool:
        return any(abs(v - value) <= tolerance for v in figures)

    missing = []
    for gpu in replica["gpus"] if "the CPU host" not in block else ():  # a host has no GPU id to show
        if gpu not in figures:
            missing.append(f"GPU {gpu}")
    if replica["gpu_type"] and replica["gpu_type"] not in block:
        missing.append(f"GPU type {replica['gpu_type']}")
    if ("fits" in block.splitlines()[0]) != replica["fits"]:
        missing.append(f"fits={replica['fits']}")
    for key, tolerance in (("kv_cache_tokens", 0), ("largest_max_model_len", 0), ("max_concurrency", 0.005)):
        if not shown(replica[key], tolerance):
            missing.append(f"{key} {replica[key]}")
    per_gpu = replica["per_gpu"] or {}
    for key in SIZES:
        if key in per_gpu and not shown(per_gpu[key], 0.0051):
            missing.append(f"{key} {per_gpu[key]}")
    if "kv_bytes_per_token" in per_gpu and not shown(per_gpu["kv_bytes_per_token"], 0.51):
        missing.append(f"kv_bytes_per_token {per_gpu['kv_bytes_per_token']}")
    return missing


def check(text: str, data: dict, width: int) -> None:
    assert "…" not in text, "a figure was cut:\n" + text
    wide = [line for line in text.splitlines() if len(line.rstrip()) > width and not _diagnostic(line)]
    assert not wide, f"lines wider than {width} columns:\n" + "\n".join(wide)
    blocks = replica_blocks(text)
    for server in data["servers"]:
        for replica in server["replicas"]:
            block = blocks.get((server["name"], replica["index"]))
            assert block is not None, f"no lines about {server['name']} replica {replica['index']}:\n{text}"
            missing = missing_figures(replica, block)
            assert not missing, f"{server['name']}/{replica['index']} lacks {missing} in:\n{block}"


def _diagnostic(line: str) -> bool:
    """Findings are printed as the terminal wraps them (whole, never cut): not the budget view."""
    return bool(re.match(r"^\S+\.yaml:\d+:\d+: |^    hint: ", line))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_replica_figure_appears_whole_at_80_columns_and_in_a_log(path: pathlib.Path):
    data = plan_json(path)
    check(plan_on_pty(path, 80), data, 80)
    check(plan_in_log(path), data, 100)


def test_a_wide_terminal_gets_the_table_with_every_column():
    path = ROOT / "examples" / "000-ensemble-hash-clusters.yaml"
    text = plan_on_pty(path, 250)
    header = next(line for line in text.splitlines() if "Replica" in line)
    for column in ("Total", "Budget", "Weights", "KV tokens", "Concurrency", "KV B/token", "Longest len", "Outside"):
        assert column in header
    assert "…" not in text
