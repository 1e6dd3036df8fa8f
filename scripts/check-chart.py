#!/usr/bin/env python3
"""Render and lint charts/ebb offline (helm-python-sdk: Helm's own SDK, no helm binary, no
cluster), validate what it renders with kubernetes-validate --strict, and check that values
reach the objects. Exit status 0 when everything holds; every problem is printed."""

import json
import os
import subprocess
import sys
import tempfile

import helm_python as helm

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CHART = os.path.join(ROOT, "charts", "ebb")
problems = []


def docs(text):
    out = []
    for d in text.split("\n---\n"):
        d = d.strip().strip("-").strip()
        if d:
            out.append(d)
    return out


def check(cond, what):
    if not cond:
        problems.append(what)


report = helm.lint(CHART, strict=True)
for m in report.get("messages", []):
    if m["severity"] >= 2:
        problems.append(f"helm lint: {m['path']}: {m['error']}")
problems.extend(f"helm lint: {e}" for e in report.get("errors", []))

chart = helm.Chart.load(CHART)
crds = chart.crds
check(len(crds) == 6, f"the chart carries the 6 CRDs, found {len(crds)}")

values = {
    "image": {"registry": "registry.example.com/ebb", "tag": "1.2.3"},
    "activator": {"replicas": 3, "grace": 15},
    "ingressClass": "nginx",
    "config": {"config-domain": {"example.com": ""}, "config-autoscaler": {"stable-window": "30s"}},
}
for name, vals in [("defaults", None), ("overrides", values)]:
    rendered = chart.render(vals, name="ebb", namespace="serving", is_install=True)
    text = "\n---\n".join(rendered.values())
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, d in enumerate(docs(text) + [c["data"] for c in crds]):
            path = os.path.join(tmp, f"{i:03}.yaml")
            with open(path, "w") as f:
                f.write(d if isinstance(d, str) else str(d))
            files.append(path)
        run = subprocess.run(["kubernetes-validate", "--strict", "--quiet", *files], capture_output=True, text=True)
        if run.returncode != 0:
            problems.append(f"{name}: kubernetes-validate refused the rendered chart:\n{run.stdout}{run.stderr}")
    objs = [helm.values_from_yaml(d) for d in docs(text)]
    kinds = sorted({o["kind"] for o in objs})
    check("Deployment" in kinds and "ConfigMap" in kinds and "ClusterRole" in kinds, f"{name}: kinds {kinds}")
    for o in objs:
        ns = o["metadata"].get("namespace")
        check(ns in (None, "serving"), f"{name}: {o['kind']} {o['metadata']['name']} in namespace {ns}")
    if vals:
        deps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
        act = deps["ebb-activator"]["spec"]
        check(act["replicas"] == 3, "activator replicas from values")
        c = act["template"]["spec"]["containers"][0]
        check(c["image"] == "registry.example.com/ebb/activator:1.2.3", f"activator image {c['image']}")
        check({"name": "EBB_GRACE", "value": "15"} in c["env"], "activator grace from values")
        ctl = deps["ebb-controller"]["spec"]["template"]["spec"]["containers"][0]
        check({"name": "EBB_INGRESS_CLASS", "value": "nginx"} in ctl["env"], "ingress class from values")
        hooks = [o for o in objs if o["kind"].endswith("WebhookConfiguration")]
        check(len(hooks) == 2, f"both webhook configurations rendered, found {len(hooks)}")
        for h in hooks:
            for w in h["webhooks"]:
                check(w["clientConfig"]["service"]["namespace"] == "serving", f"{h['metadata']['name']}: webhook Service namespace")
        wh = deps["ebb-webhook"]["spec"]["template"]["spec"]["containers"][0]
        check(wh["image"] == "registry.example.com/ebb/webhook:1.2.3", f"webhook image {wh['image']}")
        cms = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
        check(cms["config-domain"].get("example.com") == "", "config-domain override")
        check(cms["config-autoscaler"].get("stable-window") == "30s", "config-autoscaler override")
        check(cms["config-deployment"].get("queue-sidecar-image") == "registry.example.com/ebb/queue-proxy:1.2.3", "queue-proxy image follows the image values")
        for o in objs:
            for s in o.get("subjects", []):
                check(s.get("namespace") == "serving", f"{o['kind']} {o['metadata']['name']}: subject namespace")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print("chart renders, lints and validates (defaults and overrides)")
