"""Names, paths and values that look like YAML, JSON, jinja2 or shell syntax arrive intact in every
target, and templates cannot be tricked into producing other structure."""

from __future__ import annotations

import json

import pytest
import yaml

from fleetspec.compile import compose, k8s, k8s_changes, router, slots, targets, templating, vllm_args
from fleetspec.spec import models

NASTY = [
    'double "quotes" and \'single\'',
    "colon: value # not a comment",
    "line one\nline two\n  indented: true",
    "{{ jinja }} {% if x %}y{% endif %}",
    "!!python/object/apply:os.system ['id']",
    "- leading dash, [flow], {map}",
    "&anchor *alias | > %",
    "tab\there, nul-free, back\\slash",
    "unicode ✓ 😀 \u2028 separator \u0085 next-line",
    "$HOME $(date) `uname` ${NOT_ENV",
    "",
]


@pytest.mark.parametrize("value", NASTY)
def test_q_reads_back_as_the_same_value_in_yaml_and_json(value):
    for wrapped in (value, [value, {"k": value}]):
        text = templating.q(wrapped)
        assert yaml.safe_load(text) == wrapped
        assert json.loads(text) == wrapped
        assert yaml.safe_load(f"key: {text}\nother: 1\n") == {"key": wrapped, "other": 1}


def nasty_spec() -> models.FleetSpec:
    paths = ["/adapters/with space,comma=eq", '/adapters/"q": {{ x }}\n- !!python/object', "/adapters/$HOME/${X"]
    return models.FleetSpec.model_validate({
        "name": "evil",
        "base_model": {"id": 'org/model: "x" {{ y }}', "revision": "!!binary\n- a: b"},
        "gpus": "2x L4",
        "servers": [{
            "name": "main", "replicas": 2, "lora": {"max_loras": 2, "max_lora_rank": 16},
            "image": 'img:1 # "tag": {{ t }}',
            "env": {"HF_TOKEN": "${HF_TOKEN}", "NOTE": NASTY[2] + NASTY[3] + NASTY[9],
                    "MIXED": "Bearer ${API_TOKEN} and $(literal)"},
            "extra_args": ["--chat-template", NASTY[3] + "\n" + NASTY[4]],
        }],
        "specialists": [{"name": f"s{i}", "version": "1.0+build", "path": p, "keywords": [NASTY[i]]}
                        for i, p in enumerate(paths)],
        "routing": {"rules": [{"regex": r"^\s*(?:def|class)\b.*: \"{{", "to": "s0"},
                              {"keywords": [NASTY[0], NASTY[1]], "to": "s1@1.0+build"}]},
        "runtime": {"engine": "vllm", "router": {"admin_token": "${ADMIN_TOKEN}"},
                    "kubernetes": {"ingress_host": "fleet.example.com"}},
    })


def _launches(spec):
    return [vllm_args.replica_launch(spec, spec.servers[0], r, host="0.0.0.0", port=8000) for r in range(2)]


def test_compose_keeps_every_argv_word_and_env_value():
    spec = nasty_spec()
    files = compose.compile_project(spec, slots.sequential(spec))
    document = yaml.safe_load(files[compose.COMPOSE_FILE])
    for launch in _launches(spec):
        service = document["services"][f"main-{launch.replica}"]
        assert [compose.unescape(w) for w in service["entrypoint"] + service["command"]] == launch.argv
        assert {k: compose.unescape(v) for k, v in service["environment"].items()} == launch.env
        assert compose.unescape(service["image"]) == 'img:1 # "tag": {{ t }}'
    assert "--lora-modules" in launch.argv
    assert '{"name":"s0--1.0_build","path":"/adapters/with space,comma=eq"}' in launch.argv


def test_compose_escapes_literal_dollars_but_keeps_secret_references():
    spec = nasty_spec()
    text = compose.compile_project(spec, slots.sequential(spec))[compose.COMPOSE_FILE]
    environment = yaml.safe_load(text)["services"]["main-0"]["environment"]
    assert environment["HF_TOKEN"] == "${HF_TOKEN}"
    assert environment["MIXED"] == "Bearer ${API_TOKEN} and $$(literal)"


def test_kubernetes_keeps_argv_and_turns_references_into_secret_refs():
    spec = nasty_spec()
    found = k8s_changes.objects(k8s.compile_manifests(spec, slots.sequential(spec)))
    deployment = found[("Deployment", "vllm-main")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # On Kubernetes the engine starts without adapters; its agent loads them from the ConfigMap.
    launch = vllm_args.replica_launch(spec, spec.servers[0], 0, host="0.0.0.0", port=8000, preload_adapters=False)
    assert [k8s.unexpand(w) for w in container["command"]] == launch.argv
    adapters = json.loads(found[("ConfigMap", "vllm-main-adapters")]["data"]["adapters.json"])
    assert "/adapters/with space,comma=eq" in adapters["adapters"].values()
    env = {e["name"]: e for e in container["env"]}
    secret = k8s.secret_name(spec)
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": secret, "key": "HF_TOKEN"}}
    assert env["API_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": secret, "key": "API_TOKEN"}}
    assert env["MIXED"]["value"] == "Bearer $(API_TOKEN) and $$(literal)"
    assert k8s.unexpand(env["NOTE"]["value"]) == launch.env["NOTE"]
    assert [e["name"] for e in container["env"]][:2] == ["API_TOKEN", "HF_TOKEN"]  # defined before use


def test_the_router_reads_back_the_config_compose_and_kubernetes_carry():
    from fleetspec.routing import config

    spec = nasty_spec()
    from_file = json.loads(compose.compile_project(spec, slots.sequential(spec))["router.json"])
    configmap = k8s_changes.objects(k8s.compile_manifests(spec, slots.sequential(spec)))[("ConfigMap", "evil-router")]
    from_configmap = json.loads(configmap["data"]["router.json"])
    for document in (from_file, from_configmap):
        loaded = config.parse(document, env={"ADMIN_TOKEN": "t0k"})
        assert loaded.spec == spec  # every rule, keyword and path arrives intact
        assert loaded.admin_token == "t0k"
        assert loaded.adapter_paths["s1--1.0_build"] == '/adapters/"q": {{ x }}\n- !!python/object'
    assert [u["url"] for u in from_file["upstreams"]] == ["http://main-0:8000", "http://main-1:8000"]
    assert [(u["url"], u.get("discover")) for u in from_configmap["upstreams"]] == [
        ("http://vllm-main-pods.evil.svc.cluster.local:8000", True)]  # every pod, through the headless Service
    assert router.to_json(from_file) == compose.compile_project(spec, slots.sequential(spec))["router.json"]


def test_shell_line_quotes_everything_but_secret_references():
    line = vllm_args.to_shell(["vllm", "serve", "a b", "it's", "$HOME", "x${T}y"], {"K": "${K}", "L": "v w"})
    assert line == "K=\"${K}\" L='v w' vllm serve 'a b' 'it'\"'\"'s' '$HOME' \"x${T}y\""


def test_an_override_template_that_prints_a_value_raw_is_refused(tmp_path):
    (tmp_path / "compose").mkdir()
    shipped = (templating._default_dir() / "compose" / "docker-compose.yaml.j2").read_text()
    (tmp_path / "compose" / "docker-compose.yaml.j2").write_text(shipped.replace("{{ s.image | q }}", "{{ s.image }}"))
    spec = nasty_spec()
    with pytest.raises(templating.TemplateError) as refused:
        compose.compile_project(spec, slots.sequential(spec), templates=tmp_path)
    assert "compose/docker-compose.yaml.j2" in str(refused.value)


def test_an_override_template_replaces_only_its_own_file(tmp_path):
    (tmp_path / "k8s").mkdir()
    shipped = (templating._default_dir() / "k8s" / "service.yaml.j2").read_text()
    (tmp_path / "k8s" / "service.yaml.j2").write_text(shipped.replace('type: "ClusterIP"', 'type: "NodePort"'))
    spec = nasty_spec()
    found = k8s_changes.objects(k8s.compile_manifests(spec, slots.sequential(spec), templates=tmp_path))
    assert found[("Service", "vllm-main")]["spec"]["type"] == "NodePort"
    assert found[("Service", "vllm-main-pods")]["spec"]["type"] == "NodePort"
    assert found[("Deployment", "router")]["spec"]["template"]["spec"]["containers"][0]["name"] == "router"


def test_an_override_template_with_an_unknown_variable_is_a_plain_error(tmp_path):
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "namespace.yaml.j2").write_text("name: {{ nmespace | q }}\n")
    spec = nasty_spec()
    with pytest.raises(templating.TemplateError) as refused:
        targets.compile_target(spec, slots.sequential(spec), "k8s", templates=tmp_path)
    assert "k8s/namespace.yaml.j2 uses a variable that does not exist" in str(refused.value)
