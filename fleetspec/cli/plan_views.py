"""Rendering a FleetPlan: per server, per replica, every figure of one GPU's budget, and a summary.

Kept apart from the `plan` command so later commands (apply, status) can show the same budgets.

The text view never cuts a figure. It draws the budget table only where the whole table fits the
width (a wide terminal); anywhere narrower, and in logs without a terminal (CI wraps long lines,
which shreds a table), each replica is a short stack of lines, wrapped at spaces, so a number is
never split. The markdown view (pull-request comments) is always the table.
"""

from __future__ import annotations

import contextvars
import functools
import os
import shutil
import sys
import textwrap
from collections.abc import Iterator

from fleetspec.catalog import overheads
from fleetspec.cli import views
from fleetspec.planner import report

GIB = 1 << 30
LOG_WIDTH = 100  # width of the text view when stdout is no terminal and COLUMNS is not set
COLUMNS = ("Replica", "GPUs", "Type", "Total", "Budget", "Weights", "LoRA", "Activation", "Non-torch",
           "Graphs", "KV cache", "KV tokens", "Concurrency", "KV B/token", "Longest len", "Outside", "Fits")
_LEFT = ("GPUs", "Type", "Fits")


# The size unit of the plan being rendered (views.size_unit: GiB, or MiB for a tiny model so that
# no figure reads 0.00); set by the rendering entry points (`_sized`), read by every figure.
_UNIT: contextvars.ContextVar[tuple[str, int]] = contextvars.ContextVar("plan_size_unit", default=("GiB", GIB))


def _gib(value: int | float) -> str:
    return views.in_unit(value, _UNIT.get())


def _unit() -> str:
    return _UNIT.get()[0]


def _sized(render):
    """Render with the one size unit that shows every figure of the plan (the first argument)."""
    @functools.wraps(render)
    def wrapper(plan: report.FleetPlan, *args, **kwargs):
        token = _UNIT.set(views.size_unit(_figures(plan)))
        try:
            return render(plan, *args, **kwargs)
        finally:
            _UNIT.reset(token)
    return wrapper


def _figures(plan: report.FleetPlan) -> Iterator[float]:
    yield plan.cpu_lora_cache_bytes
    for server in plan.servers:
        if server.lora is not None:
            yield from (server.lora.seed_formula_bytes, server.lora.cpu_cache_bytes)
        for r in server.replicas:
            b = r.budget
            if b is not None:
                yield from (b.total, b.budget, b.weights, b.lora, b.activation, b.non_torch, b.cudagraph,
                            max(b.kv_cache, 0), b.cuda_context)


def budget_rows(server: report.ServerPlan) -> Iterator[tuple[str, ...]]:
    """One row per replica (its GPUs share identical budgets): sizes in the plan's unit, as strings."""
    for r in server.replicas:
        b = r.budget
        gpus = ",".join(map(str, r.gpus)) if r.placed else "unplaced"
        if b is None:
            yield (str(r.index), gpus, r.gpu_type or "-", *("-" * (len(COLUMNS) - 4)), "no")
            continue
        graphs = _gib(b.cudagraph) + ("" if b.cudagraph_in_budget else "*")
        yield (str(r.index), gpus, r.gpu_type or "-", _gib(b.total), _gib(b.budget), _gib(b.weights),
               _gib(b.lora), _gib(b.activation), _gib(b.non_torch), graphs, _gib(max(b.kv_cache, 0)),
               f"{b.kv_tokens:,}", f"{b.max_concurrency:.2f}x", f"{b.kv_bytes_per_token:,.0f}",
               f"{b.largest_model_len:,}", _gib(b.cuda_context), "yes" if r.fits else "no")


def server_heading(server: report.ServerPlan) -> str:
    s = server.settings
    if s is None:
        return f"server {server.name}"
    if s.host:
        return (f"server {server.name}: vLLM CPU build in host RAM, share {s.gpu_memory_utilization:.2f} of the "
                f"host (gpu_memory_utilization), KV cache set explicitly, max_model_len {s.max_model_len:,}, "
                f"max_num_seqs {s.max_num_seqs}, max_num_batched_tokens {s.max_num_batched_tokens:,}")
    dp = f" x dp {s.data_parallel_size}" if s.data_parallel_size > 1 else ""
    ep = ", expert parallel" if s.expert_parallel else ""
    split = f" (layers {'+'.join(map(str, s.layer_partition))})" if s.layer_partition else ""
    return (f"server {server.name}: tp {s.tensor_parallel_size} x pp {s.pipeline_parallel_size}{split}{dp}{ep}, "
            f"gpu_memory_utilization {s.gpu_memory_utilization:.2f}, max_model_len {s.max_model_len:,}, "
            f"max_num_seqs {s.max_num_seqs}, max_num_batched_tokens {s.max_num_batched_tokens:,}")


def lora_line(server: report.ServerPlan) -> str | None:
    lora, replica = server.lora, next((r for r in server.replicas if r.budget), None)
    if lora is None:
        return None
    per_gpu = f"{_gib(replica.budget.lora)} {_unit()} per GPU" if replica else "unknown per GPU"
    return (f"LoRA: {lora.max_loras} slots x rank {lora.max_lora_rank} on {', '.join(lora.wrapped_modules)}: "
            f"{per_gpu} preallocated (simple formula: {_gib(lora.seed_formula_bytes)} {_unit()}); CPU cache of "
            f"{lora.max_cpu_loras} adapters: {_gib(lora.cpu_cache_bytes)} {_unit()} host RAM per replica")


@_sized
def summary(plan: report.FleetPlan) -> str:
    replicas = sum(len(s.replicas) for s in plan.servers)
    gpus = len({g for s in plan.servers for r in s.replicas for g in r.gpus})
    on_host = all(s.settings is not None and s.settings.host for s in plan.servers) and plan.servers
    where = "the CPU host (vLLM's CPU build)" if on_host else f"{gpus} GPU(s)"
    counts = f"{len(plan.servers)} server(s), {replicas} replica(s) on {where}"
    if plan.fits:
        return f"Fleet {plan.fleet} fits: {counts}; host RAM for CPU adapter caches {_gib(plan.cpu_lora_cache_bytes)} {_unit()}."
    errors = len(plan.errors)
    if all(s.fits for s in plan.servers):  # every replica has room: the errors are about something else
        damaged = sum(d.code in DAMAGED_ADAPTER_CODES for d in plan.errors)
        which = f", {damaged} of them adapter files that are unreadable or corrupt" if damaged else ""
        return f"Fleet {plan.fleet} fits in memory ({counts}) but cannot be applied: {errors} error(s) above{which}."
    return f"Fleet {plan.fleet} does not fit: {counts}, {errors} error(s)."


# Adapter files fleetspec could not read (a corrupt or truncated download): not a memory problem.
DAMAGED_ADAPTER_CODES = frozenset({"adapter-unreadable", "adapter-config-invalid", "adapter-weights-invalid"})


@_sized
def summary_text(plan: report.FleetPlan, file=None) -> str:
    """The summary, wrapped to the width the rest of the text view uses."""
    return "\n".join(_wrapped(summary(plan), output_width(file)[0], ""))


# -- the stacked view: one block of lines per replica -------------------------------------------------


def _pair(label: str, value: str) -> str:
    """A label and its figure, kept on one line when wrapped (joined by a no-break space)."""
    return f"{label}\u00a0{value}".replace(" ", "\u00a0")


def replica_lines(replica: report.ReplicaPlan) -> list[str]:
    """A replica's every figure as short sentences, sizes per GPU (or per worker on a CPU host)."""
    b = replica.budget
    ids = ",".join(map(str, replica.gpus))
    if b is not None and b.host:
        where = "the CPU host"
    elif replica.placed:
        where = _pair("GPU" if len(replica.gpus) == 1 else "GPUs", ids)
    else:
        where = "unplaced (no GPU left for it)"
    kind = f" ({replica.gpu_type})" if replica.gpu_type else ""
    head = f"replica {replica.index}: {where}{kind}, {'fits' if replica.fits else 'DOES NOT FIT'}"
    if b is None:
        return [head, "no budget: fleetspec knows no GPU this replica could be given"]
    unit = f"{_unit()} per worker process, host RAM" if b.host else f"{_unit()} per GPU"
    graphs = [_pair("CUDA graphs", _gib(b.cudagraph))] if not b.host and b.cudagraph_in_budget else []
    terms = [_pair("weights", _gib(b.weights)), _pair("LoRA", _gib(b.lora)), _pair("activation", _gib(b.activation)),
             _pair("non-torch", _gib(b.non_torch)), *graphs, _pair("KV cache", _gib(max(b.kv_cache, 0)))]
    share = "of host RAM" if b.host else "gpu_memory_utilization share"
    lines = [head, f"{unit}: {_pair('total', _gib(b.total))}, {_pair('budget', _gib(b.budget))} ({share}) = "
             + " + ".join(terms)]
    if b.kv_cache <= 0:
        lines.append(f"the budget is {_gib(-b.kv_cache)} {_unit()} short of even loading the model, so no KV cache is left")
    outside = [_pair("API server and engine core" if b.host else "CUDA context", _gib(b.cuda_context))]
    if not b.host and not b.cudagraph_in_budget:
        outside.append(f"{_pair('CUDA graphs', _gib(b.cudagraph))} (vLLM before 0.21 takes them outside the budget)")
    lines.append("outside the budget: " + ", ".join(outside))
    lines.append(f"KV cache: {_pair(f'{b.kv_tokens:,}', 'tokens')} at {b.kv_bytes_per_token:,.0f} bytes per token; "
                 f"{b.max_concurrency:.2f}x concurrency at {_pair('max_model_len', f'{b.max_model_len:,}')}; "
                 f"the longest max_model_len that fits is {b.largest_model_len:,}")
    if b.stages and b.stage is not None:
        lines.append(f"the figures above are pipeline stage {b.stage.index}'s, the one that binds; every stage "
                     "gets the fewest KV blocks any stage holds:")
        lines += [f"stage {st.stage.index}: layers {st.stage.start}-{st.stage.start + st.stage.layers - 1}"
                  f"{' + embedding' if st.stage.first else ''}{' + lm_head' if st.stage.last else ''}"
                  f"{f' on {st.stage_gpu}' if st.stage_gpu else ''}: {_pair('weights', _gib(st.weights))}, "
                  f"{_pair('KV cache', _gib(max(st.kv_cache, 0)))} ({st.kv_tokens:,} tokens)"
                  for st in b.stages]
    return lines


def _wrapped(text: str, width: int, indent: str, hang: str = "  ") -> list[str]:
    """Wrap at spaces only: a figure is never split or cut, whatever the width."""
    lines = textwrap.wrap(text, width=max(width, 20), initial_indent=indent, subsequent_indent=indent + hang,
                          break_long_words=False, break_on_hyphens=False) or [indent]
    return [line.replace("\u00a0", " ") for line in lines]


@_sized
def stacked_text(plan: report.FleetPlan, width: int) -> str:
    out: list[str] = []
    for server in plan.servers:
        out += _wrapped(server_heading(server), width, "")
        for replica in server.replicas:
            head, *rest = replica_lines(replica)
            out += _wrapped(head, width, "  ")
            for line in rest:
                out += _wrapped(line, width, "    ")
        line = lora_line(server)
        if line:
            out += _wrapped(line, width, "  ")
    note = host_note(plan)
    if note:
        out += _wrapped(note, width, "")
    return "\n".join(out) + "\n"


# -- the table view: only where the whole table fits ----------------------------------------------------


def table_width(server: report.ServerPlan) -> int:
    """Characters the budget table of a server needs: rich's heavy-head box, one space of padding."""
    rows = [COLUMNS, *budget_rows(server)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return sum(w + 2 for w in widths) + len(widths) + 1


def output_width(file) -> tuple[int, bool]:
    """(width, is a terminal): the terminal's own width, else COLUMNS, else LOG_WIDTH."""
    stream = file if file is not None else sys.stdout
    terminal = hasattr(stream, "isatty") and stream.isatty()
    if terminal:
        try:
            return os.get_terminal_size(stream.fileno()).columns, True
        except (OSError, ValueError):
            pass
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns), terminal
    return (shutil.get_terminal_size().columns if terminal else LOG_WIDTH), terminal


@_sized
def render_human(plan: report.FleetPlan, file=None) -> None:
    width, terminal = output_width(file)
    if not plan.servers or any(table_width(s) > width for s in plan.servers):
        print(stacked_text(plan, width), end="", file=file)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, width=width, force_terminal=terminal or None)
    for server in plan.servers:
        table = Table(title=server_heading(server), title_justify="left", header_style="bold")
        for column in COLUMNS:
            table.add_column(column, justify="left" if column in _LEFT else "right", no_wrap=True)
        for row in budget_rows(server):
            style = None if row[-1] == "yes" else "red"
            table.add_row(*row, style=style)
        console.print(table)
        line = lora_line(server)
        if line:
            console.print(line, highlight=False)
    console.print(f"Sizes in {_unit()} per GPU. * = CUDA graphs outside the budget (vLLM before 0.21). KV B/token: bytes "
                  "of KV cache per token; Longest len: the longest max_model_len that fits; Outside: the CUDA "
                  "context, outside the budget.", style="dim")
    note = host_note(plan)
    if note:
        console.print(note, style="dim")


def host_note(plan: report.FleetPlan) -> str | None:
    """What the figures mean for vLLM's CPU build, where nothing is GPU memory."""
    if not any(s.settings is not None and s.settings.host for s in plan.servers):
        return None
    beside = overheads.load().cpu.side_processes_bytes
    return (f"On a `cpu` host every size is host RAM of one replica's worker process; its API server and engine "
            f"core take about {_gib(beside)} {_unit()} more (non-torch is the worker's own base).")


@_sized
def render_markdown(plan: report.FleetPlan) -> str:
    out = [f"## fleetspec plan: `{plan.fleet}` ({plan.model})", ""]
    for server in plan.servers:
        out += [f"### {server_heading(server)}", "", "| " + " | ".join(COLUMNS) + " |",
                "|" + "|".join("---" if c in _LEFT else "---:" for c in COLUMNS) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in budget_rows(server)]
        line = lora_line(server)
        out += ["", line] if line else []
        out.append("")
    out += [f"Sizes in {_unit()} per GPU. KV B/token: bytes of KV cache per token; Longest len: the longest "
            "max_model_len that fits; Outside: the CUDA context, outside the budget.", ""]
    if plan.findings:
        out += ["### Findings", ""]
        for f in plan.findings:
            where = f" `{f.path}`" if f.path else ""
            out.append(f"- **{f.severity.value}**{where}: {f.message}" + (f" — {f.hint}" if f.hint else ""))
        out.append("")
    note = host_note(plan)
    out += [note, ""] if note else []
    out.append(summary(plan))
    return "\n".join(out) + "\n"

