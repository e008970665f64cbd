"""Manifests of a schedule for Argo Rollouts (Rollout + AnalysisTemplates), Flagger (Canary +
MetricTemplates) and Istio (one VirtualService per step). Metric queries are templates over Istio's
standard metrics and kube-state-metrics, marked as such."""
from __future__ import annotations

import math
import re
from typing import Any

from ..errors import UsageError
from ..gate_config import GateSpec
from .policy import _EVENT_METRICS, GUARD_INTERVAL
from .rollback import _promql


_TEMPLATE_NOTE = "# TEMPLATE written by harness: adapt the metric names and labels to your telemetry"



def _k8s_name(text: str) -> str:
    """A DNS-1123 label (lower case, digits and '-', at most 63 characters) from a scenario or gate name."""
    return (re.sub(r"[^a-z0-9-]+", "-", str(text).lower()).strip("-") or "model")[:63].rstrip("-")


def _annotations(schedule: dict[str, Any]) -> dict[str, str]:
    return {"harness/owner": str(schedule.get("owner") or "none named in the scenario"),
            "harness/verdict": str(schedule.get("verdict")), "harness/run": str(schedule.get("run_id"))}


def _live_steps(schedule: dict[str, Any], fmt: str) -> list[dict[str, Any]]:
    steps = [s for s in schedule.get("steps", [])
             if s.get("kind", "live" if s.get("traffic_percent") else "shadow") == "live"]
    for s in steps:
        if float(s["traffic_percent"]) != int(s["traffic_percent"]):
            raise UsageError(f"step {s['name']}: {fmt} weights are whole percents, the schedule has "
                             f"{s['traffic_percent']:g} %; use whole percents in canary.steps_percent")
    return steps


def _exported_conditions(schedule: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    conds = (schedule.get("rollback") or {}).get("conditions", [])
    used = [c for c in conds if c["action"] == "rollback" and c.get("promql_template")]
    left = [f"not exported ({c['action']}): {c['gate']}: {c['rollback_when']}" for c in conds if c not in used]
    return used, left


def _spec_of(cond: dict[str, Any]) -> GateSpec:
    """A GateSpec again from a stored condition (to re-render its query for another tool's variables)."""
    return GateSpec(name=cond["gate"], metric=cond["metric"], aggregation=cond["aggregation"],
                    comparison=cond["comparison"], direction=cond["direction"], threshold=cond["gate_threshold"],
                    condition_key="")


def _query(cond: dict[str, Any], canary: str, stable: str, pods: str, window: str) -> str:
    body = _promql(_spec_of(cond), canary, stable, pods, window)
    return f"{_TEMPLATE_NOTE}\n# rollback when {cond['rollback_when']}\n{body}\n"


def _argo(schedule: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    name = _k8s_name(schedule.get("scenario") or "model")
    conds, left = _exported_conditions(schedule)
    canary = 'destination_service_name="{{args.canary-service}}", destination_service_namespace="{{args.namespace}}"'
    stable = 'destination_service_name="{{args.stable-service}}", destination_service_namespace="{{args.namespace}}"'
    pods = 'namespace="{{args.namespace}}", pod=~"{{args.rollout}}-{{args.canary-hash}}-.*"'
    address = "http://prometheus.istio-system.svc:9090"  # TEMPLATE

    def template(tname: str, chosen: list[dict[str, Any]], window_arg: bool, interval: str | None) -> dict[str, Any]:
        args: list[dict[str, Any]] = [{"name": "namespace", "value": "default"},
                                      {"name": "rollout", "value": name},
                                      {"name": "canary-service", "value": f"{name}-canary"},
                                      {"name": "stable-service", "value": f"{name}-stable"},
                                      {"name": "canary-hash"}]
        if window_arg:
            args.insert(0, {"name": "window"})
        metrics = []
        for c in chosen:
            metric: dict[str, Any] = {"name": _k8s_name(c["gate"])}
            if interval:
                metric["interval"] = interval
            else:
                metric["count"] = 1
            metric.update({"failureLimit": 0, "successCondition": c["success_condition"].replace("result", "result[0]"),
                           "provider": {"prometheus": {"address": address, "query": _query(
                               c, canary, stable, pods, "{{args.window}}" if window_arg else interval or "5m")}}})
            metrics.append(metric)
        return {"apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
                "metadata": {"name": tname,
                             "annotations": {"harness/template": "adapt the Prometheus address and queries"}},
                "spec": {"args": args, "metrics": metrics}}

    hash_arg = {"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}}
    steps: list[dict[str, Any]] = []
    for s in _live_steps(schedule, "Argo Rollouts setWeight"):
        steps.append({"setWeight": int(s["traffic_percent"])})
        duration = s.get("min_duration")
        steps.append({"pause": {"duration": duration} if duration else {}})
        if conds:
            steps.append({"analysis": {"templates": [{"templateName": f"{name}-gates"}],
                                       "args": [{"name": "window", "value": duration or "1h"}, hash_arg]}})
    canary_spec: dict[str, Any] = {
        "canaryService": f"{name}-canary", "stableService": f"{name}-stable",
        "trafficRouting": {"istio": {"virtualService": {"name": name, "routes": ["primary"]}}}, "steps": steps}
    guard = [c for c in conds if c["metric"] in _EVENT_METRICS]
    if guard:
        canary_spec["analysis"] = {"templates": [{"templateName": f"{name}-guard"}], "startingStep": 1,
                                   "args": [hash_arg]}
    rollout = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
               "metadata": {"name": name, "annotations": _annotations(schedule)},
               "spec": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                        "strategy": {"canary": canary_spec}}}
    docs = [rollout]
    if conds:
        docs.append(template(f"{name}-gates", conds, True, None))
    if guard:
        docs.append(template(f"{name}-guard", guard, False, GUARD_INTERVAL))
    comments = ["each step: setWeight, pause for the step's minimum duration, then one measurement of every gate "
                "over that window (AnalysisTemplate <name>-gates; failureLimit 0: one failed measurement aborts)",
                f"event counts (restarts, OOM) are also watched every {GUARD_INTERVAL} in the background "
                "(<name>-guard)" if guard else "no event-count gates: no background guard",
                "TEMPLATE parts: the Prometheus address, the queries (Istio standard metrics), service names, "
                "workloadRef and trafficRouting", *left]
    return docs, comments


def _flagger(schedule: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    name = _k8s_name(schedule.get("scenario") or "model")
    steps = _live_steps(schedule, "Flagger stepWeights")
    conds, left = _exported_conditions(schedule)
    durations = [s["min_duration_s"] for s in steps if s.get("min_duration_s")]
    interval_min = max(1, math.ceil(max(durations) / 60)) if durations else 60
    interval = f"{interval_min}m"
    canary = 'destination_workload_namespace="{{ namespace }}", destination_workload="{{ target }}"'
    stable = 'destination_workload_namespace="{{ namespace }}", destination_workload="{{ target }}-primary"'
    pods = 'namespace="{{ namespace }}", pod=~"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"'
    templates, metrics = [], []
    for c in conds:
        tname = _k8s_name(f"{name}-{c['gate']}")
        templates.append({"apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
                          "metadata": {"name": tname,
                                       "annotations": {"harness/template": "adapt the address and query"}},
                          "spec": {"provider": {"type": "prometheus", "address": "http://prometheus.istio-system:9090"},
                                   "query": _query(c, canary, stable, pods, "{{ interval }}")}})
        bound = "max" if c["direction"] == "max" else "min"
        metrics.append({"name": _k8s_name(c["gate"]), "templateRef": {"name": tname},
                        "thresholdRange": {bound: c["live_threshold"]}, "interval": interval})
    canary_doc = {"apiVersion": "flagger.app/v1beta1", "kind": "Canary",
                  "metadata": {"name": name, "annotations": _annotations(schedule)},
                  "spec": {"provider": "istio",
                           "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                           "service": {"port": 80},
                           "analysis": {"interval": interval, "threshold": 1,
                                        "stepWeights": [int(s["traffic_percent"]) for s in steps],
                                        "metrics": metrics}}}
    comments = [f"Flagger holds every step for one analysis interval: it is set to the longest step's minimum duration "
                f"({interval}), so no step is shorter than the schedule asks (steps: "
                + ", ".join(f"{s['name']} {s.get('min_duration')}" for s in steps) + ")",
                "threshold 1: the first failed check rolls back; the MetricTemplates' queries are TEMPLATES over "
                "Istio's standard metrics", "TEMPLATE parts: service.port, targetRef, the provider address", *left]
    return [canary_doc, *templates], comments


def _istio(schedule: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    name = _k8s_name(schedule.get("scenario") or "model")
    steps = _live_steps(schedule, "Istio route")
    docs = []
    for i, s in enumerate(steps, 1):
        w = int(s["traffic_percent"])
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                     "metadata": {"name": name, "annotations": {
                         "harness/step": f"{i} of {len(steps)}: {s['name']}",
                         "harness/min-duration": str(s.get("min_duration") or "unknown: no production rate"),
                         **_annotations(schedule)}},
                     "spec": {"hosts": [name], "http": [{"name": "primary", "route": [
                         {"destination": {"host": name, "subset": "stable"}, "weight": 100 - w},
                         {"destination": {"host": name, "subset": "canary"}, "weight": w}]}]}})
    conds = (schedule.get("rollback") or {}).get("conditions", [])
    comments = ["one VirtualService per step, all of the same name: apply them one at a time, in order, holding each "
                "for its harness/min-duration while the rollback conditions hold",
                "needs a DestinationRule with subsets 'stable' and 'canary' for host " + name,
                *[f"{c['action']} when {c['rollback_when']}" for c in conds]]
    return docs, comments

