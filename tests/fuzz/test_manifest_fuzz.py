"""Mutated manifests never crash the CLI: `matrix`, `explain` and `render` (both backends)
answer every input with a verdict (0/1) or a clear problem (2), never an internal error (3)
or a traceback, and within 5 s. Inputs: the example cluster and policies, mutated by
hypothesis (a value replaced by one of another type or an odd one, a key dropped, a kind
or apiVersion changed), 2,000 per run (POLICYD_FUZZ_EXAMPLES to change it)."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import time
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyd.cli import main
from tests.helpers import ROOT

BASE = [d for f in ("examples/cluster/demo.yaml", "examples/policies/allow-frontend-to-backend.yaml",
                    "examples/policies/named-port.yaml", "examples/policies/ipblock-with-except.yaml",
                    "examples/policies/default-deny-egress-allow-dns.yaml")
        for d in yaml.safe_load_all((ROOT / f).read_text()) if d]
EXAMPLES = int(os.environ.get("POLICYD_FUZZ_EXAMPLES", "2000"))

ODD = st.one_of(
    st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True), st.text(max_size=20),
    st.sampled_from(["", "-", "a/b", "80", "10.0.0.1/33", "::/0", "TCP", "Ingress", "*", "\x00", "é", "In", "{}", "[]"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.just([None]), st.just([{}]), st.just({"matchLabels": None}),
)


def paths(x: Any, here: tuple = ()) -> list[tuple]:
    out = [here]
    if isinstance(x, dict):
        for k, v in x.items():
            out += paths(v, here + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out += paths(v, here + (i,))
    return out


def mutate(docs: list, choice: Any, value: Any, op: int) -> list:
    docs = copy.deepcopy(docs)
    all_paths = [(i, p) for i, d in enumerate(docs) for p in paths(d)]
    i, path = all_paths[choice % len(all_paths)]
    if not path:
        docs[i] = value
        return docs
    parent = docs[i]
    for step in path[:-1]:
        parent = parent[step]
    if op == 0 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return docs


def run(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            return main(argv)
        except SystemExit as e:  # argparse
            return int(e.code or 0)
        finally:
            assert "Traceback" not in err.getvalue()


COMMANDS = [
    ["matrix"],
    ["matrix", "--by", "pod", "-o", "json"],
    ["explain", "--from", "default/frontend-36f03", "--to", "default/backend-17fb8"],
    ["render", "--node", "node-1"],
    ["render", "--node", "node-1", "--backend", "iptables"],
]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(mutations=st.lists(st.tuples(st.integers(0, 10**6), ODD, st.integers(0, 3)), min_size=1, max_size=3),
       command=st.sampled_from(COMMANDS))
def test_mutated_manifests_never_crash(tmp_path_factory, mutations, command):
    """Each input goes through one command (all parse it the same way)."""
    docs = BASE
    for choice, value, op in mutations:
        docs = mutate(docs, choice, value, op)
    path = tmp_path_factory.mktemp("fuzz") / "in.yaml"
    path.write_text(yaml.safe_dump_all(docs, allow_unicode=True))
    started = time.process_time()  # this process's CPU, not the wall clock: a busy machine cannot fail it
    code = run([command[0], "-f", str(path), *command[1:]])
    assert code in (0, 1, 2), f"{command[0]} exited {code} (3: internal error)"
    assert time.process_time() - started < 5.0
