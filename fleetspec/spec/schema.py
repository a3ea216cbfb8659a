"""The JSON Schema of fleet.yaml, generated from the spec models (editors use it to complete fields)."""

from __future__ import annotations

import json

from fleetspec.spec import models

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def fleet_schema() -> dict:
    schema = models.FleetSpec.model_json_schema(mode="validation")
    return {"$schema": SCHEMA_DIALECT, **schema}


def fleet_schema_text() -> str:
    """Canonical text of the checked-in schemas/fleet.schema.json."""
    return json.dumps(fleet_schema(), indent=2, ensure_ascii=False) + "\n"
