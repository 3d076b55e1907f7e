"""Build-time inputs of the network-policy-api conformance run (scripts/k8s-build.sh).

Two things, from the pinned module's `conformance/` directory:

* `adapt`: its `base/` copied into the Go driver's package (realcluster/npapi/conformance/base,
  ignored by git), with one file, `base/manifests.yaml` (the namespaces and StatefulSets every
  test probes), changed in the three ways of CHANGES. Every policy manifest the tests apply,
  and every test, stays the module's own.
* `index`: every test and subtest of its `tests/` package, and which subtests probe SCTP,
  read from the Go source (a subtest skipped with `-test.skip` prints nothing, so the runner
  needs the full list to report skips and to notice a subtest that silently did not run).

Standard library only: k8s-build.sh runs it with the system python3.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

UPSTREAM_AGNHOST = re.compile(r"registry\.k8s\.io/e2e-test-images/agnhost:[0-9.]+")
# A container that serves SCTP only: `agnhost porter` with one SERVE_SCTP_PORT_* variable.
SCTP_SERVER = re.compile(r'"/agnhost porter"\]\n *env:\n *- name: SERVE_SCTP_PORT_[^\n]+\n *value: "foo"\n')

# What `adapt` changes, and why (docs/conformance.md quotes these).
CHANGES = (
    "The image `registry.k8s.io/e2e-test-images/agnhost:2.45` becomes the agnhost built from the pinned Kubernetes "
    "module (`scripts/k8s-build.sh`): there is no image registry here, and the tests use only its `serve-hostname`, "
    "`netexec`, `connect` and `pause` commands.",
    "`/bin/bash -c` becomes `/bin/sh -c`: that agnhost image is busybox-based (upstream's is Alpine with bash); each "
    "command is a single `/agnhost …` invocation.",
    "The SCTP servers (`agnhost porter` with `SERVE_SCTP_PORT_*`) become `agnhost pause`: this kernel has no SCTP "
    "sockets, so porter would exit at start and its pods would never be Ready. The subtests that probe SCTP are "
    "skipped and listed below.",
)


def adapt_base_manifests(text: str, agnhost: str) -> str:
    """The three changes of CHANGES; an error if the text no longer has the shape they
    expect (a new upstream release needs a fresh look, not a silent half-adaptation)."""
    out, images = UPSTREAM_AGNHOST.subn(agnhost, text)
    out, shells = re.subn(r'\["/bin/bash", "-c", ', '["/bin/sh", "-c", ', out)
    out, sctp = SCTP_SERVER.subn('"/agnhost pause"]\n', out)
    left = [w for w in ("/bin/bash", "porter", "SERVE_SCTP", "e2e-test-images/agnhost:2") if w in out.replace(agnhost, "")]
    if not images or not shells or not sctp or left:
        raise ValueError(f"base/manifests.yaml is not shaped as expected ({images} images, {shells} shells, "
                         f"{sctp} SCTP servers rewritten; still present: {left})")
    return out


def adapt(source: Path, dest: Path, agnhost: str) -> None:
    """Copy the module's conformance/base to dest (replacing it), adapting base/manifests.yaml."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest)
    for f in dest.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)  # the module cache is read-only
    manifests = dest / "manifests.yaml"
    manifests.write_text(adapt_base_manifests(manifests.read_text(), agnhost))


def go_name(text: str) -> str:
    """The name `go test` gives a subtest: spaces become underscores."""
    return text.replace(" ", "_")


def index_tests(sources: dict[str, str]) -> list[dict[str, object]]:
    """Each ConformanceTest of the tests package: its ShortName, features and subtests, each
    subtest with whether its body probes with protocol "sctp"."""
    out: list[dict[str, object]] = []
    for _, text in sorted(sources.items()):
        for block in re.split(r"\nvar \w+ = suite\.ConformanceTest\{", text)[1:]:
            short = re.search(r'ShortName:\s*"([^"]+)"', block)
            if not short:
                raise ValueError(f"a ConformanceTest without a ShortName: {block[:200]!r}")
            features = re.findall(r"suite\.Support(?!edFeature)(\w+)", block.split("Test: func", 1)[0])  # the constant's value
            subtests = [{"name": go_name(body.split('"', 1)[0]), "sctp": '"sctp"' in body}
                        for body in re.split(r't\.Run\("', block)[1:]]
            out.append({"test": short.group(1), "features": features, "subtests": subtests})
    if len(out) < 20 or sum(len(t["subtests"]) for t in out) < 80:  # type: ignore[arg-type,misc]
        raise ValueError(f"found only {len(out)} conformance tests: has the tests package changed shape?")
    return out


def index(tests_dir: Path, dest: Path) -> None:
    dest.write_text(json.dumps(index_tests({f.name: f.read_text() for f in tests_dir.glob("*.go")}), indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python3 realcluster/npapi_build.py MODULE_CONFORMANCE_DIR DRIVER_DIR AGNHOST_IMAGE\n"
                 "  (writes DRIVER_DIR/base and DRIVER_DIR/tests.json)")
    module, driver = Path(sys.argv[1]), Path(sys.argv[2])
    adapt(module / "base", driver / "base", sys.argv[3])
    index(module / "tests", driver / "tests.json")
