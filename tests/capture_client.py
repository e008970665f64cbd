"""A real HTTP client for the capture and shadow tests: sends capture records to a URL with bursts and
concurrency, and logs what it got back. Runs as its own process (asyncio and aiohttp; the test process is
patched by gevent).

    python tests/capture_client.py URL RECORDS.jsonl N OUT_DIR [--secret TOKEN] [--retry-connect-s S]

Requests go in groups, alternately a burst (up to 64 at once) and a trickle (4 at once), with a short
pause between groups. Each request carries `X-Client-Seq` (its index), the secret as a bearer token and
an `api_key` field in its JSON body. OUT_DIR gets:

- answered.jsonl: {"seq", "status", "answered_at", "latency_ms", "body_sha256", "body_b64"} per answered request;
- sent.jsonl: the answered requests as capture records (`ts` = when sent): the same traffic captured
  "by other means" (the client's own log).
A connection that cannot be opened is retried for up to --retry-connect-s (the proxy restarting).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp


def _records(path: Path, n: int) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict) or "method" not in rec or "path" not in rec:
                continue
            out.append(rec)
            if len(out) >= n:
                break
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("records", type=Path)
    ap.add_argument("n", type=int)
    ap.add_argument("out", type=Path)
    ap.add_argument("--secret", default="sk-test-0123456789abcdef")
    ap.add_argument("--retry-connect-s", type=float, default=15.0)
    ap.add_argument("--burst", type=int, default=64)
    args = ap.parse_args()
    recs = _records(args.records, args.n)
    args.out.mkdir(parents=True, exist_ok=True)
    answered = open(args.out / "answered.jsonl", "w", encoding="utf-8")
    sent_log = open(args.out / "sent.jsonl", "w", encoding="utf-8")
    base = args.url.rstrip("/")

    async def one(session: aiohttp.ClientSession, seq: int, rec: dict) -> None:
        headers = {k: v for k, v in (rec.get("headers") or {}).items() if k.lower() != "content-length"}
        headers["X-Client-Seq"] = str(seq)
        headers["Authorization"] = f"Bearer {args.secret}"
        body = rec.get("body")
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError:
                pass
        if isinstance(body, dict):
            body = {**body, "api_key": args.secret}
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        deadline = time.monotonic() + args.retry_connect_s
        while True:
            sent = time.time()
            try:
                async with session.request(rec["method"], base + rec["path"], headers=headers, data=data) as r:
                    content = await r.read()
                    done = time.time()
                    answered.write(json.dumps({
                        "seq": seq, "status": r.status, "answered_at": done, "latency_ms": (done - sent) * 1000,
                        "body_sha256": hashlib.sha256(content).hexdigest(),
                        "body_b64": base64.b64encode(content).decode()}) + "\n")
                    answered.flush()
                    sent_log.write(json.dumps({
                        "ts": datetime.fromtimestamp(sent, timezone.utc).isoformat(), "method": rec["method"],
                        "path": rec["path"], "headers": headers, "body": body, "client_seq": seq}) + "\n")
                    return
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # the proxy killed or restarting
                if time.monotonic() > deadline:
                    print(f"seq {seq}: gave up: {exc!r}", flush=True)
                    return
                await asyncio.sleep(0.05)

    conn = aiohttp.TCPConnector(limit=args.burst, force_close=False)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as session:
        i = 0
        group = 0
        while i < len(recs):
            size = args.burst if group % 2 == 0 else 4
            batch = list(range(i, min(i + size * 4, len(recs))))
            sem = asyncio.Semaphore(size)

            async def limited(seq: int, sem: asyncio.Semaphore = sem) -> None:
                async with sem:
                    await one(session, seq, recs[seq])

            await asyncio.gather(*(limited(s) for s in batch))
            i += len(batch)
            group += 1
            await asyncio.sleep(0.02 if group % 2 else 0.1)
    answered.close()
    sent_log.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
