"""Scale-out with Locust's own master/worker mode.

The master (this process) reads the schedule once and streams each worker its interleaved shard
(row i goes to worker i mod n) as Arrow record batches over Locust's message channel, a few seconds
ahead of the send times (the first few seconds' rows before the shared clock starts);
both legs of a pair are sent by the same worker. While they replay, workers send the master only what it
watches live (legs done, send lags, pair errors for the early stop) and keep their legs in a spool file
(spool.py); each ships its file once its shard is done, and the master alone writes results.duckdb, so
every leg lands exactly once. A worker that disappears is noted with the size of its unfinished shard;
when it ran on the master's machine, the legs in its spool file are recovered; the master finishes and
writes the results anyway.

The master is `master.ReplayMaster`, a worker `worker.ReplayWorker`; what they say to each other is in
messages.py. `--processes N` starts N local workers (`harness worker`) against a master on 127.0.0.1; for several
machines, start `harness run ... --master --expect-workers N` and `harness worker --master-host H`.
"""
from __future__ import annotations

from typing import Callable

from .dispatcher import DispatchPlan
from .messages import plan_from_message, plan_to_message
from .recorder import Sinks
from .runner import ReplayOptions, ReplayOutcome, Sampler
from .sequential import StopRule

__all__ = ["run_replay_master", "run_worker", "plan_to_message", "plan_from_message"]


def run_replay_master(plan: DispatchPlan, sinks: Sinks, options: ReplayOptions, *, sampler: Sampler | None,
                      log: Callable[[str], None], processes: int = 0, expect_workers: int | None = None,
                      bind_host: str = "127.0.0.1", bind_port: int = 5557, worker_timeout_s: float = 60.0,
                      stop_rule: StopRule | None = None) -> ReplayOutcome:
    from .master import ReplayMaster

    return ReplayMaster(plan, sinks, options, sampler=sampler, log=log, processes=processes,
                        expect_workers=expect_workers, bind_host=bind_host, bind_port=bind_port,
                        worker_timeout_s=worker_timeout_s, stop_rule=stop_rule).run()


def run_worker(master_host: str, master_port: int, log: Callable[[str], None] = print) -> int:
    from .worker import ReplayWorker

    return ReplayWorker(master_host, master_port, log).run()
