"""What the master and its workers say to each other: the names of harness's custom Locust messages and
the payloads that have a shape of their own (plain data: Locust sends them with msgpack)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .dispatcher import DispatchPlan, TargetPlan

__all__ = ["PLAN", "START", "ROWS", "ROWS_END", "STOP", "LEGS_ACK", "READY", "BATCH", "LEGS", "DONE", "Assignment",
           "WorkerReady", "WorkerReport", "plan_to_message", "plan_from_message"]

# master -> worker
PLAN = "harness_plan"  # an Assignment: the plan and the worker's shard of the schedule
START = "harness_start"  # {"start_epoch": the shared clock's zero}
ROWS = "harness_rows"  # rows of the worker's shard, an Arrow IPC stream
ROWS_END = "harness_rows_end"  # no more rows
STOP = "harness_stop"  # stop replaying: Ctrl-C, the web UI's Stop, or an early stop
LEGS_ACK = "harness_legs_ack"  # one LEGS chunk is in results.duckdb

# worker -> master
READY = "harness_ready"  # a WorkerReady: the replay user runs, the clock may start
BATCH = "harness_batch"  # {"live": what the master watches} or {"events": [...]} or {"resources": [...]}
LEGS = "harness_legs"  # a chunk of the worker's spool file, an Arrow IPC stream
DONE = "harness_done"  # a WorkerReport: the shard is done, or the replay failed


@dataclass(frozen=True)
class Assignment:
    """A worker's part of the run."""

    plan: dict[str, Any]  # plan_to_message
    shard_index: int
    shard_count: int
    total: int  # rows in this worker's shard
    worker: str  # its name in the legs (worker-N)
    watch_pairs: bool = False  # count pair errors for the master's early stop
    warmup: int = 0  # pairs the early stop leaves out
    locust_stats: bool = True  # feed Locust's stats (the master's web UI reads them)

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, d: dict[str, Any]) -> Assignment:
        return cls(plan=d["plan"], shard_index=d["shard_index"], shard_count=d["shard_count"], total=d["total"],
                   worker=d["worker"], watch_pairs=d.get("watch_pairs", False), warmup=int(d.get("warmup", 0)),
                   locust_stats=d.get("locust_stats", True))


@dataclass(frozen=True)
class WorkerReady:
    """Where the worker keeps its legs, so that the master can read them if the worker is lost."""

    spool: str | None = None
    host: str | None = None
    pid: int | None = None  # a --processes master knows at once when its own child has exited

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, d: dict[str, Any] | None) -> WorkerReady:
        d = d or {}
        return cls(spool=d.get("spool"), host=d.get("host"), pid=d.get("pid"))


@dataclass(frozen=True)
class WorkerReport:
    """A worker's account of its shard, sent once its legs are shipped (or its replay failed)."""

    dispatched: int
    errors: int
    skipped_in_flight: int
    ended_by: str | None  # why its sending ended early (DispatchStats.ended_by); the master decides stopped_early
    legs_spooled: int
    sink_failures: int
    last_sink_error: str | None
    error: str | None  # why the replay failed; the run then fails with it

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, d: dict[str, Any]) -> WorkerReport:
        return cls(dispatched=d["dispatched"], errors=d["errors"], skipped_in_flight=d["skipped_in_flight"],
                   ended_by=d.get("ended_by"), legs_spooled=d.get("legs_spooled", 0),
                   sink_failures=d.get("sink_failures", 0), last_sink_error=d.get("last_sink_error"),
                   error=d.get("error"))


def plan_to_message(plan: DispatchPlan) -> dict[str, Any]:
    d = asdict(plan)
    d["schedule_path"] = None
    d["schema_text"] = plan.schema.read_text() if plan.schema else None
    d["route_schema_texts"] = {r: p.read_text() for r, p in plan.route_schemas.items()}
    d["schema"] = None
    d["route_schemas"] = {}
    d["targets"] = [asdict(t) for t in plan.targets]
    return d


def plan_from_message(d: dict[str, Any], workdir: Path) -> DispatchPlan:
    d = dict(d)
    schema_text = d.pop("schema_text")
    route_texts = d.pop("route_schema_texts")
    schema = None
    if schema_text is not None:
        schema = workdir / "schema.json"
        schema.write_text(schema_text)
    routes = {}
    for i, (route, text) in enumerate(route_texts.items()):
        p = workdir / f"route-schema-{i}.json"
        p.write_text(text)
        routes[route] = p
    d["targets"] = tuple(TargetPlan(**t) for t in d["targets"])
    d["secrets"] = tuple(d.get("secrets", ()))
    return DispatchPlan(**{**d, "schedule_path": Path("/nonexistent"), "schema": schema, "route_schemas": routes})
