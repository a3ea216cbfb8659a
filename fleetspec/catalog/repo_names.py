"""What a re-published checkpoint's name says: which model it re-uploads, and how it is quantized.

Most checkpoints in users' logs are not the original repos but re-uploads of them: mirrors
(`unsloth/Llama-3.2-3B-Instruct`, `NousResearch/Meta-Llama-3-8B-Instruct`, a local directory
named after the repo) and quantized repacks that append the method to the original name
(`Qwen/Qwen1.5-7B-Chat-GPTQ-Int4`, `TheBloke/Mistral-7B-Instruct-v0.2-AWQ`,
`hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4`, `unsloth/llama-3-8b-Instruct-bnb-4bit`,
`RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8-dynamic`). Those tools (AutoAWQ, AutoGPTQ, Unsloth,
llm-compressor) keep the base model's shapes and change only the linear layers' storage, which
vLLM reads from the checkpoint's quantization_config without a `--quantization` flag.

A name is only a claim: the plan says it planned with another entry's shapes (finding
`model-matched-by-name`), and an inline `base_model.architecture` always wins. Suffixes whose
storage fleetspec does not model (8-bit GPTQ, w4a16, GGUF, EXL2) match nothing rather than
being planned as something else.
"""

from __future__ import annotations

import dataclasses
import re

_SEP = r"[-_.]"


@dataclasses.dataclass(frozen=True)
class NameReading:
    name: str  # the repo's name without its quantization suffix, lower case, no organisation
    method: str | None  # the vLLM quantization method the suffix names; None: the base's own
    group_size: int | None
    dtype: str | None  # what `--dtype auto` serves such a checkpoint in; None: the base's
    suffix: str  # the part of the name that was read as the quantization, as written

    @property
    def says(self) -> str:
        """The reading as a phrase for a sentence."""
        if self.method is None:
            return "a re-upload of it"
        group = f", groups of {self.group_size}" if self.group_size else ""
        return f"a re-upload quantized with {self.method} (`{self.suffix}`{group})"


# (pattern on the name's end, method, default group size, dtype). AWQ and GPTQ repacks store fp16
# scales and are served in float16 (AWQConfig.get_supported_act_dtypes is [half]; AutoGPTQ writes
# torch_dtype float16); 128 is both tools' default group size, a "-32g" style suffix overrides it.
_QUANTIZED = (
    (re.compile(rf"(?:{_SEP}unsloth)?{_SEP}bnb{_SEP}?(?:4bit|nf4)$"), "bitsandbytes", None, None),
    (re.compile(rf"{_SEP}(?:awq(?:{_SEP}?(?:int4|4bit))?|(?:int4|4bit){_SEP}awq)(?:{_SEP}(\d+)g)?$"),
     "awq", 128, "float16"),
    (re.compile(rf"{_SEP}(?:gptq(?:{_SEP}?(?:int4|4bit))?|(?:int4|4bit){_SEP}gptq)(?:{_SEP}(\d+)g)?$"),
     "gptq", 128, "float16"),
    (re.compile(rf"{_SEP}fp8(?:{_SEP}(?:dynamic|static|block))?$"), "fp8", None, None),
    (re.compile(rf"(?:{_SEP}quantized)?{_SEP}w8a8$"), "compressed-tensors", None, None),
)
# Storage the planner does not model: matching these to the base would plan the wrong bytes.
_UNMODELLED = re.compile(
    rf"gptq{_SEP}?int8|int8{_SEP}gptq|8bit{_SEP}gptq|gptq{_SEP}?8bit|w4a16|w8a16|gguf|exl2|"
    rf"\d(?:\.\d+)?bpw|hqq|aqlm|autoround",
)
# A bare bit width names no method: which storage it is cannot be read from the name.
_BARE_WIDTH = re.compile(rf"{_SEP}(?:int[2348]|[2348]{_SEP}?bits?)$")


def read(model_id: str) -> NameReading | None:
    """The base name and quantization a repo name claims; None for a name whose storage is not
    modelled. A name without a known suffix reads as a plain re-upload (method None)."""
    name = model_id.strip().rstrip("/").replace("\\", "/").split("/")[-1].lower()
    if not name or _UNMODELLED.search(name):
        return None
    for pattern, method, group, dtype in _QUANTIZED:
        match = pattern.search(name)
        if match and match.start() > 0:
            digits = match.group(1) if match.groups() else None
            group_size = int(digits) if digits and 16 <= int(digits) <= 1024 else group
            return NameReading(name[:match.start()], method, group_size, dtype, match.group(0).lstrip("-_."))
    if _BARE_WIDTH.search(name):
        return None
    return NameReading(name, None, None, None, "")
