"""Golden dumps of `policyd render`: the whole ruleset for the examples, in both dispatch
modes, compared byte for byte. A change to render shows up here as a readable diff of nft
text; after checking it, refresh with `POLICYD_UPDATE_GOLDEN=1 pytest tests/unit`."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from policyd.cli import main

GOLDEN = Path(__file__).parent / "golden"
INPUT = ["examples/cluster", "examples/policies"]


def render(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["render", *[a for f in INPUT for a in ("-f", f)], "--node", "node-1", *args]) == 0
    return out.getvalue()


@pytest.mark.parametrize("mode", ["interface", "address"])
@pytest.mark.parametrize("output", ["nft", "json"])
def test_render_matches_golden_dump(mode, output):
    text = render("--mode", mode, "-o", output)
    path = GOLDEN / f"examples-node-1-{mode}.{output}"
    if os.environ.get("POLICYD_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden dump {path}; create it with POLICYD_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"render output differs from {path}"


def test_golden_dump_loads_into_the_fake_kernel_and_reads_back_equal():
    """The JSON dump is a transaction the (fake) kernel accepts as one batch."""
    import json

    from policyd.nft.fake import FakeBackend
    from policyd.nft.spell import Transaction

    doc = json.loads((GOLDEN / "examples-node-1-interface.json").read_text())
    tx = Transaction(commands=doc["nftables"][1:], ops=len(doc["nftables"]) - 1)
    fb = FakeBackend()
    fb.apply(tx)
    assert fb.ruleset is not None and fb.ruleset.chains and fb.ruleset.sets
