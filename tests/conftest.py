"""Shared helpers (a world from inline YAML) and the markers by directory: everything under
tests/kernel, tests/e2e and tests/cluster needs root (network namespaces, nftables, real
processes) and is marked `kernel`; tests/cluster is also marked `cluster`. The root-free lane
is `pytest -m "not kernel"`. Without root, selecting a `kernel` test is an error at the end of
collection (after `-m` has deselected what it deselects), never a silent skip."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from policyd.whatif.world import World, load_world

ROOT_DIRS = {"kernel", "e2e", "cluster"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    for item in items:
        top = Path(item.fspath).relative_to(tests).parts[0]
        if top in ROOT_DIRS:
            item.add_marker(pytest.mark.kernel)
        if top == "cluster":
            item.add_marker(pytest.mark.cluster)
    # The upstream suites run in the background (tests/cluster/test_conformance.py): started
    # after every other test of the real clusters and every test that asserts a time bound
    # (marked `quiet`: the background suites keep both CPUs busy), judged by the session's
    # last test, so the other tests that need no cluster run beside them.
    start = [i for i in items if i.name == "test_upstream_suites_start"]
    judge = [i for i in items if i.name == "test_upstream_suites"]
    quiet = [i for i in items if i.get_closest_marker("quiet") is not None and i not in start and i not in judge]
    rest = [i for i in items if i not in start and i not in judge and i not in quiet]
    last_cluster = max((n for n, i in enumerate(rest) if i.get_closest_marker("cluster")), default=-1)
    items[:] = rest[:last_cluster + 1] + quiet + start + rest[last_cluster + 1:] + judge


def pytest_collection_finish(session: pytest.Session) -> None:
    """Tests that need root, selected without root: stop with what to run instead."""
    if os.geteuid() == 0:
        return
    need = [i.nodeid for i in session.items if i.get_closest_marker("kernel") is not None]
    if need:
        pytest.exit(f"{len(need)} selected tests need root (network namespaces, nftables, real processes), e.g. {need[0]}; "
                    'without root run the root-free lane: pytest -m "not kernel"', returncode=1)


@pytest.fixture
def world(tmp_path: Path):
    """world(yaml_text, ...) → World, from manifests written to a temporary directory."""

    def build(*docs: str) -> World:
        for i, text in enumerate(docs):
            (tmp_path / f"m{i}.yaml").write_text(textwrap.dedent(text))
        return load_world([tmp_path])

    return build
