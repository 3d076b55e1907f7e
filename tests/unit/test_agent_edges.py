"""Errors at the agent's edges are said as what they are: a bind that fails for another reason
than a running agent is not "another agent holds it"; an unreadable route table is logged
(local pods then wait for their interface), once."""

from __future__ import annotations

import errno
import logging
import socket

import pytest

from policyd.reconcile import interfaces, presence


def test_a_claim_that_fails_for_another_reason_says_so(monkeypatch: pytest.MonkeyPatch):
    def refuse(self, address):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(socket.socket, "bind", refuse)
    with pytest.raises(PermissionError):
        presence.claim("nftables", "policyd")


def test_a_held_claim_is_still_just_held():
    first = presence.claim("nftables", "pdtest0")
    assert first is not None
    try:
        assert presence.claim("nftables", "pdtest0") is None and presence.held("nftables", "pdtest0")
    finally:
        first.close()


def test_an_unreadable_route_table_is_logged_once(monkeypatch: pytest.MonkeyPatch, tmp_path, caplog):
    monkeypatch.setitem(interfaces.ROUTES, 4, str(tmp_path))  # a directory: IsADirectoryError
    monkeypatch.setitem(interfaces.ROUTES, 6, str(tmp_path / "absent"))  # IPv6 off: nothing to say
    monkeypatch.setattr(interfaces, "_said", set())
    with caplog.at_level(logging.WARNING, logger="policyd.interfaces"):
        assert interfaces.host_routes() == {}
        assert interfaces.host_routes() == {}
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and str(tmp_path) in said[0] and "stay pending" in said[0], said
