"""LLM serving metrics per leg, from the columns every streamed leg carries (time to first token, mean
inter-token gap, latency, service time, completion tokens): what gates and segments judge beyond TTFT.

- latency_per_token_ms: end-to-end latency (from the intended send, as latency_ms) / completion tokens;
- output_tokens_per_s: a stream's own generation speed after its first token,
  (completion tokens - 1) / (service time - time to first token), both from the actual send;
  streams with fewer than 2 tokens have none (nan);
- goodput: whether a request met every SLO together (AIPerf's definition: a request counts as good
  only when each of its SLO metrics is within its limit). A failed leg (error or 4xx) is judged and
  not good; a leg without the measure an SLO needs (a non-streamed answer has no TTFT) is not judged;
  a one-token stream has no gap, so it meets an inter-token SLO by itself.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .dataset import PairData

__all__ = ["latency_per_token_ms", "output_tokens_per_s", "goodput", "SERIES"]


def latency_per_token_ms(data: PairData) -> dict[str, np.ndarray]:
    out = {}
    for v, latency in data.latency.items():
        tokens = data.completion_tokens.get(v, np.full(data.n, np.nan))
        with np.errstate(divide="ignore", invalid="ignore"):
            out[v] = np.where(tokens >= 1, latency / tokens, np.nan)
    return out


def output_tokens_per_s(data: PairData) -> dict[str, np.ndarray]:
    out = {}
    for v in data.latency:
        nan = np.full(data.n, np.nan)
        tokens, ttft = data.completion_tokens.get(v, nan), data.ttft.get(v, nan)
        decode_s = (data.service.get(v, nan) - ttft) / 1000.0
        with np.errstate(divide="ignore", invalid="ignore"):
            out[v] = np.where((tokens >= 2) & (decode_s > 0), (tokens - 1) / decode_s, np.nan)
    return out


SERIES = {"latency_per_token_ms": latency_per_token_ms, "output_tokens_per_s": output_tokens_per_s}


def goodput(data: PairData, slo: Mapping[str, float]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(good, judged) per version: see the module docstring."""
    good: dict[str, np.ndarray] = {}
    judged: dict[str, np.ndarray] = {}
    refused = data.refusals()
    for v in data.latency:
        nan = np.full(data.n, np.nan)
        failed = data.error[v] | refused[v]
        ttft = data.ttft.get(v, nan)
        met = np.ones(data.n, dtype=bool)
        measured = np.ones(data.n, dtype=bool)
        for key, limit in slo.items():
            if key == "time_to_first_token_ms":
                value, present = ttft, np.isfinite(ttft)
            elif key == "inter_token_ms":
                itl = data.inter_token.get(v, nan)
                single = np.isfinite(ttft) & ~np.isfinite(itl)  # one token event: no gap to be late
                value, present = np.where(single, 0.0, itl), np.isfinite(ttft)
            else:
                value, present = data.latency[v], np.isfinite(data.latency[v])
            measured &= present
            with np.errstate(invalid="ignore"):
                met &= present & (value <= limit)
        judged[v] = failed | measured
        good[v] = ~failed & met
    return good, judged
