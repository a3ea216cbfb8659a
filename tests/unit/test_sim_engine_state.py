"""The sim's LoRA bookkeeping: vLLM 0.33's registry, CPU LRU and GPU slots, without HTTP."""

from __future__ import annotations

import threading
import time

import pytest

from fleetspec.sim import args as sim_args
from fleetspec.sim import engine

MODEL = "fleetspec/tiny-test-llama"


class FakeCheck:
    """Stands in for reading adapter files: records every read, refuses the paths it is told to."""

    def __init__(self, refusals: dict[str, tuple[int, str, str]] | None = None):
        self.refusals = refusals or {}
        self.reads: list[str] = []

    def __call__(self, name: str, path: str):
        self.reads.append(name)
        return self.refusals.get(path)


def make(max_loras=2, max_cpu_loras=None, enable_lora=True, served=("main",), check=None) -> engine.Engine:
    argv = ["serve", MODEL, "--served-model-name", *served, "--max-loras", str(max_loras)]
    argv += ["--enable-lora"] if enable_lora else []
    argv += ["--max-cpu-loras", str(max_cpu_loras)] if max_cpu_loras else []
    return engine.Engine(sim_args.parse(argv, {}), check or FakeCheck())


def resident(eng: engine.Engine) -> tuple[list[str], list[str]]:
    snap = eng.snapshot()
    return [r.name for r in snap.cpu], [r.name for r in snap.gpu]


def test_load_lists_an_adapter_card_with_path_and_parent():
    eng = make()
    reply = eng.load_adapter("sql", "/adapters/sql/1")
    assert reply == engine.Reply(200, "Success: LoRA adapter 'sql' added successfully.")
    cards = eng.model_cards(max_model_len=2048, created=7)
    assert [(c["id"], c["root"], c["parent"], c["max_model_len"]) for c in cards] == [
        ("main", MODEL, None, 2048),
        ("sql", "/adapters/sql/1", "main", None),
    ]
    assert cards[1]["object"] == "model" and cards[1]["owned_by"] == "vllm"


def test_loading_a_loaded_name_again_is_a_400_with_vllms_words():
    eng = make()
    eng.load_adapter("sql", "/adapters/sql/1")
    reply = eng.load_adapter("sql", "/adapters/sql/2")
    assert reply.status == 400
    assert reply.body == {"error": {
        "message": "The lora adapter 'sql' has already been loaded. If you want to load the adapter in place, "
                   "set 'load_inplace' to True.",
        "type": "InvalidUserInput", "param": None, "code": 400,
    }}


def test_adapter_named_like_a_base_model_conflicts():
    reply = make(served=("main", "alias")).load_adapter("alias", "/adapters/x")
    assert (reply.status, reply.body["error"]["message"]) == (
        400, "The lora adapter 'alias' conflicts with a served base model.")


@pytest.mark.parametrize("name, path", [("", "/a"), ("x", "")])
def test_name_and_path_are_both_required(name, path):
    reply = make().load_adapter(name, path)
    assert (reply.status, reply.body["error"]["message"]) == (400, "Both 'lora_name' and 'lora_path' must be provided.")


def test_engine_refusal_is_passed_through_and_nothing_is_registered():
    refusal = (500, "InternalServerError", "Call to add_lora method failed: LoRA rank 64 is greater than max_lora_rank 16.")
    eng = make(check=FakeCheck({"/adapters/big": refusal}))
    reply = eng.load_adapter("big", "/adapters/big")
    assert reply.status == 500
    assert reply.body["error"] == {"message": refusal[2], "type": "InternalServerError", "param": None, "code": 500}
    assert [c["id"] for c in eng.model_cards(2048, 0)] == ["main"]
    assert resident(eng) == ([], [])


def test_without_enable_lora_the_engine_refuses_every_load():
    reply = make(enable_lora=False).load_adapter("sql", "/adapters/sql")
    assert (reply.status, reply.body["error"]["message"]) == (
        500, "Call to add_lora method failed: LoRA is not enabled. Use --enable-lora to enable LoRA.")


def test_unload_only_forgets_the_name_like_vllm_033():
    eng = make()
    eng.load_adapter("sql", "/adapters/sql")
    assert eng.unload_adapter("sql") == engine.Reply(200, "Success: LoRA adapter 'sql' removed successfully.")
    assert [c["id"] for c in eng.model_cards(2048, 0)] == ["main"]
    assert resident(eng) == (["sql"], ["sql"])  # CPU cache and GPU slot keep it until evicted


def test_unload_of_unknown_name_is_404_and_empty_name_400():
    eng = make()
    reply = eng.unload_adapter("nope")
    assert (reply.status, reply.body["error"]["message"], reply.body["error"]["type"]) == (
        404, "The lora adapter 'nope' cannot be found.", "NotFoundError")
    assert eng.unload_adapter("").status == 400


def test_reload_after_unload_takes_a_new_id_so_two_copies_are_cached():
    eng = make(max_loras=2, max_cpu_loras=4)
    eng.load_adapter("sql", "/adapters/sql")
    eng.unload_adapter("sql")
    eng.load_adapter("sql", "/adapters/sql")
    assert [r.int_id for r in eng.snapshot().cpu] == [1, 2]


def test_cpu_cache_evicts_the_least_recently_used_and_gpu_slots_follow_requests():
    check = FakeCheck()
    eng = make(max_loras=1, max_cpu_loras=2, check=check)
    for name in ("a", "b", "c"):
        eng.load_adapter(name, f"/adapters/{name}")
    assert resident(eng) == (["b", "c"], ["c"])
    # a request for the evicted adapter re-reads it from disk and takes the GPU slot
    lora = eng.resolve("a")
    assert eng.begin_request(lora) is None
    eng.end_request(lora, "stop", 3, 5)
    assert check.reads == ["a", "b", "c", "a"]
    assert resident(eng) == (["c", "a"], ["a"])
    # all three names stay listed
    assert [c["id"] for c in eng.model_cards(2048, 0)] == ["main", "a", "b", "c"]


def test_request_for_a_resident_adapter_does_not_reread_it():
    check = FakeCheck()
    eng = make(max_loras=2, max_cpu_loras=2, check=check)
    eng.load_adapter("a", "/adapters/a")
    eng.load_adapter("b", "/adapters/b")
    lora = eng.resolve("a")
    eng.begin_request(lora)
    eng.end_request(lora, "length", 1, 16)
    assert check.reads == ["a", "b"]
    assert resident(eng) == (["b", "a"], ["b", "a"])
    stats = eng.snapshot().stats
    assert (stats.finished["length"], stats.prompt_tokens, stats.generation_tokens) == (1, 1, 16)
    assert stats.lora_requests == {"a": 1}


def test_evicted_adapter_whose_files_vanished_fails_its_request():
    check = FakeCheck()
    eng = make(max_loras=1, max_cpu_loras=1, check=check)
    eng.load_adapter("a", "/adapters/a")
    eng.load_adapter("b", "/adapters/b")
    check.refusals["/adapters/a"] = (404, "NotFoundError", "Loading lora a failed: No adapter found for /adapters/a")
    reply = eng.begin_request(eng.resolve("a"))
    assert reply is not None and reply.status == 500
    assert reply.body["error"]["message"] == "Loading lora a failed: No adapter found for /adapters/a"


def test_resolve_names():
    eng = make(served=("main", "alias"))
    eng.load_adapter("sql", "/adapters/sql")
    assert eng.resolve(None) is None and eng.resolve("alias") is None
    assert eng.resolve("sql").path == "/adapters/sql"
    missing = eng.resolve("nope")
    assert missing == engine.Reply(404, {"error": {
        "message": "The model `nope` does not exist. Valid aliases: main, alias.", "type": "NotFoundError",
        "param": "model", "code": 404}})


def test_static_base_model_name_is_kept_only_when_it_is_served():
    eng = make(served=("main", "alias"))
    eng.load_adapter("a", "/adapters/a", base_model_name="alias")
    eng.load_adapter("b", "/adapters/b", base_model_name="other")
    parents = {c["id"]: c["parent"] for c in eng.model_cards(2048, 0)}
    assert parents == {"main": None, "alias": None, "a": "alias", "b": "main"}


def test_more_distinct_adapters_than_gpu_slots_wait_for_a_slot():
    eng = make(max_loras=1, max_cpu_loras=2)
    eng.load_adapter("a", "/adapters/a")
    eng.load_adapter("b", "/adapters/b")
    a, b = eng.resolve("a"), eng.resolve("b")
    assert eng.begin_request(a) is None
    started = threading.Event()
    worker = threading.Thread(target=lambda: (eng.begin_request(b), started.set()))
    worker.start()
    deadline = time.monotonic() + 5
    while eng.snapshot().waiting != ["b"]:
        assert time.monotonic() < deadline, "request for b never started waiting"
        time.sleep(0.005)
    assert not started.is_set() and eng.snapshot().running == ["a"]
    eng.end_request(a, "stop", 1, 1)
    assert started.wait(5)
    worker.join(5)
    snap = eng.snapshot()
    assert (snap.running, snap.waiting, [r.name for r in snap.gpu]) == (["b"], [], ["b"])


def test_load_inplace_rereads_under_the_same_id():
    check = FakeCheck()
    eng = make(max_cpu_loras=2, check=check)
    eng.load_adapter("sql", "/adapters/sql/1")
    reply = eng.load_adapter("sql", "/adapters/sql/2", load_inplace=True)
    assert reply.status == 200
    assert check.reads == ["sql", "sql"]
    assert [(r.int_id, r.path) for r in eng.snapshot().cpu] == [(1, "/adapters/sql/2")]
    assert eng.model_cards(2048, 0)[1]["root"] == "/adapters/sql/2"
