"""What the sim knows about the model it pretends to serve, and how it judges adapters.

Real vLLM reads the model's config.json; the sim asks fleetspec's catalog instead (or a local
model directory's config.json, through the catalog). For a model the catalog does not know, the
sim serves anyway and skips the checks that need shapes: better a permissive sim than one that
refuses fleets real vLLM would run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping

from fleetspec.sim import args as sim_args
from fleetspec.sim import engine

log = logging.getLogger("fleetspec.sim")


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    architecture: object | None  # fleetspec.spec.models.Architecture when the catalog knows the model
    embedding_lora: bool  # vLLM gives embed_tokens/lm_head LoRA slots for this model class
    max_model_len: int


def load(args: sim_args.ServeArgs, env: Mapping[str, str]) -> ModelFacts:
    """The served model's facts; raises ConfigError for what vLLM refuses at engine start."""
    facts = _catalog_facts(args.model)
    if facts is None:
        log.warning("The fleetspec sim does not know %s; adapter shape checks are skipped.", args.model)
        return ModelFacts(None, False, _max_model_len(args, None, env))
    _check_parallelism(args, facts.architecture)
    return ModelFacts(facts.architecture, facts.embedding_lora,
                      _max_model_len(args, facts.architecture.max_position_embeddings, env))


def _catalog_facts(model: str):
    """fleetspec's catalog entry for `model`, or the config.json of a local model directory."""
    from fleetspec.catalog import models as catalog
    from fleetspec.spec import models as spec_models

    inline = _local_config(model, spec_models.Architecture)
    try:
        return catalog.resolve(spec_models.BaseModelSpec(id=model, architecture=inline))
    except (ValueError, KeyError, OSError) as exc:  # a config.json the spec model cannot hold
        log.warning("Could not read the facts of %s (%s).", model, exc)
        return None


def _local_config(model: str, architecture_type):
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        fields = {k: v for k, v in config.items() if k in architecture_type.model_fields}
        return architecture_type.model_validate(fields)
    except ValueError as exc:
        log.warning("Ignoring %s: %s", path, exc)
        return None


def _check_parallelism(args: sim_args.ServeArgs, architecture) -> None:
    heads = architecture.num_attention_heads
    if heads % args.tensor_parallel_size:
        raise sim_args.ConfigError(
            f"Total number of attention heads ({heads}) must be divisible by tensor parallel size "
            f"({args.tensor_parallel_size})."
        )


def _max_model_len(args: sim_args.ServeArgs, derived: int | None, env: Mapping[str, str]) -> int:
    requested = args.max_model_len
    if requested is None or requested == -1:
        return derived or sim_args.FALLBACK_MAX_MODEL_LEN
    allow_long = env.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0").strip().lower() in ("1", "true")
    if derived is not None and requested > derived and not allow_long:
        raise sim_args.ConfigError(
            f"User-specified max_model_len ({requested}) is greater than the derived max_model_len "
            f"(max_position_embeddings={derived} or model_max_length=None in model's config.json). To allow "
            "overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. "
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme caution."
        )
    return requested


def adapter_check(args: sim_args.ServeArgs, facts: ModelFacts) -> engine.AdapterCheck:
    """vLLM's verdict on loading an adapter: None, or (status, error type, message).

    The verdicts come from `fleetspec.adapters.engine`, which reads the files the way vLLM does;
    the sim only adds what depends on the process (the path as the client gave it, the world size).
    """
    from fleetspec.adapters import engine as adapter_engine
    from fleetspec.adapters import inspect as adapter_inspect

    world_size = args.tensor_parallel_size * args.pipeline_parallel_size

    def check(lora_name: str, lora_path: str) -> tuple[int, str, str] | None:
        directory = absolute_adapter_path(lora_path)
        if not os.path.isfile(os.path.join(directory, adapter_inspect.CONFIG_FILE)):
            return 404, "NotFoundError", adapter_engine.not_found_message(lora_name, lora_path)
        try:
            info = adapter_inspect.inspect(directory)
        except OSError as exc:
            return 500, "InternalServerError", f"Call to add_lora method failed: {exc}"
        if facts.architecture is None:
            return _shapeless_rejection(adapter_engine, info, args.max_lora_rank, directory)
        rejection = adapter_engine.engine_rejection(
            info, args.max_lora_rank, facts.architecture, embedding_lora=facts.embedding_lora, world_size=world_size,
            lora_name=lora_name, lora_path=directory,
        )
        return (rejection.status, rejection.err_type, rejection.message) if rejection else None

    return check


def _shapeless_rejection(adapter_engine, info, max_lora_rank: int, directory: str) -> tuple[int, str, str] | None:
    """For a model the catalog does not know: the checks that need no base-model shapes."""
    if info.config_problem is not None:
        problem = info.config_problem.detail or info.config_problem.message
    else:
        raw = info.config.raw
        problem = (
            adapter_engine.helper_error(raw)
            or " ".join(adapter_engine.legality_errors(raw, max_lora_rank))
            or (f"{directory} doesn't contain tensors" if info.weights_format is None else None)
            or (info.weights_problem.detail if info.weights_problem is not None else None)
        )
    return (500, "InternalServerError", f"Call to add_lora method failed: {problem}") if problem else None


def absolute_adapter_path(path: str) -> str:
    """vLLM's get_adapter_absolute_path, minus the Hugging Face download the sim cannot do."""
    if path.startswith("~"):
        return os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.abspath(path)
