"""The headers a scenario sends: replay.headers, then each target's, from the environment at send time;
live shadow's candidate copies get the candidate's set over what the user sent."""
from __future__ import annotations

import pytest

from harness.errors import ScenarioError
from harness.scenario import scenario_from_dict
from harness.send_headers import header_overrides
from harness.shadow.proxy import CopyHead


def _scenario(env_var: str = "HARNESS_TEST_TOKEN") -> object:
    return scenario_from_dict({
        "name": "h", "traffic": {"path": "x.jsonl"},
        "targets": {"baseline": {"url": "http://127.0.0.1:1"},
                    "candidate": {"url": "http://127.0.0.1:2", "headers": {"X-Model": "v2", "Cookie": None}}},
        "replay": {"headers": {"Authorization": f"Bearer ${{{env_var}}}", "X-Model": "v1"}},
    })


def test_target_headers_override_replay_headers_per_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_TEST_TOKEN", "t0k")
    got = header_overrides(_scenario())  # type: ignore[arg-type]
    assert got["baseline"] == {"Authorization": "Bearer t0k", "X-Model": "v1"}
    assert got["candidate"] == {"Authorization": "Bearer t0k", "X-Model": "v2", "Cookie": None}


def test_an_unset_variable_is_one_scenario_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_UNSET_VAR", raising=False)
    with pytest.raises(ScenarioError, match=r"replay.headers uses \$\{HARNESS_UNSET_VAR\}"):
        header_overrides(_scenario("HARNESS_UNSET_VAR"))  # type: ignore[arg-type]


def test_the_shadow_copy_carries_the_candidate_headers_over_the_users() -> None:
    user = [(b"Authorization", b"Bearer user"), (b"cookie", b"session=1"), (b"X-Tenant-Tier", b"pro"),
            (b"Connection", b"keep-alive"), (b"Content-Length", b"2")]
    head = CopyHead("/v2", "cand:9000", {"Authorization": "Bearer test", "Cookie": None, "X-Model": "v2"})
    got = head("POST", "/score?x=1", user, 2)
    assert got == (b"POST /v2/score?x=1 HTTP/1.1\r\nHost: cand:9000\r\nX-Tenant-Tier: pro\r\n"
                   b"Authorization: Bearer test\r\nX-Model: v2\r\nContent-Length: 2\r\n\r\n")
    assert head("GET", "/health", user, 0).startswith(b"GET /v2/health HTTP/1.1\r\n")
    assert b"Content-Length" not in head("GET", "/health", user, 0)
    # the baseline's request leaves Expect out (the proxy answers 100-continue itself): so does the copy
    assert head("POST", "/score", [(b"Expect", b"100-continue")], 2) == (
        b"POST /v2/score HTTP/1.1\r\nHost: cand:9000\r\nAuthorization: Bearer test\r\nX-Model: v2\r\n"
        b"Content-Length: 2\r\n\r\n")


def test_the_shadow_copy_never_carries_the_users_credentials_and_is_forwarded_as_the_baselines() -> None:
    """Without test credentials in the scenario the copy carries none: the user's secret headers (the default
    names, any credential-like name, the scenario's own) are left out. X-Forwarded-For names the user as on
    the baseline's request."""
    from harness.scenario import RedactConfig
    from harness.traffic.redaction import Redactor

    user = [(b"Authorization", b"Bearer user"), (b"X-Goog-Api-Key", b"AIza1"), (b"PRIVATE-TOKEN", b"glpat"),
            (b"X-Customer-Email", b"a@b.c"), (b"X-Tenant-Tier", b"pro"), (b"X-Forwarded-For", b"10.0.0.1")]
    head = CopyHead("", "cand:9000", {}, Redactor(RedactConfig(headers=("X-Customer-Email",))).header_is_secret)
    got = head("POST", "/score", user, 2, "127.0.0.1")
    assert got == (b"POST /score HTTP/1.1\r\nHost: cand:9000\r\nX-Tenant-Tier: pro\r\n"
                   b"X-Forwarded-For: 10.0.0.1, 127.0.0.1\r\nContent-Length: 2\r\n\r\n")
    assert head("GET", "/h", user[:1], 0, "127.0.0.1").endswith(b"X-Forwarded-For: 127.0.0.1\r\n\r\n")


def test_a_run_stores_header_values_from_the_environment_as_written_and_literal_ones_masked() -> None:
    """runs.config is the scenario as the run used it, and the run folder travels with a release: a credential
    written in the scenario (not taken from ${VAR}) must not go with it."""
    s = scenario_from_dict({
        "name": "h", "traffic": {"path": "x.jsonl"},
        "targets": {"baseline": {"url": "http://127.0.0.1:1", "headers": {"X-Api-Key": "sk-literal-123456"}},
                    "candidate": {"url": "http://127.0.0.1:2", "headers": {"Cookie": None}}},
        "replay": {"headers": {"Authorization": "Bearer ${HARNESS_TEST_TOKEN}", "X-Model": "v1"}},
    })
    stored = s.stored_config()
    assert stored["replay"]["headers"] == {"Authorization": "Bearer ${HARNESS_TEST_TOKEN}", "X-Model": "[REDACTED 1]"}
    assert stored["targets"]["baseline"]["headers"] == {"X-Api-Key": "[REDACTED 2]"}
    assert stored["targets"]["candidate"]["headers"] == {"Cookie": None}
    assert "sk-literal" not in str(stored)
    assert s.replay.headers["X-Model"] == "v1"  # what is sent is unchanged


def test_targets_told_apart_by_a_header_stay_apart_in_what_a_run_stores() -> None:
    """One gateway, the version chosen by a header: judged again from the stored scenario, the two targets
    must not read as one (a self-comparison HOLDs: 'No candidate judged')."""
    spec = {"name": "h", "traffic": {"path": "x.jsonl"},
            "targets": {"baseline": {"url": "http://127.0.0.1:1", "headers": {"X-Model-Version": "v1"}},
                        "candidate": {"url": "http://127.0.0.1:1", "headers": {"X-Model-Version": "v2"}}}}
    live = scenario_from_dict(spec)
    stored = scenario_from_dict(live.stored_config(), check_files=False)
    assert live.self_comparison() is None and stored.self_comparison() is None
    same = scenario_from_dict({**spec, "targets": {v: {"url": "http://127.0.0.1:1", "headers": {"X-Model-Version": "v1"}}
                                                   for v in ("baseline", "candidate")}})
    assert scenario_from_dict(same.stored_config(), check_files=False).self_comparison() is not None
