"""JSON Schema for every declarative kind, for editors and for CI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .clusters import ClustersConfig
from .models import EvalSuite, PromotionPolicy, RoutingTable, Scenario, Specialist

_DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: kind name -> model; "Scenario" is one JSONL row, "Clusters" is config/clusters.json.
SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "Specialist": Specialist,
    "EvalSuite": EvalSuite,
    "Scenario": Scenario,
    "PromotionPolicy": PromotionPolicy,
    "RoutingTable": RoutingTable,
    "Clusters": ClustersConfig,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """Kind name -> JSON Schema (draft 2020-12) of what a file of that kind may contain."""
    schemas: dict[str, dict[str, Any]] = {}
    for kind, model in SCHEMA_MODELS.items():
        # mode="validation" and by_alias: the schema describes the files as written
        # (apiVersion, schema, $schema), not the Python attribute names.
        body = model.model_json_schema(by_alias=True, mode="validation")
        schemas[kind] = {
            "$schema": _DIALECT,
            "$id": f"https://modelsmith.dev/schemas/v1/{kind}.schema.json",
            **body,
            "title": kind,
        }
    return schemas


def write_schemas(out_dir: Path) -> list[Path]:
    """Write ``<kind>.schema.json`` for every kind into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, schema in json_schemas().items():
        path = out_dir / f"{kind}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
