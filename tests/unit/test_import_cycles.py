"""No two modules import each other (docs/architecture.md): a circle of two hides which of
them is the lower layer, and import-linter's layers see only packages."""

from __future__ import annotations

import grimp
import pytest


@pytest.mark.parametrize("package", ["policyd", "realcluster", "harness"])
def test_no_two_modules_import_each_other(package: str) -> None:
    graph = grimp.build_graph(package, cache_dir=None)  # no cache: the lane may not write here
    circles = sorted({tuple(sorted((m, n))) for m in graph.modules for n in graph.find_modules_directly_imported_by(m)
                      if m in graph.find_modules_directly_imported_by(n)})
    assert not circles, circles
