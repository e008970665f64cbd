"""A tiny HTTP/1.1 keep-alive server (asyncio) whose answer time has a chosen shape, on 127.0.0.1.

    python _shaped_server.py --shape unimodal|bimodal|heavy --port 8001

Each request's cost is a function of its body's "id" (the same request costs the same, as a request's
size or a cache entry does on a real model server), times an independent jitter per answer (lognormal,
sigma 0.1), so two legs of one pair are correlated the way a real paired replay's are:
- unimodal: lognormal, median 20 ms, log-sd 0.4;
- bimodal: 40 % cache hits near 6 ms, 60 % misses near 45 ms (the server of issue 15, item 7);
- heavy: 12 ms x Pareto(shape 1.8) (p50 ~18 ms, p95 ~63 ms, p99 ~155 ms), capped at 1.5 s.
Used by aa_promote.py.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random

ANSWER = b'{"prediction":"ok","confidence":0.9}'
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + str(len(ANSWER)).encode()
        + b"\r\n\r\n")


def _uniform(key: bytes, salt: bytes) -> float:
    return (int.from_bytes(hashlib.blake2b(key, digest_size=8, key=salt).digest(), "big") + 0.5) / 2**64


def cost_ms(shape: str, key: bytes) -> float:
    u, v = _uniform(key, b"a"), _uniform(key, b"b")
    z = math.sqrt(-2 * math.log(u)) * math.cos(2 * math.pi * v)  # Box-Muller: a normal from the id
    if shape == "unimodal":
        return 20.0 * math.exp(0.4 * z)
    if shape == "bimodal":
        hit = _uniform(key, b"c") < 0.4
        return (6.0 if hit else 45.0) * math.exp(0.08 * z)
    if shape == "heavy":
        return min(1500.0, 12.0 * u ** (-1 / 1.8))
    raise SystemExit(f"unknown shape {shape!r}")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shape: str) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            try:
                key = str(json.loads(body).get("id")).encode()
            except (ValueError, AttributeError):
                key = body
            await asyncio.sleep(cost_ms(shape, key) * math.exp(random.gauss(0.0, 0.1)) / 1000.0)
            writer.write(HEAD + ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(shape: str, port: int) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, shape), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--shape", required=True)
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    asyncio.run(main(a.shape, a.port))
