"""The lab's node agents as processes: start one in a node's namespace (`agentproc`), read
the status it writes, wait until every agent has applied a manifest generation."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..dataplane.config import DispatchMode, Fqdn, RenderConfig
from ..dataplane.droplog import DropLog
from .records import LabError, LabRecord, alive

# Lab agents always log drops (`policyd lab logs --drops`), count rule hits (`policyd lab
# counters`) and record their pods' new connections (`policyd lab flows`); each node is its
# own network namespace, so one group number serves every lab.
DROP_LOG_GROUP = 100
FQDN_QUEUE = 5300  # with a DNS server (`lab up --dns-zone`), the agents learn domainNames peers' addresses here


def agent_config(mode: str, names: bool = False) -> RenderConfig:
    """How the lab's agents render (`start` gives them these options): what a reader of
    their kernels' rule ids renders with."""
    return RenderConfig(mode=DispatchMode(mode), drop_log=DropLog(group=DROP_LOG_GROUP), counters=True,
                        fqdn=Fqdn(FQDN_QUEUE) if names else None)


class Agents:
    def __init__(self, lab_dir: Path, lab_name: str) -> None:
        self.lab_dir = lab_dir
        self.dir = lab_dir / "agents"
        self.lab_name = lab_name

    def log_path(self, node: str) -> Path:
        return self.dir / f"{node}.log"

    def drops(self, node: str, last: int | None = None) -> list[str]:
        """The drop log lines of a node's agent (`drop …`, and `audit …` for audit mode),
        oldest first; the `last` ones only, if given. Read as a stream: a long-running lab's
        log is never held in memory whole."""
        return self._lines(node, last, lambda line: line.startswith(("drop ", "audit ")))

    def log_tail(self, node: str, lines: int = 15) -> str:
        return "\n".join(self._lines(node, lines)) if self.log_path(node).exists() else "(no log)"

    def _lines(self, node: str, last: int | None, keep: Callable[[str], bool] = lambda _: True) -> list[str]:
        try:
            with open(self.log_path(node), errors="replace") as f:
                return list(collections.deque((line.rstrip("\n") for line in f if keep(line)), maxlen=last))
        except FileNotFoundError:
            return []

    def status(self, node: str) -> dict[str, Any] | None:
        """What the agent last wrote about itself (None: nothing yet)."""
        try:
            status: dict[str, Any] = json.loads((self.dir / f"{node}.json").read_text())
            return status
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def flows(self, node: str) -> dict[str, Any] | None:
        """The flow records the agent last wrote (None: nothing yet)."""
        try:
            doc: dict[str, Any] = json.loads((self.dir / f"{node}.flows.json").read_text())
            return doc
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def forget_status(self, node: str) -> None:
        (self.dir / f"{node}.json").unlink(missing_ok=True)

    def start(self, rec: LabRecord, node: str) -> int:
        log = open(self.log_path(node), "ab")
        args = [sys.executable, "-m", "policyd.lab.agentproc", "--state", str(self.lab_dir), "--node", node,
                "--mode", rec.mode, "--backend", rec.backend, "--drop-log-group", str(DROP_LOG_GROUP), "--rule-counters", "--flows",
                *(["--fqdn-queue", str(FQDN_QUEUE), "--fqdn-min-ttl", str(rec.dns.get("min_ttl", 30))] if rec.dns else [])]
        proc = subprocess.Popen(["ip", "netns", "exec", rec.nodes[node].netns, *args], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        return proc.pid

    def require(self, rec: LabRecord) -> None:
        """Refuse a change before writing anything when an agent is not running: the change
        could not be confirmed as enforced, and would land unconfirmed."""
        dead = sorted(n for n, r in rec.nodes.items() if not alive(r.agent_pid))
        if dead:
            raise LabError(f"the agent of {', '.join(dead)} is not running; nothing was changed "
                           f"(`policyd lab restart-agent {dead[0]} --name {self.lab_name}` starts it again; its log: "
                           f"{self.log_path(dead[0])})")

    def wait(self, rec: LabRecord, generation: int, timeout: float = 60.0) -> float:
        """Until every node's agent has applied `generation`; returns the seconds waited."""
        start = time.monotonic()
        waiting = set(rec.nodes)
        while waiting:
            for node in sorted(waiting):
                st = self.status(node)
                if st and st.get("generation", -1) >= generation:
                    waiting.discard(node)
                elif not alive(rec.nodes[node].agent_pid):
                    raise LabError(f"the agent of {node} is not running; see {self.log_path(node)}")
            if waiting and time.monotonic() - start > timeout:
                details = "; ".join(f"{n}: {(self.status(n) or {}).get('last_error') or 'no error reported'}" for n in sorted(waiting))
                tails = "\n".join(f"--- {n}.log (last lines)\n" + self.log_tail(n) for n in sorted(waiting))
                raise LabError(f"agents did not apply generation {generation} within {timeout:.0f} s ({details}\n{tails}); see {self.dir}")
            if waiting:
                time.sleep(0.005)
        return time.monotonic() - start
