"""Shared helpers: build a world from inline YAML."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from policyd.world import World, load_world


@pytest.fixture
def world(tmp_path: Path):
    """world(yaml_text, ...) → World, from manifests written to a temporary directory."""

    def build(*docs: str) -> World:
        for i, text in enumerate(docs):
            (tmp_path / f"m{i}.yaml").write_text(textwrap.dedent(text))
        return load_world([tmp_path])

    return build
