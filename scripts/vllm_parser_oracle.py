"""vLLM's own `vllm serve` argument parser as an oracle for fleetspec's compiled argv.

Runs inside the oracle virtualenv made by `scripts/setup-oracles` (vllm 0.33.0 installed without its
GPU dependencies), never inside fleetspec's own environment. It builds the parser exactly as
`vllm/entrypoints/cli/main.py` does (a FlexibleArgumentParser with a `serve` subparser filled by
`make_arg_parser`), then answers one JSON request per stdin line with one JSON line on stdout:

    request:  {"argv": ["vllm", "serve", ...], "env": {...}, "config_yaml": "..." | null,
               "config_extra": [...flags after --config FILE...]}
    response: {"ok": true, "args": {...parsed namespace...}}  or  {"ok": false, "error": "..."}

Beyond argparse it runs the checks vLLM does before loading a model that need no GPU: the serve
argument validation, `LoRAConfig` (allowed ranks, max_cpu_loras >= max_loras), and the rule that
runtime LoRA updating needs exactly one API server (vllm/entrypoints/cli/serve.py). With
`config_yaml`, the YAML is written to a temporary `.yaml` file and `vllm serve --config FILE [extra]`
is parsed too; both namespaces must agree.

`--self-check` parses one known command and exits 0, so setup can prove the venv works.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
import tempfile

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def build_parser():
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    make_arg_parser(subparsers.add_parser("serve"))
    return parser


def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _parse(parser, argv: list[str]):
    """Parse like `vllm` does; argparse's exit becomes an exception carrying its stderr text."""
    if argv[:1] != ["vllm"]:
        raise ValueError("argv must start with 'vllm'")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv[1:])
    except SystemExit as exc:
        raise ValueError(stderr.getvalue().strip() or f"argparse exited with {exc.code}") from None
    if getattr(args, "model_tag", None) is not None:
        args.model = args.model_tag  # what ServeSubcommand.cmd does first
    return args


def _semantic_checks(args, env: dict[str, str]) -> None:
    from vllm.entrypoints.common.cli_args import validate_parsed_serve_args

    validate_parsed_serve_args(args)
    if args.enable_lora:
        from vllm.config.lora import LoRAConfig

        LoRAConfig(
            max_lora_rank=args.max_lora_rank,
            max_loras=args.max_loras,
            max_cpu_loras=args.max_cpu_loras,
            lora_dtype=args.lora_dtype,
            fully_sharded_loras=args.fully_sharded_loras,
        )
    runtime_lora = env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("1", "true")
    api_servers = args.api_server_count if args.api_server_count is not None else args.data_parallel_size
    if runtime_lora and api_servers > 1:
        raise ValueError("VLLM_ALLOW_RUNTIME_LORA_UPDATING cannot be used with api_server_count > 1")


def answer(parser, request: dict) -> dict:
    env = request.get("env") or {}
    try:
        args = _parse(parser, request["argv"])
        _semantic_checks(args, env)
        parsed = {k: _jsonable(v) for k, v in sorted(vars(args).items()) if not callable(v)}
        config_yaml = request.get("config_yaml")
        if config_yaml is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "vllm-config.yaml")
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(config_yaml)
                extra = list(request.get("config_extra") or [])
                from_config = _parse(parser, ["vllm", "serve", "--config", path, *extra])
            other = {k: _jsonable(v) for k, v in sorted(vars(from_config).items()) if not callable(v)}
            other.pop("config", None)
            mine = dict(parsed, config=None)
            mine.pop("config")
            # The config form names the model through `model:`, the CLI through the positional tag.
            mine.pop("model_tag", None)
            other.pop("model_tag", None)
            diff = sorted(k for k in set(mine) | set(other) if mine.get(k) != other.get(k))
            if diff:
                details = {k: [mine.get(k), other.get(k)] for k in diff}
                raise ValueError(f"--config form parses differently: {json.dumps(details)}")
    except Exception as exc:  # the oracle reports every refusal as data
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "args": parsed}


def main() -> int:
    parser = build_parser()
    if sys.argv[1:] == ["--self-check"]:
        result = answer(parser, {"argv": ["vllm", "serve", "m", "--enable-lora", "--max-lora-rank", "64"]})
        ok = result["ok"] and result["args"]["max_lora_rank"] == 64
        bad = answer(parser, {"argv": ["vllm", "serve", "m", "--enable-lora", "--max-lora-rank", "48"]})
        ok = ok and not bad["ok"]
        print("vllm parser oracle:", "ok" if ok else f"BROKEN {result} {bad}")
        return 0 if ok else 1
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(answer(parser, json.loads(line)), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
