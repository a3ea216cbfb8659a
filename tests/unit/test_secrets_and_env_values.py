"""Secrets never land in plain config, and env values reach containers exactly as written, on every
target (issue 15, item 5).

Each target's expansion is reproduced here from its own documentation, independently of fleetspec's
escaping code: Kubernetes expands `$(VAR)` from earlier env entries and turns `$$` into `$`
(kubernetes/third_party/forked/golang/expansion); compose interpolates `${VAR}` and `$VAR` and turns
`$$` into `$`; the vllm target's shell line is run by a real bash.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from test_spec_loading import VALID  # noqa: E402

from fleetspec.compile import compose, k8s, k8s_changes, slots, vllm_args
from fleetspec.spec import loading, models
from fleetspec.validation import checks

SECRETS = {"VAR": "s3cret", "API_TOKEN": "tok"}  # what the operator's environment / Secret holds

# value as written in fleet.yaml → what the process must see
VALUES = {
    "DOLLAR": ("a $ b", "a $ b"),
    "DOUBLE": ("a $$ b", "a $$ b"),
    "PAREN": ("$(date) and $(VAR)", "$(date) and $(VAR)"),
    "BARE": ("$HOME and $VAR", "$HOME and $VAR"),
    "TRAILING": ("cost$", "cost$"),
    "QUOTES": ('it\'s "quoted" `cmd`', 'it\'s "quoted" `cmd`'),
    "NEWLINES": ("line one\nline two\n", "line one\nline two\n"),
    "REFERENCE": ("Bearer ${API_TOKEN}!", "Bearer tok!"),
    "DOLLAR_THEN_REF": ("$${VAR}", "$s3cret"),
    "WHOLE_REF": ("${VAR}", "s3cret"),
}


def spec_with(env: dict[str, str]) -> models.FleetSpec:
    return models.FleetSpec.model_validate(
        {
            "name": "envs",
            "base_model": {"id": "TinyLlama/TinyLlama-1.1B-Chat-v1.0"},
            "gpus": "1x L4",
            "servers": [{"name": "main", "lora": {"max_loras": 1}, "env": env}],
            "specialists": [{"name": "a", "version": "1", "path": "/adapters/a", "rank": 16}],
            "runtime": {"engine": "vllm"},
        }
    )


def expected_env() -> dict[str, str]:
    return {key: seen for key, (_, seen) in VALUES.items()}


def written_env() -> dict[str, str]:
    return {key: written for key, (written, _) in VALUES.items()}


# --- Kubernetes ---------------------------------------------------------------------------------


def kubelet_expand(text: str, defined: dict[str, str]) -> str:
    """Kubernetes' expansion of env values and command words: `$$` → `$`, `$(NAME)` → NAME's value
    when NAME is defined (else left as written), any other `$` kept."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                close = text.find(")", i + 2)
                if close != -1:
                    name = text[i + 2 : close]
                    out.append(defined[name] if name in defined else text[i : close + 1])
                    i = close + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def container_env(container: dict, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """What the process sees: entries in order, each expanded with the ones before it."""
    seen: dict[str, str] = {}
    for entry in container.get("env") or []:
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            seen[entry["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            seen[entry["name"]] = kubelet_expand(entry["value"], seen)
    return seen


def manifests(spec: models.FleetSpec) -> dict[tuple[str, str], dict]:
    return k8s_changes.objects(k8s.compile_manifests(spec, slots.sequential(spec)))


def test_kubernetes_containers_see_env_values_exactly_as_written():
    spec = spec_with(written_env())
    files = manifests(spec)
    container = files[("Deployment", "vllm-main")]["spec"]["template"]["spec"]["containers"][0]
    seen = container_env(container, {k8s.secret_name(spec): SECRETS})
    assert {k: seen[k] for k in VALUES} == expected_env()


def test_kubernetes_command_words_reach_the_process_as_written():
    words = ["--chat-template", "$$ $( $(VAR) ${VAR} $HOME"]
    spec = spec_with({}).model_copy(deep=True)
    spec = spec.model_copy(update={"servers": [spec.servers[0].model_copy(update={"extra_args": words})]})
    container = manifests(spec)[("Deployment", "vllm-main")]["spec"]["template"]["spec"]["containers"][0]
    defined = container_env(container, {k8s.secret_name(spec): SECRETS})
    assert [kubelet_expand(w, defined) for w in container["command"][-2:]] == [
        "--chat-template",
        "$$ $( $(VAR) s3cret $HOME",
    ]


# --- compose ------------------------------------------------------------------------------------


def compose_interpolate(text: str, environment: dict[str, str]) -> str:
    """Compose's interpolation: `$$` → `$`, `${NAME}` and `$NAME` → the operator's variable."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return environment.get(match.group(1) or match.group(2), "")

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", one, text)


def test_compose_containers_see_env_values_exactly_as_written():
    spec = spec_with(written_env())
    document = yaml.safe_load(compose.compile_project(spec, slots.sequential(spec))[compose.COMPOSE_FILE])
    environment = document["services"]["main-0"]["environment"]
    seen = {k: compose_interpolate(v, SECRETS) for k, v in environment.items()}
    assert {k: seen[k] for k in VALUES} == expected_env()


# --- the vllm target's shell line -----------------------------------------------------------------


def test_the_shell_line_gives_the_process_env_values_exactly_as_written():
    spec = spec_with(written_env())
    launch = vllm_args.replica_launch(spec, spec.servers[0], 0, host="127.0.0.1", port=8000)
    show = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]
    line = vllm_args.to_shell(show, {k: v for k, v in launch.env.items() if k in VALUES})
    done = subprocess.run(
        ["bash", "-c", line],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "HOME": "/root", **SECRETS},
    )
    seen = json.loads(done.stdout)
    assert {k: seen[k] for k in VALUES} == expected_env()


# --- literal credentials ------------------------------------------------------------------------


def test_a_literal_admin_token_is_a_located_warning_with_the_reference_form_as_fix():
    fleet = loading.load_text(VALID + "runtime:\n  router: {admin_token: hunter2}\n")
    found = [d for d in checks.check(fleet) if d.code == "inline-secret"]
    assert [d.path for d in found] == ["runtime.router.admin_token"]
    assert found[0].severity.value == "warning" and found[0].location.line == 14
    assert "admin_token: ${FLEETSPEC_ADMIN_TOKEN}" in found[0].hint


def test_a_redis_url_with_a_literal_password_is_a_warning():
    fleet = loading.load_text(VALID + "runtime:\n  router: {redis_url: 'redis://:hunter2@redis:6379/0'}\n")
    assert [d.path for d in checks.check(fleet) if d.code == "inline-secret"] == ["runtime.router.redis_url"]
    fleet = loading.load_text(
        VALID + "runtime:\n  router: {redis_url: 'redis://:${REDIS_PASSWORD}@redis:6379/0'}\n"
    )
    assert not [d for d in checks.check(fleet) if d.code == "inline-secret"]


@pytest.mark.parametrize("field", ["api_key", "engine_api_key"])
def test_literal_api_keys_are_refused_with_the_reference_form(field):
    where = "router: {api_key: sk-live-123}" if field == "api_key" else "engine_api_key: sk-live-123"
    with pytest.raises(Exception) as raised:
        loading.load_text(VALID + f"runtime:\n  {where}\n")
    diagnostic = raised.value.diagnostics[0]
    assert "not the key itself" in diagnostic.message and "${" in diagnostic.hint


def test_on_kubernetes_literal_credentials_go_into_a_secret_never_a_configmap():
    spec = models.FleetSpec.model_validate(
        {
            **spec_with({"HF_TOKEN": "hf_literal", "PLAIN": "x"}).model_dump(exclude_defaults=True),
            "runtime": {
                "engine": "vllm",
                "router": {"admin_token": "hunter2", "redis_url": "redis://:pw@redis:6379"},
            },
        }
    )
    texts = k8s.compile_manifests(spec, slots.sequential(spec))
    secret_file = k8s.SECRET_FILE  # alone in its file: the only one that holds a credential
    secret = yaml.safe_load(texts[secret_file])
    assert secret["metadata"]["name"] == k8s.inline_secret_name(spec)
    assert secret["kind"] == "Secret" and secret["stringData"] == {
        "admin-token": "hunter2",
        "redis-url": "redis://:pw@redis:6379",
        "main.HF_TOKEN": "hf_literal",
    }
    for name, text in texts.items():
        if name != secret_file:
            assert "hunter2" not in text and "hf_literal" not in text and ":pw@" not in text, name
    found = k8s_changes.objects(texts)
    config = json.loads(found[("ConfigMap", k8s.name(spec.name, "router"))]["data"]["router.json"])
    assert config["fleet"]["runtime"]["router"]["admin_token"] == "${FLEETSPEC_ADMIN_TOKEN}"
    router = found[("Deployment", "router")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in router["env"]}
    assert env["FLEETSPEC_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": k8s.inline_secret_name(spec),
        "key": "admin-token",
    }
    engine = found[("Deployment", "vllm-main")]["spec"]["template"]["spec"]["containers"][0]
    seen = container_env(engine, {k8s.inline_secret_name(spec): secret["stringData"]})
    assert seen["HF_TOKEN"] == "hf_literal" and seen["PLAIN"] == "x"
    assert secret_file in yaml.safe_load(texts[k8s.KUSTOMIZATION])["resources"]


def test_references_read_the_secret_the_user_names():
    spec = models.FleetSpec.model_validate(
        {
            **spec_with({"HF_TOKEN": "${HF_TOKEN}"}).model_dump(exclude_defaults=True),
            "runtime": {"engine": "vllm", "kubernetes": {"secret": "team-llm-keys"}},
        }
    )
    texts = k8s.compile_manifests(spec, slots.sequential(spec))
    engine = k8s_changes.objects(texts)[("Deployment", "vllm-main")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in engine["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "team-llm-keys", "key": "HF_TOKEN"}
    assert k8s.SECRET_FILE not in texts  # nothing literal: fleetspec writes no Secret
    assert not any(kind == "Secret" for kind, _ in k8s_changes.objects(texts))
