"""The network-policy-api ClusterNetworkPolicy conformance tests (its `conformance/tests`
package at the release pinned in realcluster/npapi/go.mod, unchanged) against policyd on the
real cluster.

scripts/k8s-build.sh builds `cnp-conformance.test` from our driver (realcluster/npapi/
conformance: the module's suite with the base manifests of realcluster/npapi_build.py) and
indexes every test and subtest into `cnp-conformance.tests.json`. The binary runs in the
fabric namespace against the cluster's API server; the suite creates its five namespaces and
StatefulSets (one spread over hostNetwork), applies each test's ClusterNetworkPolicies and
probes with `agnhost connect` through API execs, pod IP to pod IP.

Claimed features: FEATURES; the others are reported as not supported, with why. Subtests
that probe SCTP are skipped (`-test.skip`), because this kernel has no SCTP sockets. Every
other subtest of a claimed test must pass, and one that neither passed, failed nor was
skipped on purpose is a failure: nothing is silently left out.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cluster import Cluster, ClusterError
from .conformance import MARK, Report, SpecResult, cell, conclude, failure_lines
from .npapi_build import CHANGES
from .paths import ROOT, k8s_bin

Say = Callable[[str], None]

TEST = "TestClusterNetworkPolicy"
FEATURES = ("ClusterNetworkPolicy", "ClusterNetworkPolicyNamedPorts", "ClusterNetworkPolicyEgressNodePeers")
NOT_SUPPORTED: dict[str, str] = {}  # feature → why policyd does not claim it (none today)
NO_SCTP = "it probes SCTP, and this kernel has no SCTP sockets: agnhost can neither serve nor connect over SCTP"
TIMEOUT = "40m"
NPAPI_MOD = ROOT / "realcluster" / "npapi" / "go.mod"
CRD = ROOT / "charts" / "policyd" / "crds" / "clusternetworkpolicies.yaml"  # committed: scripts/chart-crd.sh
CRD_NAME = "clusternetworkpolicies.policy.networking.k8s.io"


def npapi_version() -> str:
    m = re.search(r"^\s*sigs\.k8s\.io/network-policy-api (v\S+)", NPAPI_MOD.read_text(), re.M)
    if not m:
        raise RuntimeError(f"{NPAPI_MOD}: no sigs.k8s.io/network-policy-api requirement")
    return m.group(1)


def index() -> list[dict[str, Any]]:
    """Every test and subtest of the suite (written by scripts/k8s-build.sh)."""
    return list(json.loads(k8s_bin("cnp-conformance.tests.json").read_text()))


def sctp_skips(tests: list[dict[str, Any]], features: tuple[str, ...] = FEATURES) -> tuple[str, set[tuple[str, str]]]:
    """The `-test.skip` pattern for the claimed tests' SCTP subtests, and those subtests.
    Go matches it level by level (test, subtest), so the pattern is a product of two
    alternations: `results` checks that nothing outside the set went missing."""
    skipped = {(t["test"], s["name"]) for t in tests if set(t["features"]) <= set(features)
               for s in t["subtests"] if s["sctp"]}
    if not skipped:
        return "", skipped
    return f"^{TEST}$/{_any_of({t for t, _ in skipped})}/{_any_of({s for _, s in skipped})}", skipped


def _any_of(names: set[str]) -> str:
    return "^(" + "|".join(sorted(re.escape(n) for n in names)) + ")$"


RESULT = re.compile(rf"^\s*--- (PASS|FAIL|SKIP): {TEST}/(\S+?)/(\S+) \(([\d.]+)s\)$", re.M)
TOP = re.compile(rf"^\s*--- (PASS|FAIL|SKIP): {TEST}/(\S+) \(([\d.]+)s\)$", re.M)


def results(output: str, tests: list[dict[str, Any]], skipped: set[tuple[str, str]], narrow: str = "",
            features: tuple[str, ...] = FEATURES) -> list[SpecResult]:
    """One result per subtest the index knows (and per test of an unclaimed feature), from
    `go test -v` output; with our reasons for skips."""
    got = {(m[1], m[2]): (m[0], float(m[3])) for m in RESULT.findall(output)}
    top = {m[1]: m[0] for m in TOP.findall(output)}
    failures = _failure_lines(output)
    out = []
    for t in tests:
        name = t["test"]
        if narrow and not re.search(narrow, name):
            continue
        unclaimed = [f for f in t["features"] if f not in features]
        if unclaimed:
            why = "; ".join(NOT_SUPPORTED.get(f, f"feature {f} is not claimed") for f in unclaimed)
            state = "skipped" if top.get(name) == "SKIP" else "failed"
            out.append(SpecResult(f"{name} (feature {', '.join(unclaimed)})", state, 0,
                                  f"not supported: {why}" if state == "skipped" else f"expected a feature skip, got {top.get(name)}"))
            continue
        for s in t["subtests"]:
            full = f"{name} / {s['name'].replace('_', ' ')}"
            verdict = got.get((name, s["name"]))
            if (name, s["name"]) in skipped:
                out.append(SpecResult(full, "skipped" if verdict is None else "failed", 0,
                                      NO_SCTP if verdict is None else f"ran although -test.skip names it ({verdict[0]})"))
            elif verdict is None:
                out.append(SpecResult(full, "failed", 0, "did not run (no result in the output)"))
            else:
                state = {"PASS": "passed", "FAIL": "failed", "SKIP": "failed"}[verdict[0]]
                reason = "" if state == "passed" else failures.get(f"{name}/{s['name']}", verdict[0].lower())
                out.append(SpecResult(full, state, verdict[1], reason))
    return out


def _failure_lines(output: str) -> dict[str, str]:
    """What each failing subtest printed first (its `=== RUN` section): the failed command
    and, when the helper said, what it expected instead (connect, or a drop and not a
    reject)."""
    out: dict[str, str] = {}
    current = ""
    for line in output.splitlines():
        m = re.match(rf"=== (?:RUN|CONT)\s+{TEST}/(\S+)", line)
        if m:
            current = m.group(1)
            continue
        said = re.match(r"\s+\S+\.go:\d+: (FAILED|Expected|Error)", line)
        if not (current and said):
            continue
        if current not in out:
            out[current] = line.strip()
        elif said.group(1) == "Expected" and out[current].count(".go:") == 1 and "FAILED Command" in out[current]:
            out[current] += " — " + line.strip()
    return out


def run_suite(cluster: Cluster, backend: str, out_dir: Path, command: str, say: Say = print, narrow: str = "") -> Report:
    """The suite against the cluster as it is (policyd installed by the caller)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lay = cluster.layout
    tests = index()
    pattern, skipped = sctp_skips(tests)
    argv = [str(k8s_bin("cnp-conformance.test")), "-test.v", f"-test.timeout={TIMEOUT}",
            f"-test.run=^{TEST}$" + (f"/{narrow}" if narrow else ""), f"-supported-features={','.join(FEATURES)}"]
    if pattern:
        argv.append(f"-test.skip={pattern}")
    log = out_dir / "go-test.log"
    say(f"cnp conformance: network-policy-api {npapi_version()}, features {','.join(FEATURES)}, "
        f"{len(skipped)} SCTP subtests skipped; log {log}")
    started = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{lay.fabric}", "--", "env", f"KUBECONFIG={lay.kubeconfig}", *argv],
                                stdout=f, stderr=subprocess.STDOUT)
        last = started
        while proc.poll() is None:
            time.sleep(1)
            if time.monotonic() - last >= 30:
                ran = log.read_text(errors="replace").count(f"=== RUN   {TEST}/")
                say(f"cnp conformance: {ran} tests and subtests started ({time.monotonic() - started:.0f} s)")
                last = time.monotonic()
    seconds = time.monotonic() - started
    output = log.read_text(errors="replace")
    if f"--- {'PASS' if proc.returncode == 0 else 'FAIL'}: {TEST} " not in output:
        raise ClusterError(f"the ClusterNetworkPolicy suite did not finish (exit {proc.returncode}):\n{output[-3000:]}")
    return conclude(cluster, backend, command, seconds, 1, results(output, tests, skipped, narrow), out_dir,
                    lambda m: say(f"cnp conformance: {m}"))


def install_crd(cluster: Cluster) -> None:
    """The chart's CRD alone: the control run's cluster can store ClusterNetworkPolicies that
    nothing enforces."""
    cluster.kubectl("create", "-f", "-", input=CRD.read_text())
    deadline = time.monotonic() + 60
    # (`kubectl wait --for=condition=Established` fails outright while the CRD has no status yet)
    while cluster.kubectl("get", f"crd/{CRD_NAME}", "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                          check=False).stdout.strip() != "True":
        if time.monotonic() > deadline:
            raise ClusterError(f"the CRD {CRD_NAME} was not Established within 60 s")
        time.sleep(0.5)


def command_line(cni: str, backend: str, proxy_mode: str, narrow: str = "", control: bool = False, ip_family: str = "ipv4") -> str:
    args = ["scripts/conformance.sh", "--suite", "cnp", "--cni", cni] + (["--without-policyd"] if control else ["--backend", backend])
    if proxy_mode != "iptables":
        args += ["--proxy-mode", proxy_mode]
    if ip_family != "ipv4":
        args += ["--ip-family", ip_family]
    if narrow:
        args += ["--focus", narrow]
    return shlex.join(args)


def section(reports: list[Report]) -> list[str]:
    """The ClusterNetworkPolicy part of docs/conformance.md (control runs kept apart)."""
    controls = [r for r in reports if r.config.startswith("control-")]
    reports = [r for r in reports if not r.config.startswith("control-")]
    lines = [
        "# Conformance: the network-policy-api ClusterNetworkPolicy suite",
        "",
        f"The `conformance/tests` package of `sigs.k8s.io/network-policy-api` {npapi_version()} (pinned in",
        "`realcluster/npapi/go.mod`), run against policyd installed by its Helm chart (with the CRD the chart carries) on",
        "the same real two-node cluster. `scripts/k8s-build.sh` builds it with `go test -c` from our driver",
        "(`realcluster/npapi/conformance`), which runs the module's own tests with the module's own policy manifests. The",
        "suite deploys five namespaces of two-replica StatefulSets (one with hostNetwork) and probes with `agnhost connect`",
        "through API execs, pod IP to pod IP, TCP and UDP, on both nodes.",
        "",
        "    scripts/conformance.sh --suite cnp --cni bridge|ptp --backend nftables|iptables [--write]",
        "",
        "CI runs bridge/nftables and ptp/iptables as part of the README's test command (tests/cluster/test_conformance.py).",
        "",
        f"Features claimed: {', '.join(f'`{f}`' for f in FEATURES)}. Not supported:",
        "",
        *[f"* `{f}`: {why}." for f, why in NOT_SUPPORTED.items()],
        "* `domainNames` peers: out of scope (the suite has no test of them). policyd reads them and fails closed, as the",
        "  API documents for a peer an implementation does not support: an Accept rule matches nothing through one, a",
        "  Deny or Pass rule with one denies all.",
        "",
        "The base manifests (`base/manifests.yaml`, the namespaces and StatefulSets) are adapted to this machine at build",
        "time (`realcluster/npapi_build.py`); nothing else is changed:",
        "",
        *[f"* {c}" for c in CHANGES],
        "",
        "Skipped: every subtest whose body probes SCTP (this kernel has no SCTP sockets: agnhost can neither serve nor",
        "connect over SCTP). A subtest is skipped whole, so the TCP and UDP",
        "probes of the mixed-protocol subtests (`…Gress`, `…PortRange`, `…EgressInlineCIDRPeers`, the node-peer",
        "'deny-egress' ones) go with it; policyd's own kernel tests cover CIDR peers, port ranges and the three tiers with",
        "real TCP and UDP packets (`tests/kernel/test_cluster_policy_packets.py`), and a `nodes` peer's Deny is checked",
        "with real packets to both nodes' addresses on the real cluster (`tests/cluster/test_agent.py`).",
        "",
        "## Summary",
        "",
        "| configuration | IP family | kube-proxy | passed | failed | skipped | suite wall time | Kubernetes | date | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(f"| {r.cni} CNI, {r.backend} backend | {r.ip_family} | {r.proxy_mode} | {r.count('passed')} | {r.count('failed')} | "
                     f"{r.count('skipped')} | {r.seconds:.0f} s | {r.kubernetes} | {r.date} | `{r.command} --write` |")
    names = list(dict.fromkeys(s.name for r in reports for s in r.specs))
    by = [{s.name: s for s in r.specs} for r in reports]
    reasons = {s.name: s.reason for r in reports for s in r.specs if s.state == "skipped"}
    lines += ["", "## Every test", "", "Test / subtest, and its result and run time in each configuration.", "",
              "| test / subtest | " + " | ".join(r.column for r in reports) + " |",
              "|---|" + "---|" * len(reports)]
    for name in names:
        why = f" ({'not supported' if reasons[name].startswith('not supported') else 'SCTP'})" if name in reasons else ""
        lines.append(f"| {name}{why} | " + " | ".join(cell(got.get(name)) for got in by) + " |")
    for r in controls:
        failed = [s for s in r.specs if s.state == "failed"]
        ran = [s for s in r.specs if s.state != "skipped"]
        lines += ["", "## Control run: the same tests without policyd", "",
                  f"On the {r.cni} cluster with the CRD and no enforcer ({r.date}, `{r.command} --write`, {r.seconds:.0f} s): "
                  f"{len(failed)} of the {len(ran)} subtests that ran failed, as those that need a Deny must where nothing "
                  "enforces; those that passed expect only connections that succeed anyway.", "",
                  "| test / subtest | without policyd |", "|---|---|",
                  *[f"| {s.name} | {MARK[s.state]} |" for s in ran]]
    return lines + failure_lines(reports)
