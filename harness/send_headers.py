"""The headers a scenario adds to (or removes from) what it sends: `replay.headers`, then the target's own
`headers`, with `${VAR}` taken from the environment at send time, so test credentials are never stored.
A value of null removes the captured header. Shared by the replay and by live shadow's candidate copies."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

from .errors import ScenarioError
from .scenario import Scenario

__all__ = ["expand_env", "header_overrides", "credential_values"]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: str, environ: Mapping[str, str] | None = None) -> str:
    """`${VAR}` replaced from the environment; KeyError(VAR) where it is not set."""
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise KeyError(m.group(1))
        return env[m.group(1)]

    return _ENV.sub(sub, value)


def header_overrides(scenario: Scenario) -> dict[str, dict[str, str | None]]:
    """Per version: replay.headers, then the target's headers over them, expanded now (one error before
    anything is sent, naming the variable, rather than a failure per request)."""
    def expand(headers: Mapping[str, str | None], where: str) -> dict[str, str | None]:
        try:
            return {k: expand_env(v) if v is not None else None for k, v in headers.items()}
        except KeyError as exc:
            raise ScenarioError(f"{scenario.source}: {where} uses ${{{exc.args[0]}}} but that environment "
                                "variable is not set") from None

    common = expand(scenario.replay.headers, "replay.headers")
    return {v: {**common, **expand(scenario.target_for(v).headers, f"targets.{v}.headers")}
            for v in scenario.versions}


def credential_values(overrides: Mapping[str, Mapping[str, str | None]]) -> tuple[str, ...]:
    """The values the header overrides send (the targets' test credentials among them): what an answer that
    repeats one must not carry into a leg."""
    return tuple(v for group in overrides.values() for v in group.values() if v)
