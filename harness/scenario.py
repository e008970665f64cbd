"""Scenario: YAML -> validated, frozen configuration objects.

The scenario is parsed once, here, at the edge. Everything deeper receives these objects, never raw
dicts. Validation uses the published JSON Schema (harness/schemas/scenario.schema.json, usable by
editors), then the cross-field checks a schema cannot express. Errors name the file, the line and the key.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Literal, Mapping
from urllib.parse import urlsplit

import jsonschema
import yaml

from .errors import ScenarioError
from .gate_config import GateSpec, parse_gates
from .jsonpath import JsonPathError, compile_path

__all__ = [
    "Scenario", "TrafficConfig", "SegmentSpec", "TargetConfig", "ReplayConfig", "OutputConfig", "DetectorConfig",
    "AnalysisConfig", "CanaryConfig", "TraceOptions", "RESERVED_COLUMNS", "load_scenario", "scenario_from_dict",
    "scenario_json_schema",
]

Mode = Literal["paired", "aa", "baseline-only"]
# The fixed columns of the requests table: no segment may take one of their names.
RESERVED_COLUMNS = frozenset({"request_id", "seq", "loop", "source_line", "captured_at", "offset_s", "method", "path",
                              "route", "headers_json", "request_bytes", "warmup", "captured_request_id",
                              "production_status", "order_idx", "batch_size"})
SEGMENT_KINDS = ("path_template", "header", "query", "json_path", "json_array_length", "body_bytes", "prompt_tokens",
                 "present", "cross", "run_phase")
# run_phase: N equal stretches of the replay's time, "1 of N" ... (traffic.prepare sets them once the
# schedule is known): a candidate that degrades as it runs (a leak, a cache filling) is worse in the last one.
RUN_PHASES_MAX = 12


@dataclass(frozen=True, slots=True)
class SampleConfig:
    fraction: float
    seed: int = 0
    stratify_by: str | None = None
    min_per_stratum: int = 50


@dataclass(frozen=True, slots=True)
class RedactConfig:
    headers: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    json_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TraceOptions:
    """How an LLM trace's records become requests (``traffic.trace``; formats mooncake and openai_log)."""

    seed: int = 0  # synthetic prompts: the same trace and seed give the same bytes
    model: str = "model"
    path: str = "/v1/chat/completions"
    block_tokens: int = 512  # prompt tokens per hash id (Mooncake's KV block)
    stream: bool | None = None  # None: mooncake streams, openai_log keeps each request's own setting
    include_usage: bool = True  # stream_options.include_usage: token counts of every stream
    ignore_eos: bool = False  # vLLM/SGLang extension (min_tokens, ignore_eos): exactly output_length tokens
    max_prompt_tokens: int = 2_000_000  # beyond it a line is a bad record (no served context is larger)
    max_output_tokens: int = 1_000_000


@dataclass(frozen=True, slots=True)
class TrafficConfig:
    path: Path
    format: str | None = None
    speed: float = 1.0
    on_bad_record: Literal["skip", "fail"] = "skip"
    from_s: float | None = None
    to_s: float | None = None
    max_requests: int | None = None
    loops: int = 1
    max_gap_s: float | None = None  # idle gaps of the capture longer than this are shortened to it
    warmup_requests: int = 0
    sample: SampleConfig | None = None
    redact: RedactConfig = RedactConfig()
    trace: TraceOptions = TraceOptions()


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    name: str
    kind: str
    arg: str | tuple[str, ...] | None = None
    buckets: tuple[float, ...] | None = None
    max_values: int = 20


@dataclass(frozen=True, slots=True)
class TargetConfig:
    name: str
    url: str
    protocol: str = "json"
    pid: int | None = None
    pid_file: Path | None = None
    metrics_url: str | None = None
    headers: Mapping[str, str | None] = field(default_factory=dict)
    memory_metric: str = "process_resident_memory_bytes"
    oom_counter: str | None = None
    tls: Mapping[str, Any] | None = None  # https: ca_file, client_cert, client_key (absolute), server_name, verify


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    mode: Mode = "paired"
    timeout_s: float = 2.0
    connect_timeout_s: float = 1.0
    allow: tuple[str, ...] = ()
    max_in_flight: int = 1000
    lag_bound_ms: float = 5.0
    max_duration_s: float | None = None
    max_response_bytes: int = 10 * 1024 * 1024
    headers: Mapping[str, str | None] = field(default_factory=dict)
    aa_reference: Path | None = None
    stop_early: bool = False
    accept_encoding: str = "captured"  # captured | identity | a value sent with every request


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """output.detectors, flattened: plain strings only, so a replay plan carries it to workers as JSON."""
    content: str | None = None  # JSON path of the text patterns read; None: the protocol's own (openai message)
    abstention_pattern: str | None = None
    citation_pattern: str | None = None
    citation_field: str | None = None
    expected_model: str | None = None
    model_field: str = "$.model"
    fallback_header: str | None = None

    @property
    def fallback_configured(self) -> bool:
        return self.expected_model is not None or self.fallback_header is not None

    @property
    def active(self) -> bool:
        """Whether anything is detected: with no pattern, field or model named, an answer is left as read."""
        return (self.abstention_pattern is not None or self.citation_pattern is not None
                or self.citation_field is not None or self.fallback_configured)


@dataclass(frozen=True, slots=True)
class RowsConfig:
    """output.rows: how an answer's per-row predictions are read (harness.protocols.rows). Plain values
    only, so a replay plan carries it to workers as JSON. `enabled` None: the protocol's default (on for
    kserve_v1 and kserve_v2, off for json and openai)."""
    enabled: bool | None = None
    path: str | None = None  # JSON path of the row list; kserve_v2: the output tensor's name
    label: str | None = None  # key of the label in row objects; kserve_v2: the label tensor's name
    score: str | None = None  # key of the score in row objects; kserve_v2: the score tensor's name
    positive_class: int | None = None  # index of the class whose probability is the score
    threshold: float | None = None  # label = positive class when its score is at least this

    def active(self, protocol: str) -> bool:
        if self.enabled is not None:
            return self.enabled
        return protocol in ("kserve_v1", "kserve_v2", "kserve_v2_grpc")


@dataclass(frozen=True, slots=True)
class OutputConfig:
    schema: Path | None = None
    route_schemas: Mapping[str, Path] = field(default_factory=dict)
    prediction: str = "$.prediction"
    confidence: str = "$.confidence"
    ignore_paths: tuple[str, ...] = ()
    key_order_paths: tuple[str, ...] = ()
    detectors: DetectorConfig = DetectorConfig()
    rows: RowsConfig = RowsConfig()


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    alpha: float = 0.05
    bootstrap_resamples: int = 2000
    seed: int = 0


@dataclass(frozen=True, slots=True)
class CanaryConfig:
    steps_percent: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 100.0)
    power: float = 0.8
    production_rps: float | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    source: Path | None
    traffic: TrafficConfig
    segments: tuple[SegmentSpec, ...]
    targets: Mapping[str, TargetConfig]
    replay: ReplayConfig
    output: OutputConfig
    gates: tuple[GateSpec, ...]
    analysis: AnalysisConfig
    canary: CanaryConfig
    description: str = ""
    owner: str | None = None
    moves_money: bool = False
    customer_trust: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def versions(self) -> tuple[str, ...]:
        return ("baseline",) if self.replay.mode == "baseline-only" else ("baseline", "candidate")

    def target_for(self, version: str) -> TargetConfig:
        # In A/A mode the "candidate" leg goes to the baseline again: same requests, same server.
        if version == "candidate" and self.replay.mode == "aa":
            return replace(self.targets["baseline"], name="candidate")
        return self.targets[version]

    def self_comparison(self) -> str | None:
        """A note when a paired run's two targets are one and the same (url, protocol, headers, TLS): the run
        compares a server with itself, most often a copied line not edited."""
        if self.replay.mode != "paired" or "candidate" not in self.targets:
            return None
        b, c = self.targets["baseline"], self.targets["candidate"]
        if replace(c, name=b.name, url=_server_of(c.url)) != replace(b, url=_server_of(b.url)):
            return None
        return (f"targets.baseline and targets.candidate are the same target ({b.url}): this paired run compares a "
                f"server with itself (replay.mode: aa says so, and records the noise floor)")

    def stored_config(self) -> dict[str, Any]:
        """The scenario as a run stores it: paths made absolute, so that the run folder can be judged
        again from anywhere, and command-line overrides applied."""
        import copy

        raw = copy.deepcopy(dict(self.raw))
        raw["name"] = self.name
        raw["traffic"] = {**raw.get("traffic", {}), "path": str(self.traffic.path.resolve()), "speed": self.traffic.speed}
        if self.traffic.max_requests is not None:
            raw["traffic"]["max_requests"] = self.traffic.max_requests
        replay = dict(raw.get("replay", {}))
        replay.update({"mode": self.replay.mode, "max_in_flight": self.replay.max_in_flight})
        if self.replay.aa_reference is not None:
            replay["aa_reference"] = str(self.replay.aa_reference.resolve())
        raw["replay"] = replay
        out = dict(raw.get("output", {}))
        if self.output.schema is not None:
            out["schema"] = str(self.output.schema.resolve())
        if self.output.route_schemas:
            out["route_schemas"] = {k: str(v.resolve()) for k, v in self.output.route_schemas.items()}
        if out:
            raw["output"] = out
        raw["targets"] = {v: {**raw["targets"].get(v, {}), "url": t.url} for v, t in self.targets.items()}
        # Header values written in the scenario itself may be credentials (the docs ask for ${VAR}, which is
        # stored as written): the run folder travels with a release, so they are not stored. Each distinct value
        # keeps a mask of its own, so that two targets told apart by a header (one gateway, X-Model-Version
        # v1 / v2) are still two targets when the run is judged again from what it stored.
        masks: dict[str, str] = {}
        if isinstance(replay.get("headers"), dict):
            replay["headers"] = _stored_headers(replay["headers"], masks)
        for target in raw["targets"].values():
            if isinstance(target.get("headers"), dict):
                target["headers"] = _stored_headers(target["headers"], masks)
        return raw

    def with_overrides(self, **changes: Any) -> "Scenario":
        """Command-line overrides (speed, max_requests, ...) applied on top of the file."""
        traffic = {k: v for k, v in changes.items() if k in TrafficConfig.__dataclass_fields__ and v is not None}
        replay_ = {k: v for k, v in changes.items() if k in ReplayConfig.__dataclass_fields__ and v is not None}
        return replace(self, traffic=replace(self.traffic, **traffic), replay=replace(self.replay, **replay_))


def scenario_json_schema() -> dict[str, Any]:
    text = resources.files("harness").joinpath("schemas/scenario.schema.json").read_text()
    return json.loads(text)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{path}: scenario file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{where}: invalid YAML: {problem}") from None
    return scenario_from_dict(raw, source=path, text=text)


_ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
STORED_MASK = "[REDACTED]"  # traffic.redaction.REDACTED too: one mask for whatever harness keeps back


def _stored_headers(headers: dict[str, Any], masks: dict[str, str]) -> dict[str, Any]:
    """Header values as a run stores them: one that takes its secret from the environment (`Bearer ${TOKEN}`)
    as written, a literal one masked (`[REDACTED 1]`, the same number for the same value), a removal (null)
    as it is."""
    def stored(v: Any) -> Any:
        if not isinstance(v, str) or _ENV_REFERENCE.search(v):
            return v
        return masks.setdefault(v, f"{STORED_MASK[:-1]} {len(masks) + 1}]")

    return {k: stored(v) for k, v in headers.items()}


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key written twice in one mapping is an error: YAML's last one would win silently (a
    second `promotion_gates:` block dropping the first one's gates)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, (str, int, float, bool)):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is written twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def scenario_from_dict(raw: Any, source: Path | None = None, text: str | None = None,
                       check_files: bool = True) -> Scenario:
    """check_files=False re-reads a scenario stored in a run (its files may be elsewhere by now)."""
    label = str(source) if source else "<scenario>"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{label}: a scenario is a YAML mapping, got {type(raw).__name__}")
    nan = _nan_key(raw, [])
    if nan is not None:  # NaN passes every bound of the schema (each comparison with it is false)
        line = _line_of(text, nan) if text else None
        raise ScenarioError(f"{label}{f':{line}' if line else ''}: {'.'.join(nan)}: .nan is not a number")
    validator = jsonschema.Draft202012Validator(scenario_json_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        keys = [str(p) for p in err.absolute_path]
        extra = re.findall(r"'([^']+)' (?:was|were) unexpected", err.message) if err.validator == "additionalProperties" else []
        line = _line_of(text, keys + extra[:1]) if text else None
        where = f"{label}:{line}" if line else label
        raise ScenarioError(f"{where}: {'.'.join(keys) or '(top level)'}: {_schema_message(err)}")
    base = source.parent if source else Path.cwd()
    return _build(raw, base, label, source, check_files, text)


def _nan_key(value: Any, keys: list[str]) -> list[str] | None:
    """The key path of the first NaN in the scenario (YAML's .nan), or None."""
    if isinstance(value, float) and value != value:
        return keys
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _nan_key(v, [*keys, str(k)])
        if found is not None:
            return found
    return None


def _schema_message(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)' (?:was|were) unexpected", err.message)
        allowed = sorted(err.schema.get("properties", {}))
        name = extra[0] if extra else err.message
        return f"unknown key {name!r} (allowed: {', '.join(allowed)})"
    if err.validator == "enum":
        return f"{err.instance!r} is not one of {', '.join(map(str, err.validator_value))}"
    return err.message


def _line_of(text: str, keys: list[str]) -> int | None:
    """Line (1-based) of the deepest YAML node on the key path, for error messages."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for key in keys:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == key), None)
            if found is None:
                break
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and key.isdigit() and int(key) < len(node.value):
            node = node.value[int(key)]
            line = node.start_mark.line + 1
        else:
            break
    if line is None and node is not None and keys:
        return None
    return line


def _path(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _build(raw: dict[str, Any], base: Path, label: str, source: Path | None, check_files: bool,
           text: str | None = None) -> Scenario:
    traffic = _traffic_config(raw["traffic"], base, label)
    segments = _segment_specs(raw.get("segments") or {}, raw["traffic"].get("sample"), label)
    names = {s.name for s in segments}
    rp = raw.get("replay", {})
    mode = rp.get("mode", _default(ReplayConfig, "mode"))
    targets_raw = raw["targets"]
    if mode == "paired" and "candidate" not in targets_raw:
        raise ScenarioError(f"{label}: targets.candidate is required in paired mode")
    targets = {name: _target(name, spec, base, label, check_files) for name, spec in targets_raw.items()}
    replay_cfg = _replay_config(rp, mode, base, label)
    output = _output_config(raw.get("output", {}), base, label, check_files)
    canary = _canary_config(raw.get("canary", {}), label)
    risk = raw.get("risk", {})

    def locate(keys: list[str]) -> str:
        line = _line_of(text, keys) if text else None
        return f"{label}:{line}" if line else label

    gates = parse_gates(raw.get("promotion_gates"), label, locate)
    for g in gates:
        for seg in g.segment or {}:
            if seg not in names:
                raise ScenarioError(
                    f"{locate(['promotion_gates', g.name, 'segment', seg])}: promotion_gates.{g.name}.segment: unknown "
                    f"segment {seg!r} (defined in segments: {', '.join(sorted(names)) or 'none'})")
    return Scenario(
        name=raw["name"], source=source, traffic=traffic, segments=segments, targets=targets,
        replay=replay_cfg, output=output, gates=gates,
        analysis=AnalysisConfig(**raw.get("analysis", {})), canary=canary,
        raw=raw, **_given(raw, description=_as_is, owner=_as_is), **_given(risk, moves_money=bool, customer_trust=bool),
    )


def _traffic_config(t: dict[str, Any], base: Path, label: str) -> TrafficConfig:
    window = t.get("window", {})
    sample = t.get("sample")
    redact = t.get("redact", {})
    traffic = TrafficConfig(
        path=_path(base, t["path"]) or Path(t["path"]),
        from_s=window.get("from_s"),
        to_s=window.get("to_s"),
        sample=SampleConfig(**sample) if sample else None,
        redact=RedactConfig(**{k: tuple(v) for k, v in redact.items()}),
        trace=TraceOptions(**t.get("trace", {})),
        **_given(t, format=_as_is, speed=float, on_bad_record=_as_is, max_requests=_as_is, loops=int,
                 warmup_requests=int, max_gap_s=float),
    )
    if traffic.from_s is not None and traffic.to_s is not None and traffic.to_s <= traffic.from_s:
        raise ScenarioError(f"{label}: traffic.window.to_s must be after from_s")
    return traffic


def _segment_specs(raw: dict[str, Any], sample: dict[str, Any] | None, label: str) -> tuple[SegmentSpec, ...]:
    segments = tuple(_segment(name, spec, label) for name, spec in raw.items())
    names = {s.name for s in segments}
    folded: dict[str, str] = {}
    for s in segments:  # each name becomes a quoted column name, and DuckDB's column names ignore case
        if '"' in s.name or any(ord(c) < 32 for c in s.name):
            raise ScenarioError(f"{label}: segments.{s.name}: a segment name may not hold a double quote or a "
                                f"control character")
        if s.name.lower() in folded:
            raise ScenarioError(f"{label}: segments.{s.name}: the same name as segments.{folded[s.name.lower()]} "
                                f"but for case (segment names are columns, whose names ignore case)")
        folded[s.name.lower()] = s.name
    for s in segments:
        if s.name in RESERVED_COLUMNS and not (s.name == "route" and s.kind == "path_template"):
            raise ScenarioError(f"{label}: segments.{s.name}: the name is a column of the requests table; choose another")
    phases = {s.name for s in segments if s.kind == "run_phase"}
    for s in segments:
        if s.kind == "cross":
            missing = [n for n in s.arg or () if n not in names or n == s.name]
            if missing:
                raise ScenarioError(f"{label}: segments.{s.name}.cross: unknown segment {missing[0]!r}")
            if phases & set(s.arg or ()):
                raise ScenarioError(f"{label}: segments.{s.name}.cross: a run_phase segment is known only once the "
                                    f"schedule is, so it cannot be crossed ({sorted(phases & set(s.arg or ()))[0]!r})")
    if sample and sample.get("stratify_by") and sample["stratify_by"] not in names:
        raise ScenarioError(f"{label}: traffic.sample.stratify_by: unknown segment {sample['stratify_by']!r}")
    if sample and sample.get("stratify_by") in phases:
        raise ScenarioError(f"{label}: traffic.sample.stratify_by: {sample['stratify_by']!r} is a run_phase segment, "
                            f"known only after sampling")
    return segments


def _replay_config(rp: dict[str, Any], mode: Mode, base: Path, label: str) -> ReplayConfig:
    timeout_s = float(rp.get("timeout_s", _default(ReplayConfig, "timeout_s")))
    replay_cfg = ReplayConfig(
        mode=mode,
        timeout_s=timeout_s,
        # no longer than the whole exchange may take
        connect_timeout_s=float(rp.get("connect_timeout_s", min(_default(ReplayConfig, "connect_timeout_s"), timeout_s))),
        allow=tuple(rp.get("allow", ())),
        headers=dict(rp.get("headers", {})),
        aa_reference=_path(base, rp.get("aa_reference")),
        **_given(rp, max_in_flight=int, lag_bound_ms=float, max_duration_s=_as_is, max_response_bytes=int,
                 stop_early=bool, accept_encoding=lambda v: str(v).strip()),
    )
    for rule in replay_cfg.allow:
        if len(rule.split()) != 2:
            raise ScenarioError(f"{label}: replay.allow: {rule!r} should be 'METHOD /path-pattern', e.g. 'POST /v1/score'")
    return replay_cfg


def _output_config(out: dict[str, Any], base: Path, label: str, check_files: bool) -> OutputConfig:
    output = OutputConfig(
        schema=_path(base, out.get("schema")),
        route_schemas={k: _path(base, v) for k, v in out.get("route_schemas", {}).items()},  # type: ignore[misc]
        ignore_paths=tuple(out.get("ignore_paths", ())),
        key_order_paths=tuple(out.get("key_order_paths", ())),
        detectors=_detectors(out.get("detectors", {}), label),
        rows=_rows(out.get("rows"), label),
        **_given(out, prediction=_as_is, confidence=_as_is),
    )
    _check_json_paths(output, label)
    for p in [output.schema, *output.route_schemas.values()]:
        if check_files and p is not None and not p.exists():
            raise ScenarioError(f"{label}: output schema file not found: {p}")
    return output


def _canary_config(canary_raw: dict[str, Any], label: str) -> CanaryConfig:
    canary = CanaryConfig(**_given(canary_raw, steps_percent=lambda v: tuple(float(x) for x in v), power=float,
                                   production_rps=_as_is))
    if list(canary.steps_percent) != sorted(canary.steps_percent):
        raise ScenarioError(f"{label}: canary.steps_percent must increase, got {list(canary.steps_percent)}")
    return canary


def _default(cls: Any, name: str) -> Any:
    """The default of a field of one of the dataclasses above: the one place a scenario's defaults are written."""
    return cls.__dataclass_fields__[name].default


def _given(raw: Mapping[str, Any], **convert: Callable[[Any], Any]) -> dict[str, Any]:
    """The keys the scenario sets, converted; a key it leaves out keeps its dataclass default."""
    return {k: f(raw[k]) for k, f in convert.items() if k in raw}


def _as_is(value: Any) -> Any:
    return value


def _segment(name: str, spec: dict[str, Any], label: str) -> SegmentSpec:
    kinds = [k for k in spec if k in SEGMENT_KINDS]
    if len(kinds) != 1:
        raise ScenarioError(
            f"{label}: segments.{name}: needs exactly one of {', '.join(SEGMENT_KINDS)}, found {kinds or 'none'}")
    kind = kinds[0]
    arg = spec[kind]
    if kind in ("path_template", "prompt_tokens") and arg is not True:
        raise ScenarioError(f"{label}: segments.{name}.{kind}: must be true")
    if kind == "run_phase":
        if isinstance(arg, bool) or not isinstance(arg, int) or not 2 <= arg <= RUN_PHASES_MAX:
            raise ScenarioError(f"{label}: segments.{name}.run_phase: the number of equal stretches of the run, "
                                f"2 to {RUN_PHASES_MAX} (e.g. 4), not {arg!r}")
        return SegmentSpec(name=name, kind=kind, arg=str(arg))
    if kind in ("json_array_length", "body_bytes", "prompt_tokens") and "buckets" not in spec:
        raise ScenarioError(f"{label}: segments.{name}: {kind} needs `buckets` (e.g. [1, 8, 32])")
    buckets = spec.get("buckets")
    if buckets is not None and list(buckets) != sorted(set(buckets)):
        raise ScenarioError(f"{label}: segments.{name}.buckets must be strictly increasing")
    if kind in ("present", "cross"):
        arg = tuple(arg)
    elif kind in ("path_template", "body_bytes", "prompt_tokens"):
        arg = None
    for path in (arg if kind == "present" else (arg,) if kind in ("json_path", "json_array_length") else ()):
        try:
            compile_path(path)
        except JsonPathError as exc:
            raise ScenarioError(f"{label}: segments.{name}.{kind}: {exc}") from None
    return SegmentSpec(name=name, kind=kind, arg=arg, buckets=tuple(buckets) if buckets else None,
                       **_given(spec, max_values=int))


def _detectors(raw: dict[str, Any], label: str) -> DetectorConfig:
    ab, ci, fb = raw.get("abstention", {}), raw.get("citations", {}), raw.get("fallback_model", {})
    cfg = DetectorConfig(content=raw.get("content"), abstention_pattern=ab.get("pattern"),
                         citation_pattern=ci.get("pattern"), citation_field=ci.get("field"),
                         expected_model=fb.get("expected_model"), model_field=fb.get("field", _default(DetectorConfig, "model_field")),
                         fallback_header=fb.get("header"))
    for key, pattern in (("abstention.pattern", cfg.abstention_pattern), ("citations.pattern", cfg.citation_pattern),
                         ("fallback_model.expected_model", cfg.expected_model)):
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ScenarioError(f"{label}: output.detectors.{key}: not a valid regular expression: {exc}") from None
    if fb and not cfg.fallback_configured:
        raise ScenarioError(f"{label}: output.detectors.fallback_model: needs expected_model or header")
    return cfg


def _rows(raw: Any, label: str) -> RowsConfig:
    if raw is None:
        return RowsConfig()
    if isinstance(raw, bool):
        return RowsConfig(enabled=raw)
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{label}: output.rows: expected true, false or a mapping, got {raw!r}")
    pos = raw.get("positive_class")
    if pos is not None and (isinstance(pos, bool) or not isinstance(pos, int) or pos < 0):
        raise ScenarioError(f"{label}: output.rows.positive_class: expected a class index >= 0, got {pos!r}")
    thr = raw.get("threshold")
    if thr is not None and (isinstance(thr, bool) or not isinstance(thr, (int, float))):
        raise ScenarioError(f"{label}: output.rows.threshold: expected a number, got {thr!r}")
    for key in ("path", "label", "score"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ScenarioError(f"{label}: output.rows.{key}: expected a string, got {raw[key]!r}")
    path = raw.get("path")
    if isinstance(path, str) and path.startswith("$"):
        try:
            compile_path(path)
        except JsonPathError as exc:
            raise ScenarioError(f"{label}: output.rows.path: {exc}") from None
    return RowsConfig(enabled=bool(raw.get("enabled", True)), path=path, label=raw.get("label"),
                      score=raw.get("score"), positive_class=pos, threshold=None if thr is None else float(thr))


def _check_json_paths(output: OutputConfig, label: str) -> None:
    d = output.detectors
    named = [("output.prediction", output.prediction), ("output.confidence", output.confidence),
             *((f"output.ignore_paths[{i}]", p) for i, p in enumerate(output.ignore_paths)),
             *((f"output.key_order_paths[{i}]", p) for i, p in enumerate(output.key_order_paths)),
             ("output.detectors.content", d.content), ("output.detectors.citations.field", d.citation_field),
             ("output.detectors.fallback_model.field", d.model_field)]
    for key, path in named:
        if path is None:
            continue
        try:
            compile_path(path)
        except JsonPathError as exc:
            raise ScenarioError(f"{label}: {key}: {exc}") from None


def _target(name: str, spec: dict[str, Any], base: Path, label: str, check_files: bool) -> TargetConfig:
    url = spec["url"].rstrip("/")
    try:
        _ = urlsplit(url).port
    except ValueError as exc:  # a port past 65535, or not a number
        raise ScenarioError(f"{label}: targets.{name}.url: {url}: {exc}") from None
    grpc_url = url.startswith(("grpc://", "grpcs://"))
    if (spec.get("protocol") == "kserve_v2_grpc") != grpc_url:
        raise ScenarioError(f"{label}: targets.{name}: protocol kserve_v2_grpc and a grpc:// (or grpcs://) url go "
                            f"together (url {url}, protocol {spec.get('protocol', 'json')})")
    return TargetConfig(
        name=name, url=url, pid_file=_path(base, spec.get("pid_file")), headers=dict(spec.get("headers", {})),
        tls=_tls(name, spec.get("tls"), url, base, label, check_files),
        **_given(spec, protocol=_as_is, pid=_as_is, metrics_url=_as_is, memory_metric=_as_is, oom_counter=_as_is),
    )


def _tls(target: str, raw: dict[str, Any] | None, url: str, base: Path, label: str,
         check_files: bool) -> Mapping[str, Any] | None:
    if raw is None:
        return None
    where = f"{label}: targets.{target}.tls"
    if not url.startswith(("https://", "grpcs://")):
        raise ScenarioError(f"{where}: set for a target that is not https:// or grpcs:// ({url})")
    if raw.get("client_key") and not raw.get("client_cert"):
        raise ScenarioError(f"{where}.client_key: needs client_cert")
    tls: dict[str, Any] = {k: raw[k] for k in ("server_name", "verify") if k in raw}
    for key in ("ca_file", "client_cert", "client_key"):
        if raw.get(key):
            path = _path(base, raw[key])
            assert path is not None
            if check_files and not path.is_file():
                raise ScenarioError(f"{where}.{key}: file not found: {path}")
            tls[key] = str(path.resolve())
    return tls


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]", "localhost.localdomain"})


def _server_of(url: str) -> str:
    """The server a URL reaches, as far as the URL itself says: scheme, host (case-free; the loopback names one
    host), port (the scheme's default spelled out) and path without its last slash. No name is resolved."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return url.rstrip("/")
    return f"{parts.scheme.lower()}://{'loopback' if host in _LOOPBACK else host}:{port}{parts.path.rstrip('/')}"
