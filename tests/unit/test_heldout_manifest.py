"""The held-out startup-log set (tests/data/heldout/manifest.yaml) is well formed and disjoint.

Nothing is fitted on it and no accuracy is asserted here (issue 18): these checks only keep the
list honest — every log exists, every record cites a public URL and names a catalog GPU, no id or
source is shared with the calibration set, and the scorer runs over all of it.
"""

from __future__ import annotations

import pathlib

import yaml

from fleetspec.planner import log_score

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"
MANIFEST = DATA / "heldout" / "manifest.yaml"
CATALOG_GPUS = pathlib.Path(__file__).resolve().parents[2] / "fleetspec" / "catalog" / "data" / "gpus.yaml"


def _records() -> list[dict]:
    return yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))["records"]


def _calibration() -> list[dict]:
    return yaml.safe_load((DATA / "calibration.yaml").read_text(encoding="utf-8"))["cases"]


def test_every_record_has_a_log_a_source_url_and_a_catalog_gpu():
    gpus = set(yaml.safe_load(CATALOG_GPUS.read_text(encoding="utf-8"))["gpus"])
    records = _records()
    assert records
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert (MANIFEST.parent / r["log"]).is_file(), r["id"]
        assert str(r["source"]).startswith("https://"), r["id"]
        assert r["gpu"] in gpus, r["id"]


def test_no_id_or_source_overlaps_the_calibration_set():
    calibration = _calibration()
    ids = {c["id"] for c in calibration}
    sources = {c["source"].rstrip("/") for c in calibration}
    for r in _records():
        assert r["id"] not in ids
        assert r["source"].rstrip("/") not in sources, r["id"]


def test_the_scorer_runs_over_every_record():
    records = _records()
    results = [
        log_score.score(r, (MANIFEST.parent / r["log"]).read_text(encoding="utf-8", errors="replace"))
        for r in records
    ]
    assert [s.id for s in results] == [r["id"] for r in records]
    totals = log_score.summary(results)
    assert totals["records"] == len(records)
