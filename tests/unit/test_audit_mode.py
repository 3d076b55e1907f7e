"""Audit mode (the policyd.io/audit annotation), pure parts: how the annotation is read, that
an audited policy never changes a verdict, and what explain and matrix say of it. Real
packets and the log lines: tests/kernel/test_drop_log.py."""

from __future__ import annotations

import tempfile
from pathlib import Path

from policyd.compile.evaluate import Evaluator
from policyd.model.objects import AUDIT_ANNOTATION
from policyd.whatif import report
from policyd.whatif.matrix import compute, endpoint
from policyd.whatif.world import load_world

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {nodeName: node-1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default, labels: {app: other}}
spec: {nodeName: node-1, containers: [{name: c}]}
"""


def policy(name: str, audit: object, ingress: str = "[{from: [{podSelector: {matchLabels: {app: client}}}]}]") -> str:
    note = "" if audit is None else f", annotations: {{{AUDIT_ANNOTATION}: {audit!r}}}"
    return f"""---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: default{note}}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress: {ingress}
"""


def load_world_text(text: str):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "m.yaml").write_text(text)
        return load_world([Path(d) / "m.yaml"])


def test_the_annotation_is_true_or_false_and_anything_else_is_enforced_and_reported():
    w = load_world_text(PODS + policy("a", "true") + policy("b", "false") + policy("c", "yes") + policy("d", None))
    got = {p.name: p for p in w.policies}
    assert got["a"].audit and not got["b"].audit and not got["d"].audit
    assert not got["c"].audit and any("'yes' is neither" in n for n in got["c"].notes), got["c"].notes


def verdicts(text: str):
    w = load_world_text(PODS + text)
    pods = {p.name: p for p in w.pods}
    ev = Evaluator(w.compile())
    return w, pods, {n: ev.verdict(endpoint(pods[n]), endpoint(pods["web"])) for n in ("client", "other")}


def test_an_audited_policy_never_changes_a_verdict_and_explain_says_what_it_would_do():
    w, pods, v = verdicts(policy("try-it", "true"))
    assert v["client"].allowed and v["other"].allowed, "not enforced"
    assert v["other"].ingress.audit_would_drop == ("default/try-it",)
    assert v["client"].ingress.audit_would_drop == () and v["client"].ingress.audit_allowed_by is not None
    text = report.explain_text(v["other"])
    assert "ALLOWED" in text and "audit mode (not enforced): default/try-it would drop this" in text
    m = compute(w.compile(), w.pods)
    assert all(set(m.allowed[k]) == {p.key for p in w.pods} for k in m.allowed), "the matrix is as if it were absent"
    assert "audit mode, not enforced and not in this matrix" in report.audit_note(w.policies)


def test_next_to_an_enforced_policy_an_audited_one_is_not_consulted():
    _, _, v = verdicts(policy("enforced", None) + policy("try-all", "true", ingress="[{}]"))
    assert not v["other"].allowed and v["client"].allowed, "the enforced policy decides alone: nothing widened"
    plan = v["other"].ingress.plan
    assert plan is not None and plan.policies == ("default/enforced",) and plan.audit == ()
