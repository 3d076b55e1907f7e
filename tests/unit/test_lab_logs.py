"""`policyd lab logs`: the last lines of an agent's log, and of its drop log, read as a
stream (a long-running lab's log is never held whole)."""

from __future__ import annotations

from pathlib import Path

from policyd.lab.agents import Agents


def test_the_last_drop_lines_and_the_log_tail(tmp_path: Path) -> None:
    agents = Agents(tmp_path, "t")
    agents.dir.mkdir()
    body = [f"drop ingress n{i}" if i % 3 == 0 else ("audit egress a" if i == 7 else f"info {i}") for i in range(20)]
    agents.log_path("node-1").write_text("\n".join(body) + "\n")
    assert agents.drops("node-1") == [line for line in body if line.startswith(("drop ", "audit "))]
    assert agents.drops("node-1", 2) == ["drop ingress n15", "drop ingress n18"]
    assert agents.log_tail("node-1", 3) == "info 17\ndrop ingress n18\ninfo 19"


def test_a_node_without_a_log(tmp_path: Path) -> None:
    agents = Agents(tmp_path, "t")
    assert agents.drops("node-9") == [] and agents.log_tail("node-9") == "(no log)"
