"""Rendering a FleetPlan: the per-server, per-GPU budget table (rich or markdown) and a summary.

Kept apart from the `plan` command so later commands (apply, status) can show the same budgets.
"""

from __future__ import annotations

from collections.abc import Iterator

from fleetspec.catalog import overheads
from fleetspec.planner import report

GIB = 1 << 30
COLUMNS = ("Replica", "GPUs", "Type", "Total", "Budget", "Weights", "LoRA", "Activation", "Non-torch",
           "Graphs", "KV cache", "KV tokens", "Concurrency", "Fits")


def _gib(value: int | float) -> str:
    return f"{value / GIB:.2f}"


def budget_rows(server: report.ServerPlan) -> Iterator[tuple[str, ...]]:
    """One row per replica (its GPUs share identical budgets): values in GiB, as strings."""
    for r in server.replicas:
        b = r.budget
        gpus = ",".join(map(str, r.gpus)) if r.placed else "unplaced"
        if b is None:
            yield (str(r.index), gpus, r.gpu_type or "-", *("-" * 10), "no")
            continue
        graphs = _gib(b.cudagraph) + ("" if b.cudagraph_in_budget else "*")
        yield (str(r.index), gpus, r.gpu_type or "-", _gib(b.total), _gib(b.budget), _gib(b.weights),
               _gib(b.lora), _gib(b.activation), _gib(b.non_torch), graphs, _gib(max(b.kv_cache, 0)),
               f"{b.kv_tokens:,}", f"{b.max_concurrency:.2f}x", "yes" if r.fits else "no")


def server_heading(server: report.ServerPlan) -> str:
    s = server.settings
    if s is None:
        return f"server {server.name}"
    if s.host:
        return (f"server {server.name}: vLLM CPU build in host RAM, share {s.gpu_memory_utilization:.2f} of the "
                f"host (gpu_memory_utilization), KV cache set explicitly, max_model_len {s.max_model_len:,}, "
                f"max_num_seqs {s.max_num_seqs}, max_num_batched_tokens {s.max_num_batched_tokens:,}")
    return (f"server {server.name}: tp {s.tensor_parallel_size} x pp {s.pipeline_parallel_size}, "
            f"gpu_memory_utilization {s.gpu_memory_utilization:.2f}, max_model_len {s.max_model_len:,}, "
            f"max_num_seqs {s.max_num_seqs}, max_num_batched_tokens {s.max_num_batched_tokens:,}")


def lora_line(server: report.ServerPlan) -> str | None:
    lora, replica = server.lora, next((r for r in server.replicas if r.budget), None)
    if lora is None:
        return None
    per_gpu = f"{_gib(replica.budget.lora)} GiB per GPU" if replica else "unknown per GPU"
    return (f"LoRA: {lora.max_loras} slots x rank {lora.max_lora_rank} on {', '.join(lora.wrapped_modules)}: "
            f"{per_gpu} preallocated (simple formula: {_gib(lora.seed_formula_bytes)} GiB); CPU cache of "
            f"{lora.max_cpu_loras} adapters: {_gib(lora.cpu_cache_bytes)} GiB host RAM per replica")


def summary(plan: report.FleetPlan) -> str:
    replicas = sum(len(s.replicas) for s in plan.servers)
    gpus = len({g for s in plan.servers for r in s.replicas for g in r.gpus})
    on_host = all(s.settings is not None and s.settings.host for s in plan.servers) and plan.servers
    where = "the CPU host (vLLM's CPU build)" if on_host else f"{gpus} GPU(s)"
    counts = f"{len(plan.servers)} server(s), {replicas} replica(s) on {where}"
    if plan.fits:
        return f"Fleet {plan.fleet} fits: {counts}; host RAM for CPU adapter caches {_gib(plan.cpu_lora_cache_bytes)} GiB."
    errors = len(plan.errors)
    return f"Fleet {plan.fleet} does not fit: {counts}, {errors} error(s)."


def render_human(plan: report.FleetPlan, file=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file)
    if not console.is_terminal:  # pipes and CI logs: never squeeze the table to 80 columns
        console = Console(file=file, width=200)
    for server in plan.servers:
        table = Table(title=server_heading(server), title_justify="left", header_style="bold")
        for column in COLUMNS:
            table.add_column(column, justify="left" if column in ("GPUs", "Type", "Fits") else "right")
        for row in budget_rows(server):
            style = None if row[-1] == "yes" else "red"
            table.add_row(*row, style=style)
        console.print(table)
        line = lora_line(server)
        if line:
            console.print(line, highlight=False)
    console.print("Sizes in GiB per GPU. * = CUDA graphs outside the budget (vLLM before 0.21).", style="dim")
    note = host_note(plan)
    if note:
        console.print(note, style="dim")


def host_note(plan: report.FleetPlan) -> str | None:
    """What the columns mean for vLLM's CPU build, where nothing is GPU memory."""
    if not any(s.settings is not None and s.settings.host for s in plan.servers):
        return None
    beside = overheads.load().cpu.side_processes_bytes
    return (f"On a `cpu` host every size is host RAM of one replica's worker process; its API server and engine "
            f"core take about {_gib(beside)} GiB more (the Non-torch column is the worker's own base).")


def render_markdown(plan: report.FleetPlan) -> str:
    out = [f"## fleetspec plan: `{plan.fleet}` ({plan.model})", ""]
    for server in plan.servers:
        out += [f"### {server_heading(server)}", "", "| " + " | ".join(COLUMNS) + " |",
                "|" + "|".join("---" if c in ("GPUs", "Type", "Fits") else "---:" for c in COLUMNS) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in budget_rows(server)]
        line = lora_line(server)
        out += ["", line] if line else []
        out.append("")
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
