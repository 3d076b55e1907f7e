"""The readable dump of `policyd render -o nft` is real nft syntax: loaded with `nft -f`
into a throwaway namespace, the kernel holds exactly what the agent would have sent as JSON."""

from __future__ import annotations

import contextlib
import io
import uuid

import pytest

from policyd.cli import main
from policyd.dataplane.ops import plan
from policyd.lab.netns import add_namespace, delete_namespaces, entered, sh
from policyd.nft.backend import NftBackend
from policyd.nft.fake import FakeBackend

ARGS = ["-f", "examples/cluster", "-f", "examples/policies", "--node", "node-1"]


def render(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["render", *ARGS, *args]) == 0
    return out.getvalue()


@pytest.mark.parametrize("mode", ["interface", "address"])
def test_text_dump_loads_and_equals_the_json_transaction(mode, tmp_path):
    import json

    from policyd.nft.spell import Transaction

    prefix = f"pdt{uuid.uuid4().hex[:6]}"
    ns = f"{prefix}-n"
    try:
        add_namespace(ns)
        path = tmp_path / "ruleset.nft"
        path.write_text(render("--mode", mode, "-o", "nft"))
        sh("nft", "-f", str(path), ns=ns)
        with entered(ns):
            from_text = NftBackend().read()
        doc = json.loads(render("--mode", mode, "-o", "json"))
        fake = FakeBackend()
        fake.apply(Transaction(commands=doc["nftables"][1:]))
        from_json = fake.read()
        assert from_text is not None and from_json is not None
        assert from_text.same_as(from_json), "the kernel lists what the JSON wrote, rule by rule"
        assert not plan(from_text, from_json), "nothing to do"
    finally:
        delete_namespaces(prefix)
