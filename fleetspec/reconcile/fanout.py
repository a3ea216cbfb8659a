"""Run a plan's adapter actions on every engine at once, each engine's own actions in plan order.

Loading one adapter version onto ten servers is ten independent HTTP calls to ten engines; made
one after another, the last server serves the new version only after every other load returned
(vLLM takes 5-25 ms per load on a small adapter, a large one reads its weights from disk first).
Actions on one replica stay sequential and in plan order (the engine API is not meant for
concurrent loads of one engine, and a version's unload waits for its successor's load), and the
plan's phases stay in order: a run of loads finishes before the router moves, before any unload.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

Outcome = TypeVar("Outcome")
MAX_WORKERS = 16  # engines talked to at once; each call is I/O-bound, a thread each is cheap


def run_batched(actions: Sequence, run_one: Callable[[object], Outcome], parallel: Collection) -> list[Outcome]:
    """Outcomes of `run_one(action)` for every action, in the actions' order. Consecutive actions
    whose `kind` is in `parallel` run concurrently across `target`s; the rest one by one."""
    outcomes: list[Outcome] = []
    start = 0
    while start < len(actions):
        kind = actions[start].kind
        end = start + 1
        if kind in parallel:
            while end < len(actions) and actions[end].kind is kind:
                end += 1
            outcomes += per_target(actions[start:end], run_one)
        else:
            outcomes.append(run_one(actions[start]))
        start = end
    return outcomes


def per_target(actions: Sequence, run_one: Callable[[object], Outcome]) -> list[Outcome]:
    """One worker per target, each running its target's actions in order; outcomes in input order."""
    groups: dict[str, list[int]] = {}
    for position, action in enumerate(actions):
        groups.setdefault(action.target, []).append(position)
    if len(groups) <= 1:
        return [run_one(action) for action in actions]
    found: dict[int, Outcome] = {}

    def run_group(positions: list[int]) -> None:
        for position in positions:
            found[position] = run_one(actions[position])

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(groups))) as pool:
        for future in [pool.submit(run_group, positions) for positions in groups.values()]:
            future.result()  # run_one's own exceptions are not expected; if one escapes, it surfaces here
    return [found[position] for position in range(len(actions))]
