"""The shadow proxy's mirror decision: only routes in replay.allow (plus GET/HEAD/OPTIONS) are copied to the
candidate, decided on the path without its query, the same whether remembered or not."""
from __future__ import annotations

import asyncio

from harness.scenario import scenario_from_dict
from harness.shadow import proxy
from harness.shadow.channel import RecorderChannel
from harness.shadow.proxy import ShadowApp
from harness.traffic.prepare import is_allowed
from harness.traffic.segments import route_template


def _app() -> ShadowApp:
    scenario = scenario_from_dict({
        "name": "p", "traffic": {"path": "x.jsonl"},
        "targets": {"baseline": {"url": "http://127.0.0.1:1"}, "candidate": {"url": "http://127.0.0.1:2"}},
        "replay": {"allow": ["POST /v1/score", "PUT /v1/users/{id}"]}})
    return ShadowApp(scenario, RecorderChannel(), None, asyncio.Event())


def test_the_mirror_decision_follows_replay_allow_and_ignores_the_query() -> None:
    app = _app()
    cases = [("POST", "/v1/score", True), ("POST", "/v1/score?user=1", True), ("POST", "/v1/score?user=2", True),
             ("DELETE", "/v1/score", False), ("GET", "/v1/anything/123?x=1", True), ("PUT", "/v1/users/42", True),
             ("PUT", "/v1/users/42?dry=1", True), ("POST", "/v1/users/42", False), ("HEAD", "/", True)]
    for _ in range(2):  # computed, then remembered
        for method, path, allowed in cases:
            route = route_template(path)
            assert app._route(method, path) == (route, allowed), (method, path)
            assert is_allowed(method, path, route, app.scenario.replay.allow) is allowed
    assert len(app._routes) == 6  # one per method and path without its query


def test_paths_past_the_limit_are_decided_each_time_and_not_remembered() -> None:
    app = _app()
    for i in range(proxy._ROUTES_MAX + 50):
        assert app._route("PUT", f"/v1/users/{i}") == ("/v1/users/{id}", True)
    assert len(app._routes) == proxy._ROUTES_MAX
    assert app._route("DELETE", "/v1/users/1") == ("/v1/users/{id}", False)
