"""The network-policy-api conformance run's pure parts: how the base manifests are adapted
(and refused when their shape changes), how the tests are indexed from Go source, and how
`go test -v` output becomes a result where nothing goes missing silently."""

from __future__ import annotations

import pytest

from realcluster.cnp_conformance import NO_SCTP, TEST, results, sctp_skips
from realcluster.npapi_build import adapt_base_manifests, index_tests

AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.63.0"
# A claim without the node-peers feature: how a test of an unclaimed feature is reported.
CLAIMED = ("ClusterNetworkPolicy", "ClusterNetworkPolicyNamedPorts")
BASE = """\
      containers:
        - name: harry-potter-client
          image: registry.k8s.io/e2e-test-images/agnhost:2.45
        - name: harry-potter-80
          image: registry.k8s.io/e2e-test-images/agnhost:2.45
          command: ["/bin/bash", "-c", "/agnhost serve-hostname --tcp --http=false --port 80"]
        - name: harry-potter-9003
          image: registry.k8s.io/e2e-test-images/agnhost:2.45
          command: ["/bin/bash", "-c", "/agnhost porter"]
          env:
          - name: SERVE_SCTP_PORT_{{ index .HostNetworkPorts 6 }}
            value: "foo"
        - name: next
"""


def test_base_manifests_get_the_three_changes_and_nothing_else():
    out = adapt_base_manifests(BASE, AGNHOST)
    assert out.count(AGNHOST) == 3 and "2.45" not in out
    assert '["/bin/sh", "-c", "/agnhost serve-hostname --tcp --http=false --port 80"]' in out
    assert '["/bin/sh", "-c", "/agnhost pause"]\n        - name: next' in out
    assert "SERVE_SCTP" not in out and "porter" not in out and "/bin/bash" not in out
    assert out.replace(AGNHOST, "registry.k8s.io/e2e-test-images/agnhost:2.45").splitlines()[:4] == BASE.splitlines()[:4]


@pytest.mark.parametrize("changed", [
    BASE.replace("agnhost porter", "agnhost porter --extra"),  # an SCTP server we would not recognise
    BASE.replace("registry.k8s.io/e2e-test-images/agnhost:2.45", "registry.k8s.io/other:1"),  # no agnhost at all
])
def test_a_base_manifest_of_another_shape_is_refused(changed):
    with pytest.raises(ValueError, match="not shaped as expected"):
        adapt_base_manifests(changed, AGNHOST)


GO = '''
var CNPAdminTierGress = suite.ConformanceTest{
	ShortName:   "CNPAdminTierGress",
	Features: []suite.SupportedFeature{
		suite.SupportClusterNetworkPolicy,
	},
	Test: func(t *testing.T, s *suite.ConformanceTestSuite) {
		t.Run("Should allow tcp", func(t *testing.T) {
			kubernetes.PokeServer(t, c, k, "ns", "pod", "tcp", ip, int32(80), cfg, true)
		})
		t.Run("Should allow sctp too", func(t *testing.T) {
			kubernetes.PokeServer(t, c, k, "ns", "pod", "tcp", ip, int32(80), cfg, true)
			kubernetes.PokeServer(t, c, k, "ns", "pod", "sctp", ip, int32(9003), cfg, true)
		})
	},
}

var CNPAdminTierEgressNodePeers = suite.ConformanceTest{
	ShortName:   "CNPAdminTierEgressNodePeers",
	Features: []suite.SupportedFeature{
		suite.SupportClusterNetworkPolicy,
		suite.SupportClusterNetworkPolicyEgressNodePeers,
	},
	Test: func(t *testing.T, s *suite.ConformanceTestSuite) {
		t.Run("Should deny nodes", func(t *testing.T) {
			kubernetes.PokeServer(t, c, k, "ns", "pod", "sctp", ip, int32(9003), cfg, false)
		})
	},
}
'''


def indexed() -> list[dict]:
    filler = "".join(f'\nvar T{i} = suite.ConformanceTest{{\n\tShortName: "T{i}",\n\tTest: func(t *testing.T) {{\n'
                     + "".join(f'\t\tt.Run("sub {j}", func(t *testing.T) {{}})\n' for j in range(4)) + "\t},\n}\n"
                     for i in range(20))
    return index_tests({"a.go": GO, "b.go": filler})


def test_index_reads_names_features_and_sctp_probes():
    tests = {t["test"]: t for t in indexed()}
    assert tests["CNPAdminTierGress"] == {"test": "CNPAdminTierGress", "features": ["ClusterNetworkPolicy"], "subtests": [
        {"name": "Should_allow_tcp", "sctp": False}, {"name": "Should_allow_sctp_too", "sctp": True}]}
    assert tests["CNPAdminTierEgressNodePeers"]["features"] == ["ClusterNetworkPolicy", "ClusterNetworkPolicyEgressNodePeers"]


def test_index_refuses_a_package_it_cannot_read():
    with pytest.raises(ValueError, match="changed shape"):
        index_tests({"a.go": GO})


def test_only_claimed_tests_sctp_subtests_are_skipped():
    pattern, skipped = sctp_skips(indexed(), CLAIMED)
    assert skipped == {("CNPAdminTierGress", "Should_allow_sctp_too")}  # the node-peers test is skipped by its feature
    assert pattern == f"^{TEST}$/^(CNPAdminTierGress)$/^(Should_allow_sctp_too)$"


def go_output(*lines: str) -> str:
    return "\n".join(["=== RUN   TestClusterNetworkPolicy", *lines, "--- FAIL: TestClusterNetworkPolicy (99.00s)"])


def test_results_judge_every_indexed_subtest():
    tests = indexed()
    _, skipped = sctp_skips(tests, CLAIMED)
    out = go_output(
        "=== RUN   TestClusterNetworkPolicy/T0/sub_1",
        "    helper.go:71: FAILED Command was [/agnhost connect --timeout=3s --protocol=tcp 10.0.0.1:80]",
        "    helper.go:72: Expected connection to be dropped from a/b to 10.0.0.1, but instead it returned REFUSED",
        "    helper.go:71: FAILED Command was [/agnhost connect --timeout=3s --protocol=tcp 10.0.0.1:80]",
        "    --- PASS: TestClusterNetworkPolicy/CNPAdminTierGress/Should_allow_tcp (3.20s)",
        "    --- SKIP: TestClusterNetworkPolicy/CNPAdminTierEgressNodePeers (0.00s)",
        "    --- PASS: TestClusterNetworkPolicy/T0/sub_0 (1.00s)",
        "    --- FAIL: TestClusterNetworkPolicy/T0/sub_1 (4.00s)",
        *[f"    --- PASS: TestClusterNetworkPolicy/T{i}/sub_{j} (1.00s)" for i in range(1, 20) for j in range(4)],
        # T0/sub_2 and sub_3 printed nothing: they did not run
    )
    got = {r.name: r for r in results(out, tests, skipped, features=CLAIMED)}
    assert got["CNPAdminTierGress / Should allow tcp"].state == "passed" and got["CNPAdminTierGress / Should allow tcp"].seconds == 3.2
    sctp = got["CNPAdminTierGress / Should allow sctp too"]
    assert sctp.state == "skipped" and sctp.reason == NO_SCTP
    nodes = got["CNPAdminTierEgressNodePeers (feature ClusterNetworkPolicyEgressNodePeers)"]
    assert nodes.state == "skipped" and nodes.reason == "not supported: feature ClusterNetworkPolicyEgressNodePeers is not claimed"
    assert got["T0 / sub 1"].state == "failed"
    assert got["T0 / sub 1"].reason == ("helper.go:71: FAILED Command was [/agnhost connect --timeout=3s --protocol=tcp 10.0.0.1:80]"
                                        " — helper.go:72: Expected connection to be dropped from a/b to 10.0.0.1, but instead it returned REFUSED")
    assert got["T0 / sub 2"].state == "failed" and got["T0 / sub 2"].reason.startswith("did not run")
    assert sum(r.state == "passed" for r in got.values()) == 1 + 1 + 19 * 4


def test_a_skipped_subtest_that_ran_or_a_feature_test_that_ran_fails():
    tests = indexed()
    _, skipped = sctp_skips(tests, CLAIMED)
    out = go_output("    --- PASS: TestClusterNetworkPolicy/CNPAdminTierGress/Should_allow_sctp_too (1.00s)",
                    "    --- PASS: TestClusterNetworkPolicy/CNPAdminTierEgressNodePeers (1.00s)")
    got = {r.name: r for r in results(out, tests, skipped, features=CLAIMED)}
    assert got["CNPAdminTierGress / Should allow sctp too"].state == "failed"
    assert got["CNPAdminTierEgressNodePeers (feature ClusterNetworkPolicyEgressNodePeers)"].state == "failed"


def test_the_node_peers_tests_run_now_that_the_feature_is_claimed():
    """policyd enforces `nodes` peers: their tests are claimed, run and judged like any other."""
    tests = indexed()
    _, skipped = sctp_skips(tests)
    out = go_output("    --- PASS: TestClusterNetworkPolicy/CNPAdminTierEgressNodePeers/sub_0 (1.00s)")
    got = {r.name: r for r in results(out, tests, skipped)}
    assert not [n for n in got if "feature" in n], "no test is left out for its feature"
