"""Output compatibility: JSON Schema validation of each answer (draft 2020-12 unless the schema says
otherwise), per route where the scenario gives route schemas."""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any, Mapping

import jsonschema

from .errors import ScenarioError

__all__ = ["OutputValidator", "load_schema"]

MAX_ERRORS = 3


def load_schema(path: Path) -> dict[str, Any]:
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"{path}: output schema not found") from None
    except ValueError as exc:
        raise ScenarioError(f"{path}: output schema is not valid JSON: {exc}") from None
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ScenarioError(f"{path}: not a valid JSON Schema: {exc.message}") from None
    return schema


class OutputValidator:
    def __init__(self, default: Path | None, per_route: Mapping[str, Path] | None = None) -> None:
        self._default = self._compile(default) if default else None
        self._routes = {route: self._compile(p) for route, p in (per_route or {}).items()}

    @staticmethod
    def _compile(path: Path) -> jsonschema.protocols.Validator:
        schema = load_schema(path)
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        return cls(schema)

    @property
    def active(self) -> bool:
        return self._default is not None or bool(self._routes)

    def _for_route(self, route: str) -> jsonschema.protocols.Validator | None:
        if route in self._routes:
            return self._routes[route]
        for pattern, validator in self._routes.items():
            if fnmatch.fnmatchcase(route, pattern):
                return validator
        return self._default

    def validate(self, route: str, doc: Any) -> tuple[bool | None, str | None]:
        """(valid, first errors) or (None, None) where no schema applies to the route.

        Route schemas are keyed by route template (`/v1/accounts/{id}/score`) or a glob over it
        (`/v1/accounts/*/score`); `output.schema` applies to every other route."""
        validator = self._for_route(route)
        if validator is None:
            return None, None
        errors = []
        for err in validator.iter_errors(doc):
            where = "/".join(str(p) for p in err.absolute_path) or "(root)"
            errors.append(f"{where}: {err.message[:160]}")
            if len(errors) >= MAX_ERRORS:
                break
        return (not errors), ("; ".join(errors) or None)
