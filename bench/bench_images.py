"""Offline image builds and the Docker driver's container lifecycle, timed.

    .venv/bin/python bench/bench_images.py [--repeat 3]

Needs root and a running Docker engine. It DELETES the fleetspec/base and fleetspec/sim images
(they are rebuilt) and bootstraps into a temporary cache dir, so the cold figure is really cold.
Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import statistics
import tempfile
import time
import urllib.error
import urllib.request

import docker.errors

from fleetspec.compile import desired, labels
from fleetspec.drivers import docker as docker_driver
from fleetspec.images import build


def remove_images(client) -> None:
    for repository in (build.SIM_REPOSITORY, build.BASE_REPOSITORY):
        for image in client.images.list(name=repository):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)


def timed(fn) -> tuple[float, object]:
    started = time.monotonic()
    result = fn()
    return time.monotonic() - started, result


def wait_health(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.02)
    raise TimeoutError(f"sim on port {port} not healthy after {timeout_s} s")


def container_cycle(driver, image: str, n: int) -> dict[str, float]:
    spec = desired.ContainerSpec(
        name=f"bench-images-main-{n}", image=image,
        argv=["vllm", "serve", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "--host", "0.0.0.0", "--port", "8000"],
        env={"FLEETSPEC_SIM_STARTUP_SECONDS": "0"},
        ports=[desired.PortBinding(8000)],
        labels={labels.FLEET: "bench-images", labels.SERVER: "main", labels.REPLICA: str(n)},
    )
    started = time.monotonic()
    container_id = driver.create(spec)
    created = time.monotonic()
    port = driver.wait_running(container_id).host_port
    running = time.monotonic()
    wait_health(port)
    healthy = time.monotonic()
    observe_s, _ = timed(lambda: driver.observe("bench-images"))
    remove_s, _ = timed(lambda: driver.remove(container_id))
    return {
        "create+start": created - started, "running": running - started, "healthy": healthy - started,
        "observe (1 container)": observe_s, "remove": remove_s,
    }


def row(name: str, samples: list[float], note: str = "") -> tuple[str, float, str, str]:
    spread = f"{min(samples):.3f}–{max(samples):.3f}" if len(samples) > 1 else "(one run)"
    return name, statistics.median(samples), spread, note


def build_rows(client, repeat: int) -> tuple[list, str]:
    with tempfile.TemporaryDirectory(prefix="fleetspec-bench-cache-") as tmp:
        cache = pathlib.Path(tmp)
        remove_images(client)
        total, image = timed(lambda: build.ensure_sim_image(client, cache))
        rows = [
            row("cold: debootstrap + tar + docker import (base image)", [image.base.seconds],
                f"{image.base.size_bytes / 2**20:.0f} MiB"),
            row("cold: sim layer on top", [image.seconds], f"{image.size_bytes / 2**20:.0f} MiB"),
            row("cold: total", [total]),
        ]
        tarball = next((cache / "images").glob("rootfs-*.tar"))
        fresh = []
        for _ in range(repeat):
            remove_images(client)
            fresh.append(timed(lambda: build.ensure_sim_image(client, cache))[0])
        rows.append(row("tarball cached, images gone (fresh engine)", fresh,
                        f"tarball {tarball.stat().st_size / 2**20:.0f} MiB"))
        reuse = [timed(lambda: build.ensure_sim_image(client, cache))[0] for _ in range(repeat)]
        rows.append(row("warm, nothing changed", reuse, "image reused"))
        layer = [timed(lambda: build.ensure_sim_image(client, cache, force=True))[0] for _ in range(repeat)]
        rows.append(row("warm, fleetspec changed: sim layer rebuilt", layer, "no build cache"))
        return rows, image.tag


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    client = docker_driver.connect()
    rows, tag = build_rows(client, repeat)
    driver = docker_driver.DockerDriver(client)
    cycles = [container_cycle(driver, tag, n) for n in range(repeat)]
    rows += [row(f"sim container: {key}", [c[key] for c in cycles]) for key in cycles[0]]
    print(f"| step ({os.cpu_count()} cores, n={repeat} unless one run) | median s | min–max s | note |")
    print("|---|---:|---:|---|")
    for name, median, spread, note in rows:
        print(f"| {name} | {median:.3f} | {spread} | {note} |")


if __name__ == "__main__":
    main()
