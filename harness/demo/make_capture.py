"""Generate the demo's sample capture, deterministically: same arguments, same bytes.

    python -m harness.demo.make_capture -o captured_traffic/fraud_sample.jsonl [--requests 4000] [--seed 7]

What it writes (see captured_traffic/README.md): ``--requests`` capture records of fraud-scoring
traffic over ``240 s * requests / 4000`` of captured time, with Poisson arrivals and three bursts,
in the capture-record format, plus exactly six malformed lines at :func:`malformed_line_numbers`.
It is meant to look like a real capture, warts included: a few bodies as JSON text, a few epoch
timestamps, a few records logged out of order, secrets in headers, state-changing requests.
A name ending in ``.gz`` writes gzip (with a fixed mtime, so the bytes stay the same).
"""
from __future__ import annotations

import argparse
import base64
import gzip
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["generate_lines", "malformed_line_numbers", "write_capture", "MALFORMED_KINDS", "main"]

CAPTURE_START_S = datetime(2026, 11, 2, 14, 0, 0, tzinfo=timezone.utc).timestamp()
SECONDS_PER_REQUEST = 240.0 / 4000  # ~16.7 req/s on average, bursts included
BURSTS = ((0.22, 4.0), (0.51, 3.0), (0.83, 5.0))  # (where in the capture, seconds) ...
BURST_FACTOR = 3.5                                  # ... at 3.5x the base rate
ROUTES = ("score", "account", "models", "healthz")
ROUTE_WEIGHTS = (0.56, 0.385, 0.042, 0.013)
DELETES_PER_4000 = 10
TIERS, TIER_WEIGHTS = ("free", "pro", "enterprise"), (0.40, 0.30, 0.30)
REGIONS, REGION_WEIGHTS = ("us-east", "eu-west", "ap-south", "sa-east"), (0.35, 0.30, 0.25, 0.10)
REGION_UTC_OFFSET_H = {"us-east": -5, "eu-west": 0, "ap-south": 5, "sa-east": -3}
MERCHANT_CATEGORIES = (5411, 5812, 5999, 5732, 4829, 7995, 5311, 4121, 5541, 5967, 6011, 7011)
CLIENTS = ("web", "ios", "android")
MALFORMED_KINDS = ("truncated_json", "not_json", "missing_method", "unparseable_ts", "headers_list", "empty_object")
_MALFORMED_AT = (0.06, 0.21, 0.39, 0.55, 0.73, 0.91)  # fractions of the file, one per kind


def malformed_line_numbers(requests: int) -> list[int]:
    """1-based line numbers of the six malformed lines in a capture of ``requests`` records."""
    total = requests + len(MALFORMED_KINDS)
    return [max(1, min(total, round(total * f))) for f in _MALFORMED_AT]


def _arrival_times(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` sorted arrival offsets (s): an inhomogeneous Poisson process conditioned on ``n``
    events, i.e. ``n`` iid draws from the normalised rate, placed by inverting its integral."""
    span = n * SECONDS_PER_REQUEST
    scale = min(1.0, span / 240.0)
    edges = [0.0]
    rates = []
    for where, seconds in BURSTS:
        start, end = where * span, where * span + seconds * scale
        edges += [start, end]
        rates += [1.0, BURST_FACTOR]
    edges.append(span)
    rates.append(1.0)
    grid = np.asarray(edges)
    cumulative = np.concatenate([[0.0], np.cumsum(np.diff(grid) * np.asarray(rates))])
    u = np.sort(rng.uniform(0.0, cumulative[-1], n))
    return np.interp(u, cumulative, grid)


def _transactions(count: int, local_hour: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    features = np.round(rng.normal(0.0, 1.0, (count, 16)), 3)
    amounts = np.round(rng.lognormal(3.6, 1.1, count), 2)
    categories = rng.choice(MERCHANT_CATEGORIES, count)
    # a single transaction is scored as it happens; a batch covers the account's last day
    hours = [local_hour] if count == 1 else rng.integers(0, 24, count).tolist()
    return [{"amount": float(amounts[i]), "merchant_category": int(categories[i]), "hour": int(hours[i]),
             "features": [float(v) for v in features[i]]} for i in range(count)]


def _transaction_count(tier: str, rng: np.random.Generator) -> int:
    # enterprise tenants send more batch requests (back-office re-scoring): 40% large vs 25%
    p_single, p_small = (0.35, 0.25) if tier == "enterprise" else (0.50, 0.25)
    u = rng.random()
    if u < p_single:
        return 1
    if u < p_single + p_small:
        return int(rng.integers(2, 17))
    return int(min(96, 32 + rng.exponential(18.0)))


def _token(rng: np.random.Generator, nbytes: int) -> str:
    return base64.urlsafe_b64encode(rng.bytes(nbytes)).decode().rstrip("=")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="microseconds")


def _record(index: int, ts: float, route: str, account_ids: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    tier = str(rng.choice(TIERS, p=TIER_WEIGHTS))
    region = str(rng.choice(REGIONS, p=REGION_WEIGHTS))
    # a few hot accounts (merchants' own, re-scored all day) and a long tail seen once or twice
    hot = rng.random() < 0.3
    slot = min(49, int(rng.zipf(1.5)) - 1) if hot else int(rng.integers(50, len(account_ids)))
    account = int(account_ids[slot])
    method, body = "POST", None
    if route == "score":
        path = "/v1/score" if rng.random() < 0.6 else f"/v1/score?client={rng.choice(CLIENTS)}"
    elif route == "account":
        path = f"/v1/accounts/{account}/score"
    elif route == "delete":
        method, path = "DELETE", f"/v1/accounts/{account}/cache"
    else:
        method, path = "GET", "/v1/models/fraud" if route == "models" else "/healthz"
    headers = {"Content-Type": "application/json"} if method == "POST" else {}
    headers.update({"X-Tenant-Tier": tier, "X-Geo-Region": region, "Authorization": f"Bearer {_token(rng, 24)}",
                    "X-Request-Id": rng.bytes(16).hex()})
    if rng.random() < 0.05:
        headers["Cookie"] = f"session={_token(rng, 18)}; theme=dark"
    if rng.random() < 0.03:
        headers["X-Api-Key"] = f"sk_live_{rng.bytes(12).hex()}"
    record: dict[str, Any] = {"ts": _iso(ts) if rng.random() >= 0.05 else round(ts, 6),
                              "method": method, "path": path, "headers": headers}
    if method == "POST":
        local_hour = int((datetime.fromtimestamp(ts, tz=timezone.utc).hour + REGION_UTC_OFFSET_H[region]) % 24)
        body = {"transactions": _transactions(_transaction_count(tier, rng), local_hour, rng)}
        # ~2% of the capture proxy's records keep the body as the JSON text it received
        record["body"] = json.dumps(body, separators=(",", ":")) if rng.random() < 0.02 else body
    elif rng.random() < 0.8:
        record["body"] = None  # most GETs say "no body" explicitly; a few leave the field out
    record["request_id"] = f"r{index:06d}"
    return record


def _malformed(kind: str, template: dict[str, Any]) -> str:
    """One malformed line of ``kind``, built from an otherwise valid record."""
    if kind == "truncated_json":  # the capture proxy died mid-write
        text = json.dumps(template, separators=(",", ":"))
        return text[: len(text) * 3 // 5]
    if kind == "not_json":        # a log line that ended up in the capture file
        return "2026-11-02 14:02:31,337 WARN capture-proxy: ring buffer full, 3 records dropped"
    if kind == "missing_method":
        return json.dumps({k: v for k, v in template.items() if k != "method"}, separators=(",", ":"))
    if kind == "unparseable_ts":
        return json.dumps({**template, "ts": "yesterday"}, separators=(",", ":"))
    if kind == "headers_list":    # "Name: value" strings, not [name, value] pairs
        headers = [f"{k}: {v}" for k, v in template["headers"].items()]
        return json.dumps({**template, "headers": headers}, separators=(",", ":"))
    return "{}"


def generate_lines(requests: int = 4000, seed: int = 7) -> list[str]:
    """The capture's lines (without newlines), in file order."""
    if requests < 10:
        raise ValueError("--requests must be at least 10")
    rng = np.random.default_rng(seed)
    offsets = _arrival_times(requests, rng)
    routes = rng.choice(ROUTES, size=requests, p=ROUTE_WEIGHTS).astype(object)
    deletes = max(1, round(DELETES_PER_4000 * requests / 4000))
    routes[rng.choice(requests, size=deletes, replace=False)] = "delete"
    account_ids = rng.integers(100_000, 99_999_999, size=max(100, requests // 2))
    records = [_record(i + 1, CAPTURE_START_S + float(offsets[i]), str(routes[i]), account_ids, rng)
               for i in range(requests)]
    # completion-order logging: ~1% of records are written up to 300 ms after their arrival
    delays = np.where(rng.random(requests) < 0.01, rng.uniform(0.05, 0.30, requests), 0.0)
    order = sorted(range(requests), key=lambda i: (float(offsets[i] + delays[i]), i))
    lines = [json.dumps(records[i], separators=(",", ":")) for i in order]

    bad_rng = np.random.default_rng([seed, 1])  # own stream: the good records do not depend on it
    for line_no, kind in zip(malformed_line_numbers(requests), MALFORMED_KINDS):
        neighbour_s = CAPTURE_START_S + float(offsets[order[min(line_no - 1, requests - 1)]])
        template = _record(0, neighbour_s, "score", account_ids, bad_rng)
        template["ts"], template["request_id"] = _iso(neighbour_s), f"x{line_no:06d}"
        lines.insert(line_no - 1, _malformed(kind, template))
    return lines


def write_capture(path: Path, requests: int = 4000, seed: int = 7) -> list[int]:
    """Write the capture to ``path``; returns the malformed line numbers."""
    data = ("\n".join(generate_lines(requests, seed)) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return malformed_line_numbers(requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.demo.make_capture", description="Generate the demo's sample capture, deterministically.")
    parser.add_argument("-o", "--output", type=Path, required=True, help="capture to write (.jsonl or .jsonl.gz)")
    parser.add_argument("--requests", type=int, default=4000, help="valid records to write (default 4000)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.requests < 10:
        parser.error("--requests must be at least 10")
    bad = write_capture(args.output, args.requests, args.seed)
    print(f"wrote {args.output}: {args.requests} records and {len(bad)} malformed lines "
          f"(lines {', '.join(map(str, bad))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
