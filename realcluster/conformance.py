"""The upstream NetworkPolicy e2e specs (`[sig-network] Netpol`, test/e2e/network/netpol of
the pinned Kubernetes release), run unchanged against policyd on the real cluster.

e2e.test and ginkgo are built from the same module as the cluster (scripts/k8s-build.sh);
the specs' only image, agnhost, is built from it too and loaded under the exact name the
framework asks for. The suite runs from the fabric namespace (where the API server is) with
parallel ginkgo processes; its probes are `kubectl exec`-style API execs of `agnhost
connect` to Service ClusterIPs, so kube-proxy's DNAT runs before policyd's hook.

Every spec that matches FOCUS runs, except those matched by SKIPS, each skip with the reason
this machine cannot run it; a skipped spec is reported as skipped, never as passed.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .cluster import Cluster, ClusterError
from .layout import IP_FAMILIES
from .paths import ROOT, k8s_bin, k8s_version

Say = Callable[[str], None]

FOCUS = r"\[sig-network\] Netpol"
# Spec text (regular expression) → why this machine cannot run it. Nothing else is skipped.
SKIPS = {
    r"\[Feature:SCTPConnectivity\]": "SCTP connectivity: this kernel has no SCTP sockets, so agnhost can neither serve nor "
                                     "connect over SCTP (the two Netpol specs about SCTP policies without SCTP traffic do run)",
}
PROCS = 4  # ginkgo processes: on 2 cores the specs mostly wait (pods starting, probe timeouts)
TIMEOUT = "40m"


@dataclass(frozen=True)
class SpecResult:
    name: str  # the full spec text as ginkgo prints it
    state: str  # passed | failed | skipped (ginkgo's states; panicked, timedout, … count as failed)
    seconds: float
    reason: str = ""  # why it was skipped, or the failure message's first line


@dataclass
class Report:
    config: str  # e.g. bridge-nftables
    cni: str
    backend: str
    proxy_mode: str
    kubernetes: str
    command: str
    date: str
    seconds: float  # the suite's wall time (ginkgo), not counting cluster up and chart install
    procs: int
    specs: list[SpecResult] = field(default_factory=list)
    ip_family: str = "ipv4"  # the cluster's (realcluster/layout.py IP_FAMILIES); older reports: ipv4

    @property
    def column(self) -> str:
        """This configuration's heading in the per-spec tables."""
        return f"{self.cni}/{self.backend}" + (f" {self.ip_family}" if self.ip_family != "ipv4" else "") \
            + (f" (kube-proxy {self.proxy_mode})" if self.proxy_mode != "iptables" else "")

    def count(self, state: str) -> int:
        return sum(s.state == state for s in self.specs)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0 and self.count("passed") > 0

    def summary(self) -> str:
        return (f"{self.config}{'' if self.ip_family == 'ipv4' else ' ' + self.ip_family}: {self.count('passed')} passed, "
                f"{self.count('failed')} failed, {self.count('skipped')} skipped in {self.seconds:.0f} s (Kubernetes {self.kubernetes}, "
                f"kube-proxy {self.proxy_mode})")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Report:
        d = json.loads(text)
        d["specs"] = [SpecResult(**s) for s in d["specs"]]
        return cls(**d)


def spec_name(spec: dict[str, Any]) -> str:
    return " ".join([*(spec.get("ContainerHierarchyTexts") or []), spec.get("LeafNodeText", "")]).strip()


def results(ginkgo_report: list[dict[str, Any]]) -> list[SpecResult]:
    """Every spec the focus selects, from ginkgo's JSON report, with our skip reasons."""
    out = []
    for suite in ginkgo_report:
        for spec in suite.get("SpecReports") or []:
            name = spec_name(spec)
            if spec.get("LeafNodeType") != "It" or not re.search(FOCUS, name):
                continue
            skip = next((why for pattern, why in SKIPS.items() if re.search(pattern, name)), "")
            state = spec["State"]
            if state == "skipped" and not skip:
                state, reason = "failed", "skipped, but it is on no skip list: every other Netpol spec must run"
            elif state == "skipped":
                reason = skip
            elif state == "passed":
                reason = ""
            else:
                message = ((spec.get("Failure") or {}).get("Message") or "").strip()
                reason = f"{state}: {message.splitlines()[0]}" if message else state
                state = "failed"
            out.append(SpecResult(name, state, spec.get("RunTime", 0) / 1e9, reason))
    return sorted(out, key=lambda s: s.name)


def run_suite(cluster: Cluster, backend: str, out_dir: Path, command: str, say: Say = print,
              procs: int = PROCS, narrow: str = "") -> Report:
    """The suite against the cluster as it is (the chart installed by the caller, or not:
    a control run). `narrow`: a regular expression the spec text must also match."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lay = cluster.layout
    log = out_dir / "ginkgo.log"
    skip = "|".join(SKIPS)
    focus = f"{FOCUS}.*({narrow})" if narrow else FOCUS
    argv = [str(k8s_bin("ginkgo")), "--no-color", "--silence-skips", "-p", f"--procs={procs}", f"--timeout={TIMEOUT}",
            f"--focus={focus}", f"--skip={skip}", "--json-report=report.json", f"--output-dir={out_dir}",
            str(k8s_bin("e2e.test")), "--",
            f"--kubeconfig={lay.kubeconfig}", "--provider=local", f"--kubectl-path={k8s_bin('kubectl')}",
            "--disable-log-dump", "--dump-logs-on-failure=false", f"--e2e-output-dir={out_dir}"]
    say(f"e2e: {procs} ginkgo processes, focus {focus!r}, skip {skip!r}; log {log}")
    started = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{lay.fabric}", "--", *argv], stdout=f, stderr=subprocess.STDOUT)
        last = started
        while proc.poll() is None:
            time.sleep(1)
            if time.monotonic() - last >= 30:
                done = log.read_text(errors="replace").count("•")
                say(f"e2e: {done} specs done ({time.monotonic() - started:.0f} s)")
                last = time.monotonic()
    seconds = time.monotonic() - started
    report_file = out_dir / "report.json"
    if not report_file.exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise ClusterError(f"the e2e suite wrote no report (ginkgo exit {proc.returncode}):\n{tail}")
    specs = [s for s in results(json.loads(report_file.read_text())) if not narrow or re.search(narrow, s.name)]
    return conclude(cluster, backend, command, seconds, procs, specs, out_dir, lambda m: say(f"e2e: {m}"))


def conclude(cluster: Cluster, backend: str, command: str, seconds: float, procs: int, specs: list[SpecResult],
             out_dir: Path, say: Say) -> Report:
    """A suite's report for this cluster: kept as out_dir/result.json, its failures said."""
    lay = cluster.layout
    report = Report(config=f"{lay.cni}-{backend}", cni=lay.cni, backend=backend, proxy_mode=lay.proxy_mode,
                    kubernetes=k8s_version(), command=command, date=time.strftime("%Y-%m-%d"), seconds=round(seconds, 1),
                    procs=procs, specs=specs, ip_family=lay.ip_family)
    (out_dir / "result.json").write_text(report.to_json())
    for s in report.specs:
        if s.state == "failed":
            say(f"FAILED {s.name}: {s.reason}")
    say(report.summary())
    return report


def command_line(cni: str, backend: str, proxy_mode: str, narrow: str = "", control: bool = False, ip_family: str = "ipv4") -> str:
    args = ["scripts/conformance.sh", "--cni", cni] + (["--without-policyd"] if control else ["--backend", backend])
    if proxy_mode != "iptables":
        args += ["--proxy-mode", proxy_mode]
    if ip_family != "ipv4":
        args += ["--ip-family", ip_family]
    if narrow:
        args += ["--focus", narrow]
    return shlex.join(args)


# --- the report in docs/ -------------------------------------------------------------------

CONFIGS = [("bridge", "nftables"), ("bridge", "iptables"), ("ptp", "nftables"), ("ptp", "iptables")]
RESULTS_DIR = ROOT / "docs" / "conformance"
DOC = ROOT / "docs" / "conformance.md"
MARK = {"passed": "✓ passed", "failed": "✗ FAILED", "skipped": "skipped"}
OWN_CASES = "<!-- own cases: kept by record() -->"  # conformance_doc.record()


CNP_RESULTS_DIR = RESULTS_DIR / "cnp"  # the ClusterNetworkPolicy suite's (cnp_conformance.py)


def document(reports: list[Report], controls: list[Report] | None = None) -> str:
    order = {f"{c}-{b}": i for i, (c, b) in enumerate(CONFIGS)}
    reports = sorted(reports, key=lambda r: (order.get(r.config, 99), r.config, r.proxy_mode, family_order(r)))
    lines = [
        "# Conformance: the upstream NetworkPolicy e2e suite",
        "",
        "The Kubernetes e2e specs for NetworkPolicy (`[sig-network] Netpol`, `test/e2e/network/netpol` of the pinned",
        "release), run unchanged against policyd installed by its Helm chart on the real two-node cluster of",
        "`scripts/cluster.sh` (kube-apiserver, kubelet, kube-proxy and containerd with the real CNI plugins, in network",
        "namespaces of this machine). `e2e.test`, `ginkgo` and the specs' test image `agnhost` are built from the same",
        "pinned Go module as the cluster (`scripts/k8s-build.sh`); nothing is pulled. The specs create their pods in",
        "random namespaces on both nodes and probe with `agnhost connect` through API execs, mostly to Service",
        "ClusterIPs, so cross-node traffic and kube-proxy's DNAT are part of every run.",
        "",
        "One configuration, from a fresh machine (it sets everything up, brings a cluster up, installs the chart, runs",
        "the suite, takes the cluster down, and with `--write` records the result here):",
        "",
        "    scripts/conformance.sh --cni bridge|ptp --backend nftables|iptables [--proxy-mode iptables|nftables]",
        "                           [--ip-family ipv4|ipv6|dual] [--write]",
        "",
        "`--ip-family ipv6` runs on an IPv6 single-stack cluster (pods, Services and nodes IPv6 only), `dual` on a",
        "dual-stack one with IPv4 primary; the specs probe the cluster's primary family.",
        "",
        "CI runs bridge/nftables and ptp/iptables as part of the README's test command (tests/cluster/test_conformance.py).",
        "",
        "Skipped, and why (every other spec the focus selects runs; a skipped spec is never counted as passed):",
        "",
        *[f"* `{pattern}`: {why}" for pattern, why in SKIPS.items()],
        "",
        "## Summary",
        "",
        "| configuration | IP family | kube-proxy | passed | failed | skipped | suite wall time | ginkgo processes | Kubernetes | date | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(f"| {r.cni} CNI, {r.backend} backend | {r.ip_family} | {r.proxy_mode} | {r.count('passed')} | {r.count('failed')} | "
                     f"{r.count('skipped')} | {r.seconds:.0f} s | {r.procs} | {r.kubernetes} | {r.date} | `{r.command} --write` |")
    names = sorted({s.name for r in reports for s in r.specs})
    by = [{s.name: s for s in r.specs} for r in reports]
    lines += ["", "## Every spec", "",
              "Result and the spec's own run time in each configuration.", "",
              "| spec | " + " | ".join(r.column for r in reports) + " |",
              "|---|" + "---|" * len(reports)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(cell(got.get(name)) for got in by) + " |")
    for r in controls or []:
        failed = [s for s in r.specs if s.state == "failed"]
        lines += ["", "## Control run: the same specs without policyd", "",
                  f"On the {r.cni} cluster with no NetworkPolicy enforcer installed ({r.date}, `{r.command} --write`, "
                  f"{r.seconds:.0f} s): {len(failed)} of {len(r.specs)} specs failed, as they must where nothing enforces "
                  "the policies, so the passes above are policyd's work, not the environment's.", "",
                  "| spec | without policyd |", "|---|---|",
                  *[f"| {s.name} | {MARK[s.state]} |" for s in r.specs]]
    return "\n".join(lines + failure_lines(reports)) + "\n"


def family_order(r: Report) -> int:
    """ipv4, ipv6, dual: the order of the reports' rows and columns."""
    return IP_FAMILIES.index(r.ip_family) if r.ip_family in IP_FAMILIES else len(IP_FAMILIES)


def cell(s: SpecResult | None) -> str:
    """One configuration's result of one test in the report's tables."""
    return "—" if s is None else MARK[s.state] + (f" {s.seconds:.0f} s" if s.state != "skipped" else "")


def failure_lines(reports: list[Report]) -> list[str]:
    failures = [(r, s) for r in reports for s in r.specs if s.state == "failed"]
    return ["", "## Failures", "", *[f"* {r.config}: {s.name}: {s.reason}" for r, s in failures]] if failures else []
