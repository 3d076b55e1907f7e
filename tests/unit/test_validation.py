"""What the API server would reject is reported with file, document and field path — all
problems at once — and an invalid policy never widens access."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyd.cli import main
from policyd.model.manifests import load
from policyd.model.problems import InvalidInput
from tests.helpers import ROOT

BAD = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ok, namespace: default}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: Bad_Name, namespace: default}
spec:
  podSelector:
    matchExpressions:
    - {key: app, operator: Maybe, values: [x]}
    - {key: app, operator: In}
    - {key: app, operator: Exists, values: [x]}
    matchLabels: {"bad key!": v, ok: "bad value!"}
  policyTypes: [Ingress, Sideways]
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.1/8, except: [10.0.0.0/24]}
    - ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/24, 10.0.0.0/8, "10.1.0.0/16"]}
    - ipBlock: {cidr: not-a-cidr}
    - ipBlock: {cidr: 10.0.0.0/8}
      podSelector: {}
    - {}
    ports:
    - {protocol: ICMP, port: 80}
    - {port: 0}
    - {port: 70000}
    - {port: 80, endPort: 79}
    - {port: http, endPort: 90}
    - {endPort: 90}
    - {port: Not_A_Name}
    - {port: "123456789012345678"}
"""


def paths_of(problems):
    return {p.path for p in problems}


def test_every_problem_is_reported_with_its_path(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    m = load([f])
    paths = paths_of(m.problems)
    expected = {
        "metadata.name",
        "spec.podSelector.matchExpressions[0].operator",
        "spec.podSelector.matchExpressions[1].values",
        "spec.podSelector.matchExpressions[2].values",
        "spec.podSelector.matchLabels[bad key!]",
        "spec.podSelector.matchLabels[ok]",
        "spec.policyTypes[1]",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "spec.ingress[0].from[1].ipBlock.except[0]",
        "spec.ingress[0].from[1].ipBlock.except[1]",
        "spec.ingress[0].from[2].ipBlock.cidr",
        "spec.ingress[0].from[3]",
        "spec.ingress[0].from[4]",
        "spec.ingress[0].ports[0].protocol",
        "spec.ingress[0].ports[1].port",
        "spec.ingress[0].ports[2].port",
        "spec.ingress[0].ports[3].endPort",
        "spec.ingress[0].ports[4].endPort",
        "spec.ingress[0].ports[5].endPort",
        "spec.ingress[0].ports[6].port",
        "spec.ingress[0].ports[7].port",
    }
    assert expected <= paths, sorted(expected - paths)
    assert "spec.ingress[0].from[1].ipBlock.except[2]" not in paths, "10.1.0.0/16 is a valid except"
    assert all(p.source == str(f) and p.doc == 1 for p in m.problems), "all in the second document"
    canonical = next(p for p in m.problems if p.path == "spec.ingress[0].from[0].ipBlock.cidr")
    assert "canonical" in canonical.message and "10.0.0.0/8" in canonical.message


def test_invalid_policy_isolates_both_ways_and_allows_nothing(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    bad = next(p for p in load([f]).policies if p.name == "Bad_Name")
    assert bad.invalid and bad.rules(bad.policy_types and next(iter(bad.policy_types))) == ()
    assert len(bad.policy_types) == 2, "unknown policyTypes: isolate in both directions"
    assert bad.pod_selector.is_empty, "an unreadable podSelector isolates the whole namespace"


def test_cli_lists_all_problems_and_exits_2(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    assert main(["matrix", "-f", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") >= 20
    assert f"{f}[doc 1] NetworkPolicy default/Bad_Name: spec.ingress[0].ports[3].endPort" in err


@pytest.mark.parametrize(
    "doc, path",
    [
        ("apiVersion: v1\nkind: Namespace\nmetadata: {name: Upper}", "metadata.name"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{ports: [{containerPort: 0}]}]}", "spec.containers[0].ports[0].containerPort"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{ports: [{containerPort: 80, name: a}, {containerPort: 81, name: a}]}]}", "spec.containers[0].ports[1].name"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIPs: [{ip: 300.1.1.1}]}", "status.podIPs[0].ip"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: s}", "kind"),
        # null is absent (the API server's nil pointer): a peer of nulls names no peer at all
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {ingress: [{from: [{namespaceSelector: null}]}]}", "spec.ingress[0].from[0]"),
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {ingress: [{ports: [{port: '80'}]}]}", "spec.ingress[0].ports[0].port"),
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}, egress: [{to: [{ipBlock: {cidr: 'fd00::/64', except: ['10.0.0.0/8']}}]}]}", "spec.egress[0].to[0].ipBlock.except[0]"),
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}, ingress: [{from: [], bogus: 1}]}", "spec.ingress[0].bogus"),
    ],
)
def test_single_problems(tmp_path, doc, path):
    f = tmp_path / "one.yaml"
    f.write_text(doc)
    assert path in paths_of(load([f]).problems)


def test_yaml_syntax_error_is_reported(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("kind: [unclosed")
    (p,) = load([f]).problems
    assert "not valid YAML" in p.message


def test_load_world_raises_with_all_problems(tmp_path):
    from policyd.whatif.world import load_world

    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    with pytest.raises(InvalidInput) as e:
        load_world([f])
    assert len(e.value.problems) >= 20


@pytest.mark.parametrize("args,message", [
    (["--interface-prefix", ""], "--interface-prefix ''"),
    (["--interface-prefix", 'ca"li'], "--interface-prefix 'ca\"li'"),
    (["--table", "a b"], "--table 'a b'"),
    (["--backend", "iptables", "--table", "toolongname"], "--table 'toolongname'"),
])
def test_render_refuses_names_the_kernel_would_not_take(args, message, capsys):
    """Names from the command line never reach nft or iptables text unchecked."""
    from policyd.cli import main

    root = Path(__file__).resolve().parents[2]
    assert main(["render", "-f", str(root / "examples" / "cluster"), "--node", "node-1", *args]) == 2
    assert message in capsys.readouterr().err


def _bomb() -> str:
    """A "billion laughs": 9 levels of 9 aliases, 9^9 strings once expanded, ~400 bytes."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, c in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{c}: &{c} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


BOMB = _bomb()


@pytest.mark.parametrize("text,message", [
    (BOMB, "expands to more than 1000000 YAML nodes"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 100000000}\n", "at most 10000 pods"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: -1}\n", "non-negative integer"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 1.5}\n", "non-negative integer"),
    ("apiVersion: v1\nkind: List\nitems: 3\n", "must be a list of objects"),
])
def test_input_that_would_cost_too_much_is_refused_quickly(tmp_path, text, message):
    """A few hundred bytes must not take gigabytes or minutes: alias bombs, huge or odd
    replica counts are problems with a clear message (exit 2), found in well under a second."""
    import time

    path = tmp_path / "in.yaml"
    path.write_text(text)
    started = time.process_time()  # this process's CPU, not the wall clock: a busy machine cannot fail it
    m = load([path])
    assert time.process_time() - started < 1.0
    assert any(message in p.message for p in m.problems), m.problems


def test_a_deployment_expands_to_unique_pod_names_at_any_allowed_replica_count(tmp_path):
    """5-hex-character names collide from a few hundred replicas on; a collision once made a
    500-replica Deployment a "duplicate Pod" problem. The first names stay as they were."""
    path = tmp_path / "d.yaml"
    path.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
                    "spec: {replicas: 10000, template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c}]}}}\n")
    m = load([path])
    assert not m.problems, m.problems[:3]
    names = [p.name for p in m.pods]
    assert len(names) == len(set(names)) == 10000 and all(n.startswith("web-") and len(n) == 9 for n in names)
    one = tmp_path / "one.yaml"
    one.write_text(path.read_text().replace("10000", "1"))
    assert load([one]).pods[0].name == names[0]


def test_non_utf8_file_is_a_problem(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in load([tmp_path / "bin.yaml"]).problems[0].message


def test_endless_and_device_inputs_cost_no_more_than_a_real_manifest(tmp_path):
    """The size cap applies while reading (a 2 GiB file once took 4.2 GB before it was
    refused, /dev/zero grew without bound); devices are refused; pipes are read."""
    import os
    import resource
    import threading

    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(64 * 2**20)  # sparse: 64 MiB of zeros on no disk
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert "larger than the 16 MiB" in load([big]).problems[0].message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 40 * 1024, "read no more than the cap"
    assert "not a file" in load(["/dev/zero"]).problems[0].message
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def write() -> None:
        fifo.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: piped}\n")

    t = threading.Thread(target=write)
    t.start()
    m = load([fifo])
    t.join()
    assert not m.problems and [n.name for n in m.namespaces] == ["piped"]


def test_the_what_if_tools_load_neither_the_lab_library_nor_the_agent():
    """`policyd matrix`/`explain`/`render` run on a machine without kopf or the lab's needs:
    only the CLI registrations of `lab` and `run` are imported, not what they drive."""
    import subprocess
    import sys

    code = ("import sys, io, contextlib\nfrom policyd.cli import main\n"
            "for argv in (['matrix', '-f', 'examples'], ['render', '-f', 'examples', '--node', 'node-1']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n        assert main(argv) == 0\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes', 'aiohttp') "
            "or m.startswith(('policyd.lab.', 'policyd.kube.')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2]).stdout.split()
    # lab.families: the --ip-family choices the registration offers (pure, a few lines)
    assert set(out) <= {"policyd.lab.cli", "policyd.lab.records", "policyd.lab.families", "policyd.kube.cli", "policyd.kube.settings"}, out


DUAL_STACK = """
apiVersion: v1
kind: Pod
metadata: {name: both, namespace: default, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {podIPs: [{ip: 10.244.0.5}, {ip: "fd00::5"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: six, namespace: default, labels: {app: b}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {podIPs: [{ip: "fd00::6"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: four, namespace: default, labels: {app: c}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {podIPs: [{ip: 10.244.0.7}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: default}
spec: {podSelector: {}}
"""


def test_explain_agrees_with_matrix_on_a_pod_reaching_itself_and_keeps_to_one_family(tmp_path, capsys):
    """A pod reaches itself whatever the policies (matrix and the docs say so; explain once
    said DENIED); a pod named as one end takes its address of the other end's family; ends
    with no family in common are refused (exit 2), not answered."""
    from policyd.cli import main

    f = tmp_path / "c.yaml"
    f.write_text(DUAL_STACK)
    assert main(["explain", "-f", str(f), "--from", "default/four", "--to", "default/four"]) == 0
    assert "a pod always reaches itself" in capsys.readouterr().out
    assert main(["explain", "-f", str(f), "--from", "default/both", "--to", "default/six"]) == 1
    assert "(fd00::5) → default/six (fd00::6)" in capsys.readouterr().out
    assert main(["explain", "-f", str(f), "--from", "fd00::6", "--to", "default/both"]) == 1
    assert "→ default/both (fd00::5)" in capsys.readouterr().out
    assert main(["explain", "-f", str(f), "--from", "default/four", "--to", "default/six"]) == 2
    assert main(["explain", "-f", str(f), "--from", "10.244.0.7", "--to", "fd00::6"]) == 2
    assert "share no address family" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--node-prefix", "40"], ["--node-prefix", "8"], ["--cluster-cidr", "nonsense"],
                                  ["--cluster-cidr", "10.0.0.0/30"], ["--cluster-cidr", "10.0.0.1/16"]])
def test_bad_addressing_options_are_usage_errors_not_internal_ones(args, capsys):
    """These reached the allocator and ended as exit 3 ("internal error")."""
    from policyd.cli import main

    assert main(["matrix", "-f", str(Path(__file__).parents[2] / "examples" / "cluster"), *args]) == 2
    assert args[0] in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["matrix", "--port", "0"], ["explain", "--port", "99999"], ["matrix", "--port", "http"]])
def test_a_port_outside_1_to_65535_is_refused(argv, capsys):
    """As the API refuses such a port in a policy, the what-if tools refuse it as a question
    (issue 42, N9): exit 2 with the reason."""
    from policyd.cli import main

    with pytest.raises(SystemExit) as e:
        main([*argv, "-f", str(ROOT / "examples" / "policies")])
    assert e.value.code == 2 and "port" in capsys.readouterr().err


def test_names_reach_the_terminal_escaped(tmp_path, capsys):
    """ESC and a right-to-left override in a name are printed as escapes (issue 42, N9)."""
    from policyd.cli import main

    (tmp_path / "p.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: \"a\\e[31mb\\u202ec\"}\nspec: {containers: [{name: c}]}\n")
    assert main(["matrix", "-f", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\u202e" not in err and "a\\x1b[31mb\\u202ec" in err, err


def test_a_directory_of_nothing_readable_says_so(tmp_path, capsys):
    """A directory whose only entry is a link to /dev/zero: refused by name, not "(no pods)";
    a directory without any manifest: said (issue 42, N9)."""
    from policyd.cli import main

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "zero.yaml").symlink_to("/dev/zero")
    assert main(["matrix", "-f", str(tmp_path / "d")]) == 2
    assert "zero.yaml: : not a file" in capsys.readouterr().err
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "README").write_text("not a manifest")
    assert main(["matrix", "-f", str(tmp_path / "e")]) == 2
    assert "no manifest in this directory" in capsys.readouterr().err


def test_a_flood_of_problems_is_capped_with_a_count(tmp_path, capsys):
    """Thousands of bad documents: the first 100 problems and a count (issue 42, N10)."""
    from policyd.cli import MAX_SHOWN, main

    (tmp_path / "p.yaml").write_text("---\n[]\n" * 5000)
    assert main(["matrix", "-f", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == MAX_SHOWN + 2 and err[-2].startswith("error: … and 4900 more"), err[-3:]
