"""How a ginkgo JSON report becomes the conformance result (pure): only the focus counts, a
skip needs a reason from the skip list, anything but passed or a listed skip is a failure."""

from __future__ import annotations

from realcluster.conformance import Report, SpecResult, document, results


def spec(text: str, state: str, container: str = "[sig-network] Netpol NetworkPolicy between server and client",
         message: str = "") -> dict:
    out = {"ContainerHierarchyTexts": [container], "LeafNodeText": text, "LeafNodeType": "It", "State": state,
           "RunTime": 2_500_000_000}
    if message:
        out["Failure"] = {"Message": message + "\nmore detail"}
    return out


def test_results_keep_the_focus_and_judge_each_state():
    report = [{"SpecReports": [
        spec("should support a 'default-deny-ingress' policy", "passed"),
        spec("should enforce policy based on Ports", "panicked", message="runtime error"),
        spec("should enforce updated policy", "skipped"),  # not on the skip list
        spec("should support a 'default-deny-ingress' policy", "skipped",
             container="[sig-network] Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client using SCTP"),
        spec("should serve a basic endpoint", "skipped", container="[sig-network] Services"),  # outside the focus
        {"LeafNodeType": "ReportBeforeSuite", "LeafNodeText": "", "State": "passed"},
    ]}]
    got = {r.name.split(" NetworkPolicy ")[-1] + (" (sctp)" if "SCTP" in r.name else ""): r for r in results(report)}
    assert len(got) == 4
    assert got["between server and client should support a 'default-deny-ingress' policy"].state == "passed"
    panicked = got["between server and client should enforce policy based on Ports"]
    assert panicked.state == "failed" and panicked.reason == "panicked: runtime error"
    unlisted = got["between server and client should enforce updated policy"]
    assert unlisted.state == "failed" and "no skip list" in unlisted.reason
    sctp = got["between server and client using SCTP should support a 'default-deny-ingress' policy (sctp)"]
    assert sctp.state == "skipped" and "SCTP sockets" in sctp.reason and sctp.seconds == 2.5


def test_document_lists_every_spec_per_configuration():
    def rep(config: str, state: str) -> Report:
        cni, backend = config.split("-")
        return Report(config, cni, backend, "iptables", "v1.36.3", f"scripts/conformance.sh --cni {cni} --backend {backend}",
                      "2026-12-02", 120.0, 4, [SpecResult("[sig-network] Netpol a", "passed", 3.0),
                                               SpecResult("[sig-network] Netpol b", state, 5.0, "timedout: probe")])
    text = document([rep("ptp-iptables", "failed"), rep("bridge-nftables", "passed")])
    assert text.index("| bridge CNI, nftables") < text.index("| ptp CNI, iptables")
    assert "| [sig-network] Netpol b | ✓ passed 5 s | ✗ FAILED 5 s |" in text
    assert "* ptp-iptables: [sig-network] Netpol b: timedout: probe" in text
    assert Report.from_json(rep("bridge-nftables", "passed").to_json()) == rep("bridge-nftables", "passed")
    control = rep("control-bridge", "failed")
    text = document([rep("bridge-nftables", "passed")], [control])
    assert "## Control run: the same specs without policyd" in text and "1 of 2 specs failed" in text
