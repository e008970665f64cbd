"""Numbers and names the schedule's modules share; the policy constants among them."""
from __future__ import annotations

EXPORT_FORMATS = ("yaml", "argo", "flagger", "istio")

# Policy: each constant is quoted in the basis strings of the numbers it affects.
LOW_SHARE_PERCENT = 10.0      # steps at or below this share are "low-share" steps
BURSTY_DISPERSION = 2.0       # per-second count variance / mean at or above this: bursty (random arrivals: 1)
MAX_BURST_FACTOR = 3.0        # cap on the burstiness lengthening
RESOURCE_HEAVY_RATIO = 1.5    # candidate / baseline peak memory at or above this: resource-heavy
RESOURCE_SOAK_S = 1800        # resource-heavy: every live step lasts at least this long
DAILY_CYCLE_S = 86400         # moves money / customer trust: the first live step covers a full day
MIN_STEP_S = 300              # no live step shorter than 5 min (a few Prometheus scrapes and rate windows)
GUARD_INTERVAL = "5m"         # Argo background guard for event counts (restarts, OOM kills)

_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
_EVENT_METRICS = {"gpu_oom_events", "oom_kills", "restarts"}
_RESOURCE_METRICS = _EVENT_METRICS | {"peak_rss_mb", "peak_gpu_memory_mb"}

