"""The checked-in JSON Schema is what the models generate, and it accepts every example."""

from __future__ import annotations

import json
import pathlib

import jsonschema
import yaml

from fleetspec.spec import schema

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLEETS = sorted(ROOT.glob("examples/*.yaml")) + [ROOT / "fleet.yaml"]


def test_checked_in_schema_is_up_to_date():
    checked_in = (ROOT / "schemas" / "fleet.schema.json").read_text(encoding="utf-8")
    assert checked_in == schema.fleet_schema_text(), "regenerate with: fleetspec schema -o schemas/fleet.schema.json"


def test_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(schema.fleet_schema())


def test_every_example_names_the_schema_and_conforms_to_it():
    validator = jsonschema.Draft202012Validator(schema.fleet_schema())
    fleets = [f for f in FLEETS if f.exists()]
    assert fleets, "no example fleets found"
    for fleet in fleets:
        text = fleet.read_text(encoding="utf-8")
        assert text.startswith("# yaml-language-server: $schema="), f"{fleet.name} lacks the schema comment"
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(text))]
        assert errors == [], f"{fleet.name}: {errors}"


def test_schema_rejects_unknown_keys_like_the_models():
    validator = jsonschema.Draft202012Validator(schema.fleet_schema())
    document = {"name": "x", "base_model": {"id": "a"}, "gpus": [{"type": "L4"}],
                "servers": [{"name": "m", "tensor_paralel_size": 2}]}
    assert not validator.is_valid(document)
    assert json.dumps(document)  # the document itself is plain JSON data
