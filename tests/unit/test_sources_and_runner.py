"""The manifest-directory source (events from file changes) and the sync runner's timing
rules (coalescing, backoff, periodic full resync), without a kernel."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from policyd.compile.engine import Compiler
from policyd.dataplane.config import DispatchMode, RenderConfig
from policyd.model.events import Delete, Upsert
from policyd.model.selectors import parse_selector_text as parse_pod_selector
from policyd.nft.fake import FakeBackend
from policyd.reconcile.runner import SyncRunner
from policyd.reconcile.syncer import Syncer
from policyd.sources.manifest_dir import ManifestDirSource

POD = """apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}
spec: {{nodeName: node-1}}
status: {{podIPs: [{{ip: {ip}}}]}}
"""


def write(path, text):
    tmp = path.with_name("." + path.name)
    tmp.write_text(text)
    os.replace(tmp, path)


def test_source_turns_file_changes_into_events(tmp_path):
    src = ManifestDirSource(tmp_path)
    assert src.poll() == []
    write(tmp_path / "a.yaml", POD.format(name="a", app="web", ip="10.244.0.2"))
    write(tmp_path / "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n")
    ev = src.poll()
    assert sorted(type(e).__name__ + ":" + e.obj.name for e in ev) == ["Upsert:a", "Upsert:default"]
    assert src.poll() == [], "nothing changed: no events"
    write(tmp_path / "a.yaml", POD.format(name="a", app="db", ip="10.244.0.2"))
    (ev,) = src.poll()
    assert isinstance(ev, Upsert) and ev.obj.labels == {"app": "db"}
    (tmp_path / "a.yaml").unlink()
    assert src.poll() == [Delete("Pod", "default/a")]


def test_an_object_defined_in_two_files_is_taken_from_the_first_and_reported(tmp_path):
    """matrix refuses a duplicate definition; the lab's agent cannot refuse its whole state,
    so it keeps one (the first file by name), ignores the other and says so; a second file
    once silently won."""
    src = ManifestDirSource(tmp_path)
    write(tmp_path / "a.yaml", POD.format(name="p", app="web", ip="10.244.0.2"))
    src.poll()
    write(tmp_path / "b.yaml", POD.format(name="p", app="db", ip="10.244.0.2"))
    assert src.poll() == []
    (problem,) = src.problems["b.yaml"]
    assert "duplicate Pod default/p: already defined in a.yaml" in str(problem)
    (tmp_path / "a.yaml").unlink()
    (ev,) = src.poll()
    assert isinstance(ev, Upsert) and ev.obj.labels == {"app": "db"} and src.problems == {}, "b.yaml's now the only one"


def test_source_survives_a_file_removed_while_it_scans(tmp_path, monkeypatch):
    """`lab delete` may remove a manifest between the directory listing and its stat(): the
    lab agent crashed on that (it was the full-suite "agents did not apply generation" flake)."""
    import policyd.sources.manifest_dir as md

    src = ManifestDirSource(tmp_path)
    write(tmp_path / "a.yaml", POD.format(name="a", app="web", ip="10.244.0.2"))
    write(tmp_path / "b.yaml", POD.format(name="b", app="web", ip="10.244.0.3"))
    assert len(src.poll()) == 2
    real = os.scandir

    class Racing:
        def __init__(self, path):
            self.entries = list(real(path))  # the listing still names b.yaml …
            (tmp_path / "b.yaml").unlink()  # … which is removed before its stat()

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(md.os, "scandir", Racing)
    assert src.poll() == [Delete("Pod", "default/b")]


def test_lab_alive_sees_a_zombie_as_dead():
    """The lab checks its agents with `alive`; a crashed agent is a zombie until reaped."""
    import subprocess
    import sys

    from policyd.lab.lab import alive

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(proc.pid)
    proc.wait()
    assert not alive(proc.pid) and alive(os.getpid())


def test_source_keeps_the_last_good_version_of_a_broken_file(tmp_path):
    src = ManifestDirSource(tmp_path)
    write(tmp_path / "a.yaml", POD.format(name="a", app="web", ip="10.244.0.2"))
    src.poll()
    write(tmp_path / "a.yaml", POD.format(name="a", app="bad value!", ip="10.244.0.2"))
    assert src.poll() == [], "an invalid edit changes nothing"
    assert "a.yaml" in src.problems and "label value" in str(src.problems["a.yaml"][0])
    write(tmp_path / "a.yaml", POD.format(name="a", app="ok", ip="10.244.0.2"))
    (ev,) = src.poll()
    assert ev.obj.labels == {"app": "ok"} and not src.problems


def test_source_ignores_dot_files_and_reads_the_generation(tmp_path):
    src = ManifestDirSource(tmp_path)
    (tmp_path / ".half-written.yaml").write_text("kind: Pod\nmetadata: {")
    (tmp_path / "generation").write_text("7")
    assert src.poll() == [] and src.generation == 7 and not src.problems


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def runner(**kw):
    c = Compiler("node-1")
    clock = Clock()
    s = Syncer(c, FakeBackend(), RenderConfig(mode=DispatchMode.ADDRESS))
    return SyncRunner(s, clock=clock, **kw), clock, s


def test_runner_coalesces_requests_within_the_minimum_interval():
    r, clock, s = runner(min_interval=0.5, resync_every=100)
    assert r.run_once() is not None, "first sync at once"
    r.request()
    r.request()
    clock.now = 0.2
    assert r.run_once() is None, "too soon: batched"
    clock.now = 0.6
    assert r.run_once() is not None
    assert r.run_once() is None, "nothing requested"
    assert r.stats.syncs == 2


def test_runner_backs_off_after_a_failure_then_syncs_full():
    r, clock, s = runner(backoff=(0.1, 1.0), resync_every=100)
    r.run_once()
    import ipaddress

    from policyd.model.objects import Namespace, NetworkPolicy, Pod
    from policyd.model.selectors import MATCH_ALL

    s.compiler.upsert_namespace(Namespace("default", {}))
    s.compiler.upsert_policy(NetworkPolicy("default", "deny", MATCH_ALL))
    s.compiler.upsert_pod(Pod("default", "a", {}, "node-1", (ipaddress.ip_address("10.244.0.2"),)))
    s.backend.fail_next = True
    r.request()
    assert r.run_once() is None and r.stats.consecutive_failures == 1
    assert "injected failure" in r.stats.last_error
    clock.now = 0.05
    assert r.run_once() is None, "still backing off"
    clock.now = 0.11
    res = r.run_once()
    assert res is not None and res.full and r.stats.consecutive_failures == 0


def test_runner_resyncs_periodically():
    r, clock, s = runner(resync_every=10)
    assert r.run_once().full  # type: ignore[union-attr]
    clock.now = 5
    assert r.run_once() is None
    clock.now = 10.5
    res = r.run_once()
    assert res is not None and res.full and res.ops == 0


def test_next_due_is_when_run_once_would_sync_so_an_idle_loop_sleeps_until_then():
    """The agent's sync loop sleeps until `next_due` (or an event): every sleep must end no
    later than the runner turns due, and an idle runner must not be due before its check."""
    r, clock, s = runner(min_interval=0.5, resync_every=100, check_every=1.0, backoff=(0.2, 1.0))
    assert r.next_due(0.0) <= 0.0 and r.due(0.0), "the first sync is requested at start"
    r.run_once()
    assert r.next_due(0.0) == 1.0, "idle: the next drift check"
    assert not r.due(0.99) and r.due(1.0)
    r.request()
    assert r.next_due(0.1) == 0.5, "a request waits out the minimum interval"
    assert not r.due(0.49) and r.due(0.5)
    clock.now = 0.5
    r.run_once()
    s.pending.add("cali-late")  # an interface nothing announces: polled, no sooner than the minimum interval
    assert r.next_due(0.6) == 1.0 and r.due(1.0)
    r.min_interval = 0.0
    assert r.next_due(0.6) == pytest.approx(0.7) and r.due(0.7)
    import ipaddress

    from policyd.model.objects import Namespace, NetworkPolicy, Pod
    from policyd.model.selectors import MATCH_ALL

    s.pending.clear()
    s.compiler.upsert_namespace(Namespace("default", {}))
    s.compiler.upsert_policy(NetworkPolicy("default", "deny", MATCH_ALL))
    s.compiler.upsert_pod(Pod("default", "a", {}, "node-1", (ipaddress.ip_address("10.244.0.2"),)))
    s.backend.fail_next = True
    r.request()
    clock.now = 1.2
    r.run_once()  # fails: backs off
    assert r.stats.consecutive_failures == 1 and r.next_due(1.2) == r.retry_at > 1.2
    assert not r.due(r.retry_at - 0.01) and r.due(r.retry_at)


@pytest.mark.parametrize("text,labels,ok", [
    ("app=web", {"app": "web"}, True),
    ("app=web,tier!=db", {"app": "web", "tier": "db"}, False),
    ("app=web,tier!=db", {"app": "web"}, True),
    ("tier", {"tier": "x"}, True),
    ("!tier", {"tier": "x"}, False),
])
def test_probe_selector_syntax(text, labels, ok):
    assert parse_pod_selector(text).matches(labels) is ok


@pytest.mark.parametrize("text", ["kind: [Pod]\n", "apiVersion: v1\nkind: Pod\nmetadata: {name: [x]}\n",
                                  "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n", "- a\n- b\n"])
def test_source_never_dies_on_a_malformed_file(tmp_path, text):
    """A malformed manifest in the lab's directory (one that crashed every lab agent, and
    again on restart) is a problem of that file; the rest is read, the agent goes on."""
    src = ManifestDirSource(tmp_path)
    write(tmp_path / "a.yaml", POD.format(name="a", app="web", ip="10.244.0.2"))
    write(tmp_path / "bad.yaml", text)
    events = src.poll()
    assert [e.obj.name for e in events] == ["a"] and "bad.yaml" in src.problems


def test_the_generation_reported_never_runs_ahead_of_the_files(tmp_path, monkeypatch):
    """The race: `lab apply` writes a file and bumps the generation between the agent's
    directory scan and its read of the generation. The agent must not report the new
    generation for a scan that missed the file (lab apply would return before enforcement)."""
    src = ManifestDirSource(tmp_path)
    (tmp_path / "generation").write_text("1")
    assert src.poll() == [] and src.generation == 1
    real_scan = src._scan

    def scan_then_apply():
        seen = real_scan()
        write(tmp_path / "a.yaml", POD.format(name="a", app="web", ip="10.244.0.2"))  # lab apply, just after
        (tmp_path / "generation").write_text("2")
        return seen

    monkeypatch.setattr(src, "_scan", scan_then_apply)
    assert src.poll() == [] and src.generation == 1, "generation 2's file was not in this scan"
    monkeypatch.setattr(src, "_scan", real_scan)
    (ev,) = src.poll()
    assert ev.obj.name == "a" and src.generation == 2


def test_source_survives_a_non_utf8_file(tmp_path):
    src = ManifestDirSource(tmp_path)
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe\x00")
    assert src.poll() == [] and "not UTF-8" in str(src.problems["bad.yaml"][0])
