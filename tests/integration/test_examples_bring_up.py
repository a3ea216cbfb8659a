"""Every shipped example comes up on this machine without editing its file, as the README says:

    fleetspec adapters stand-ins FILE DIR
    fleetspec apply FILE --runtime local --engine sim --adapters-in DIR --ports-from PORT --yes

then one request per example goes through its router to a specialist, and `destroy` takes it all
down. Each example runs from an unchanged copy in a temporary directory (its state and processes
stay out of the checkout); `.cache` is linked beside it for the one example whose base model is a
local directory (cpu-real-vllm, written by scripts/make-tiny-model).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import urllib.request

import netkit
import pytest
import require

from fleetspec import drivers
from fleetspec.cli import app
from fleetspec.spec import loading

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
OVERRIDE = ["--runtime", "local", "--engine", "sim"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> pathlib.Path:
    """examples/ copied byte for byte, with the checkout's .cache beside it (relative paths hold)."""
    work = tmp_path_factory.mktemp("examples-up")
    shutil.copytree(ROOT / "examples", work / "examples")
    if (ROOT / ".cache").is_dir():
        (work / ".cache").symlink_to(ROOT / ".cache", target_is_directory=True)
    return work


def chat(port: int, model: str) -> tuple[int, dict, dict]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the local test router
        return response.status, dict(response.headers), json.loads(response.read())


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_comes_up_with_stand_ins_and_answers_through_its_router(example, workspace, capsys, monkeypatch):
    monkeypatch.setenv("FLEETSPEC_DEBUG", "1")  # a bug shows its traceback, not a sentence
    monkeypatch.setenv("FLEETSPEC_ADMIN_TOKEN", "test-admin-token")  # seed 000 ships its admin API on
    file = workspace / "examples" / example.name
    assert file.read_bytes() == example.read_bytes()
    if "../.cache/vllm-cpu/tiny-llama" in file.read_text(encoding="utf-8") and \
            not (ROOT / ".cache" / "vllm-cpu" / "tiny-llama" / "config.json").is_file():
        require.unavailable("VLLM", "the tiny local model is missing; run ./scripts/setup-vllm (it writes it)")
    spec = loading.load_path(file).spec
    stand_ins = workspace / "stand-ins" / example.stem
    port = netkit.free_port_range(1 + sum(s.replicas for s in spec.servers))
    flags = [*OVERRIDE, "--adapters-in", str(stand_ins), "--ports-from", str(port)]

    assert app.main(["adapters", "stand-ins", str(file), str(stand_ins)]) == 0
    try:
        assert app.main(["apply", str(file), *flags, "--yes"]) == 0, capsys.readouterr()
        assert app.main(["status", str(file), *flags]) == 0
        assert "In sync with the fleet file." in capsys.readouterr().out

        specialist = next(s for s in spec.specialists if s.preload)
        status, headers, answer = chat(port, specialist.name)
        assert status == 200
        text = answer["choices"][0]["message"]["content"]
        assert "adapter=none" not in text and f"adapter={specialist.name}" in text, text
    finally:
        app.main(["destroy", str(file), "--runtime", "local", "--yes"])
        driver = drivers.for_runtime("local", file, spec.name)
        left = driver.observe(spec.name)
        for process in left:  # what destroy could not reach: stop it, then fail
            driver.remove(process.id)
        assert [c.name for c in left] == [], "processes survived destroy"
