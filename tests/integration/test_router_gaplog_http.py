"""The routing-gap log through a real router process: the proxy queues a prompt that no rule
matched, the background writer puts it beside the router's config, and GET /admin/gaps and
`fleetspec gaps` read it back. Prompts that a rule routed are not recorded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import test_router_proxy as proxy  # the sim and router helpers of the proxy tests
import yaml
from netkit import free_port

from fleetspec.router import gaplog
from fleetspec.spec import models

UNROUTED = "how do I knit a scarf for my grandmother"  # no keyword, extension or regex of the fleet


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
def test_unrouted_prompts_reach_the_log_and_the_admin_api(tmp_path, processes):
    """With two processes, the serving processes send entries to the coordinator, the file's one writer."""
    adapters = tmp_path / "adapters"
    shutil.copytree(proxy.ROOT / "adapters", adapters)
    shutil.copytree(adapters / "python/1.0.0", adapters / "python/2.0.0")
    doc = yaml.safe_load(proxy.FLEET.replace("ADAPTERS", str(adapters)))
    doc["routing"]["rules"] = [
        r for r in doc["routing"]["rules"] if "hash_clusters" not in r
    ]  # clusters take all
    doc["routing"]["gap_log"] = {"store": "hash"}
    spec = models.FleetSpec.model_validate(doc)
    with proxy.processes() as started:
        modules = [
            f"python--1.0.0={adapters}/python/1.0.0",
            f"python--2.0.0={adapters}/python/2.0.0",
            f"sql--1.0.0={adapters}/sql/1.0.0",
        ]
        sims = [proxy.start_sim(started, free_port(), modules, tmp_path / f"sim{i}.log") for i in range(2)]
        config_path = tmp_path / "router.json"
        proxy.write_config(config_path, spec, sims)
        router = proxy.start_router(started, config_path, free_port(), tmp_path / "router.log",
                                    processes=processes)
        assert proxy.complete(router, "my pytest fixture fails").status_code == 200
        for _ in range(3):
            answer = proxy.chat(router, UNROUTED)
            assert answer.status_code == 200 and answer.headers["x-fleetspec-rule"] == "fallback"

        def listed():
            reply = proxy.admin(router, "GET", "/admin/gaps?limit=10")
            return reply.json() if reply.status_code == 200 and reply.json()["count"] == 3 else None

        body = proxy.wait_for(listed, timeout=20, what="three gaps listed by /admin/gaps")
    assert {g["fallback_reason"] for g in body["gaps"]} == {"no-match"} and body["store"] == "hash"
    assert all(g["prompt_chars"] == len(UNROUTED) and "prompt" not in g for g in body["gaps"])
    on_disk = (tmp_path / gaplog.FILE_NAME).read_text()
    assert "knit" not in on_disk and "pytest" not in on_disk and on_disk.count("\n") == 3
    cli = subprocess.run(
        [sys.executable, "-m", "fleetspec", "gaps", str(tmp_path), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert [g["prompt_sha256"] for g in json.loads(cli.stdout)] == [g["prompt_sha256"] for g in body["gaps"]]
