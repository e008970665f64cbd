"""The demo model servers (harness.demo.server) as real processes, and the sample capture generator.

Each variant runs as its own subprocess on a free port of 127.0.0.1 (announced via --port-file);
requests go over real HTTP with urllib. Latency is checked on the modelled service time, never
on wall-clock thresholds: the CI machines are small and noisy."""
from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from harness.demo import make_capture
from harness.demo.model import (ALL_FLAWS, NO_FLAWS, InvalidRequest, load_model, modelled_service_ms,
                                jittered_ms)
from harness.traffic.jsonl_reader import iter_jsonl
from harness.traffic.record import BadRecord

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "captured_traffic" / "fraud_sample.jsonl"
MB = 1024 * 1024


class Server:
    def __init__(self, variant: str, tmp: Path) -> None:
        self.variant = variant
        port_file = tmp / f"{variant}.port"
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.demo.server", "--variant", variant,
                                      "--port", "0", "--port-file", str(port_file)],
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.port_file = port_file
        self.port = 0

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.port_file.exists():
                self.port = int(self.port_file.read_text())
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        out, err = self.stop()
        raise AssertionError(f"{self.variant} did not start (rc {self.proc.returncode}): {err[-2000:]!r}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> tuple[str, str]:
        """SIGTERM, wait, collect the output (closing the pipes)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
        return out.decode(errors="replace"), err.decode(errors="replace")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    tmp = tmp_path_factory.mktemp("demo-servers")
    started = {v: Server(v, tmp) for v in ("baseline", "candidate", "candidate-clean")}
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def call(url: str, method: str = "GET", body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    """(status, parsed JSON answer, headers) of one request; 4xx/5xx included."""
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)


def transaction(rng: np.random.Generator) -> dict[str, Any]:
    return {"amount": round(float(rng.lognormal(3.6, 1.0)), 2), "merchant_category": int(rng.integers(4000, 8000)),
            "hour": int(rng.integers(0, 24)), "features": [round(float(v), 3) for v in rng.normal(size=16)]}


def bodies(count: int, seed: int = 11) -> list[bytes]:
    """Deterministic score request bodies of 1 to 3 transactions."""
    rng = np.random.default_rng(seed)
    return [json.dumps({"transactions": [transaction(rng) for _ in range(int(rng.integers(1, 4)))]}).encode()
            for _ in range(count)]


def call_many(url: str, payloads: list[bytes], headers: dict[str, str]) -> list[tuple[int, Any]]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [(s, a) for s, a, _ in pool.map(lambda b: call(url, "POST", b, headers), payloads)]


def schema_broken(answer: Any) -> bool:
    return "model_version" not in answer or not isinstance(answer.get("confidence"), float)


# --------------------------------------------------------------------------------------------
# valid answers, routes, errors


@pytest.mark.parametrize("variant,version", [("baseline", "fraud-lr-1.4.2"), ("candidate", "fraud-mlp-2.0.0"),
                                             ("candidate-clean", "fraud-mlp-2.0.1-clean")])
@pytest.mark.integration
def test_valid_answers(servers: dict[str, Server], variant: str, version: str) -> None:
    url = servers[variant].url
    assert call(url + "/healthz")[:2] == (200, {"status": "ok"})
    assert call(url + "/v1/models/fraud")[:2] == (200, {"name": "fraud", "model_version": version, "inputs": 16})
    rng = np.random.default_rng(3)
    txs = [transaction(rng) for _ in range(5)]
    body = json.dumps({"transactions": txs}).encode()
    status, answer, headers = call(url + "/v1/score?client=web", "POST", body, {"X-Geo-Region": "us-east"})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert set(answer) == {"prediction", "confidence", "scores", "model_version"}
    assert answer["model_version"] == version
    assert len(answer["scores"]) == 5 and all(0.0 <= s <= 1.0 for s in answer["scores"])
    assert answer["confidence"] == max(answer["scores"])
    assert answer["prediction"] == ("fraud" if answer["confidence"] >= 0.5 else "legit")
    # the weights are deterministic: the process answers what the in-process model computes
    assert answer == load_model(variant).score(txs)
    # the account route scores the same way
    assert call(url + "/v1/accounts/42017/score", "POST", body, {"X-Geo-Region": "us-east"})[:2] == (200, answer)


@pytest.mark.integration
def test_bad_requests_are_answered_with_their_reason(servers: dict[str, Server]) -> None:
    url = servers["baseline"].url
    rng = np.random.default_rng(5)
    status, answer, _ = call(url + "/v1/score", "POST", b'{"transactions": [')
    assert status == 400 and "not valid JSON" in answer["error"]
    short = {**transaction(rng), "features": [0.0] * 15}
    for doc, fragment in [({"transactions": []}, "1 to 128"),
                          ({"transactions": [transaction(rng) for _ in range(129)]}, "1 to 128"),
                          ({"features": [0.0] * 16}, '"transactions"'),
                          ({"transactions": [short]}, "16 numbers"),
                          ({"transactions": [{**transaction(rng), "hour": 24}]}, "hour"),
                          ({"transactions": [{**transaction(rng), "amount": "12"}]}, "amount")]:
        status, answer, _ = call(url + "/v1/score", "POST", json.dumps(doc).encode())
        assert (status, fragment in answer["error"]) == (400, True), answer
    assert call(url + "/v2/score", "POST", b"{}")[0] == 404
    assert call(url + "/v1/accounts/7/cache", "DELETE")[0] == 404
    status, _, headers = call(url + "/v1/score")
    assert (status, headers["Allow"]) == (405, "POST")
    assert call(url + "/healthz", "POST", b"{}")[0] == 405


@pytest.mark.integration
def test_keep_alive_connection_serves_several_requests(servers: dict[str, Server]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", servers["baseline"].port, timeout=10)
    try:
        for payload in bodies(3) + [b"not json"]:
            conn.request("POST", "/v1/score", payload, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            assert int(resp.headers["Content-Length"]) == len(data)
            assert resp.status in (200, 400) and resp.headers.get("Connection") != "close"
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b'{"status":"ok"}'
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# planted flaws: candidate only, each in its segment


@pytest.mark.integration
def test_candidate_breaks_the_schema_for_ap_south_only(servers: dict[str, Server]) -> None:
    payloads = bodies(600, seed=18)  # 19 of them (3.2%) are hit
    answers = call_many(servers["candidate"].url + "/v1/score", payloads, {"X-Geo-Region": "ap-south"})
    assert all(status == 200 for status, _ in answers)
    broken = [a for _, a in answers if schema_broken(a)]
    assert 0.015 <= len(broken) / len(answers) <= 0.05, len(broken)
    assert any("model_version" not in a for a in broken)
    assert any(isinstance(a.get("confidence"), str) for a in broken)
    for a in broken:  # the string is still the number, as the buggy serializer wrote it
        if isinstance(a.get("confidence"), str):
            assert abs(float(a["confidence"]) - max(a["scores"])) < 0.006
    elsewhere = call_many(servers["candidate"].url + "/v1/score", payloads, {"X-Geo-Region": "eu-west"})
    assert not [a for _, a in elsewhere if schema_broken(a)]


@pytest.mark.integration
def test_candidate_times_out_on_the_account_route_only(servers: dict[str, Server]) -> None:
    payloads = bodies(600, seed=25)  # 27 of them (4.5%) are hit
    answers = call_many(servers["candidate"].url + "/v1/accounts/1234/score", payloads, {"X-Geo-Region": "us-east"})
    failed = [a for status, a in answers if status == 503]
    assert 0.02 <= len(failed) / len(answers) <= 0.07, len(failed)
    assert all(a == {"error": "upstream feature store timeout"} for a in failed)
    assert {status for status, _ in answers} <= {200, 503}
    other_route = call_many(servers["candidate"].url + "/v1/score", payloads, {"X-Geo-Region": "us-east"})
    assert sum(status >= 500 for status, _ in other_route) <= 2  # the rare blip every variant has


@pytest.mark.integration
@pytest.mark.parametrize("variant", ["baseline", "candidate-clean"])
def test_baseline_and_clean_candidate_have_no_flaws(servers: dict[str, Server], variant: str) -> None:
    payloads = bodies(600, seed=13)
    answers = call_many(servers[variant].url + "/v1/accounts/1234/score", payloads,
                        {"X-Geo-Region": "ap-south", "X-Tenant-Tier": "enterprise"})
    assert sum(status != 200 for status, _ in answers) <= 2  # ~0.1% transient 503, same bodies for all
    assert not [a for status, a in answers if status == 200 and schema_broken(a)]


@pytest.mark.integration
def test_candidate_holds_much_more_memory(servers: dict[str, Server]) -> None:
    rss = {v: psutil.Process(s.proc.pid).memory_info().rss for v, s in servers.items()}
    assert rss["candidate"] - rss["baseline"] >= 100 * MB, {v: r // MB for v, r in rss.items()}
    assert abs(rss["candidate-clean"] - rss["baseline"]) < 50 * MB, {v: r // MB for v, r in rss.items()}


def test_modelled_service_time() -> None:
    # base 4 ms + 0.15 ms per transaction; x2 only for the candidate, enterprise, >= 32 transactions
    assert modelled_service_ms(1, "free", NO_FLAWS) == pytest.approx(4.15)
    assert modelled_service_ms(64, "enterprise", NO_FLAWS) == pytest.approx(13.6)
    assert modelled_service_ms(64, "enterprise", ALL_FLAWS) == pytest.approx(13.6 * 2.0)
    assert modelled_service_ms(32, "enterprise", ALL_FLAWS) == pytest.approx(8.8 * 2.0)
    assert modelled_service_ms(31, "enterprise", ALL_FLAWS) == modelled_service_ms(31, "enterprise", NO_FLAWS)
    assert modelled_service_ms(96, "pro", ALL_FLAWS) == modelled_service_ms(96, "pro", NO_FLAWS)
    assert load_model("candidate-clean").flaws == NO_FLAWS
    # lognormal jitter: median kept, p95 about 1.5x the median
    assert jittered_ms(10.0, 0.0) == 10.0
    assert jittered_ms(10.0, 1.645) == pytest.approx(15.08, abs=0.01)


def test_model_refuses_bad_transactions_in_process() -> None:
    with pytest.raises(InvalidRequest, match="features"):
        load_model("baseline").score([{"amount": 1.0, "merchant_category": 1, "hour": 1, "features": [1.0]}])


# --------------------------------------------------------------------------------------------
# process behaviour


@pytest.mark.integration
def test_announces_its_url_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    server = Server("baseline", tmp_path)
    try:
        server.wait_ready()
        assert call(server.url + "/healthz")[0] == 200
    finally:
        out, err = server.stop()
    assert server.proc.returncode == 0, err
    assert out.strip() == f"listening on http://127.0.0.1:{server.port}"
    assert err == ""  # quiet: no request log


@pytest.mark.integration
def test_refuses_a_non_loopback_host(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "harness.demo.server", "--variant", "baseline",
                           "--host", "0.0.0.0", "--port-file", str(tmp_path / "port")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "loopback" in proc.stderr
    assert not (tmp_path / "port").exists()


# --------------------------------------------------------------------------------------------
# the sample capture


@pytest.mark.integration
def test_make_capture_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (first, second):
        subprocess.run([sys.executable, "-m", "harness.demo.make_capture", "-o", str(out), "--requests", "200"],
                       cwd=REPO, check=True, capture_output=True, timeout=60)
    assert first.read_bytes() == second.read_bytes()
    items = list(iter_jsonl(first))
    assert [b.line for b in items if isinstance(b, BadRecord)] == make_capture.malformed_line_numbers(200)
    assert len(items) == 206
    other_seed = make_capture.generate_lines(200, seed=8)
    assert other_seed != first.read_text().splitlines()


def test_committed_sample_has_exactly_the_six_planted_malformed_lines() -> None:
    items = list(iter_jsonl(SAMPLE))
    bad = [b for b in items if isinstance(b, BadRecord)]
    assert [b.line for b in bad] == make_capture.malformed_line_numbers(4000)
    assert len(items) - len(bad) == 4000
    records = [r for r in items if not isinstance(r, BadRecord)]
    span_s = max(r.ts for r in records) - min(r.ts for r in records)
    assert 200 <= span_s <= 260
    posts = [r for r in records if r.method == "POST"]
    large_enterprise = [r for r in posts if r.header("X-Tenant-Tier") == "enterprise"
                        and len(json.loads(r.body)["transactions"]) >= 32]
    assert len(large_enterprise) >= 300
    assert sum(r.method == "DELETE" for r in records) == 10
