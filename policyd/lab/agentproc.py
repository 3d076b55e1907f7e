"""The lab's node agent: one process per node, started inside the node's network namespace
(`ip netns exec`), reading the lab's manifest directory.

After the source everything is the cluster agent's code path (`reconcile.core.AgentCore`:
events → Compiler → SyncRunner → Syncer → the backend). Each loop it polls the directory (every 10 ms by
default), applies the events, lets the runner sync, and writes its status (atomically)
for `policyd lab status` and for `lab apply`, which waits until every agent reports the
manifest generation it wrote. SIGTERM stops the loop and leaves the ruleset in place.

    python -m policyd.lab.agentproc --state /run/policyd/lab/NAME --node node-1 --mode interface
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from ..backends import BACKENDS, make_backend, resolve
from ..dataplane.config import DispatchMode, Fqdn, RenderConfig
from ..dataplane.droplog import DropLog
from ..names.learner import Limits
from ..observe.flows import FlowRecorder
from ..reconcile.core import AgentCore
from ..reconcile.presence import wait_to_claim
from ..sources.manifest_dir import ManifestDirSource

log = logging.getLogger("policyd.lab.agent")


def write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--state", required=True, type=Path)
    ap.add_argument("--node", required=True)
    ap.add_argument("--mode", choices=[m.value for m in DispatchMode], required=True)
    ap.add_argument("--table", default="policyd")
    ap.add_argument("--backend", choices=BACKENDS, default="nftables")
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--resync", type=float, default=float(os.environ.get("POLICYD_LAB_RESYNC", "30")),
                    help="seconds between full resyncs (env POLICYD_LAB_RESYNC; default 30)")
    ap.add_argument("--drop-log-group", type=int, default=0, help="log drops through this NFLOG group (0: no drop log)")
    ap.add_argument("--rule-counters", action="store_true", help="count packets on every accepting and dropping rule")
    ap.add_argument("--flows", action="store_true", help="record the node's pods' new connections (conntrack NEW events)")
    ap.add_argument("--fqdn-queue", type=int, default=0, help="learn domainNames peers' addresses from DNS answers on this NFQUEUE (0: off)")
    ap.add_argument("--fqdn-min-ttl", type=int, default=Limits.min_ttl, help="seconds a learned address is kept at least")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # Before the signal handlers: a SIGTERM while waiting ends the process.
    claim = wait_to_claim(resolve(args.backend), args.table, log.warning)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    source = ManifestDirSource(args.state / "manifests")
    drop_log = DropLog(group=args.drop_log_group) if args.drop_log_group else None
    fqdn = Fqdn(args.fqdn_queue) if args.fqdn_queue else None
    core = AgentCore(args.node, make_backend(args.backend, args.table),
                     RenderConfig(table=args.table, mode=DispatchMode(args.mode), drop_log=drop_log, counters=args.rule_counters,
                                  fqdn=fqdn), resync_every=args.resync)
    learner = core.names_learner(Limits(min_ttl=args.fqdn_min_ttl)) if fqdn is not None else None
    if learner is not None:
        learner.start()  # in the node's namespace: its queue
    drops = core.drop_logger("text") if drop_log is not None else None
    if drops is not None:
        drops.start()  # this process runs in the node's namespace: the group is the node's
    flows = core.flow_table() if args.flows else None
    recorder = FlowRecorder(flows) if flows is not None else None
    if recorder is not None:
        recorder.start()  # in the node's namespace: its conntrack
    flows_path = args.state / "agents" / f"{args.node}.flows.json"
    flows_written: dict[str, Any] = {}
    status_path = args.state / "agents" / f"{args.node}.json"
    started = time.time()
    applied_generation = -1
    reported: dict[str, Any] = {}
    last_write = 0.0
    log.info("agent for %s: dispatch by %s, %s", args.node, args.mode, core.syncer.backend.describe())

    while not stop:
        events = source.poll()
        generation = source.generation
        core.apply(events)
        result = core.run_once()
        if result is not None and result.ops:
            log.info("%s sync: %d operations in %.1f ms", "full" if result.full else "partial", result.ops, result.seconds * 1e3)
        if core.in_step:
            applied_generation = generation
        doc = {"node": args.node, "pid": os.getpid(), "started": started, "generation": applied_generation, **core.status(),
               **({"names": learner.status()} if learner is not None else {}),
               "manifest_problems": {f: [str(p) for p in ps] for f, ps in source.problems.items()}}
        now = time.monotonic()
        if doc != reported or now - last_write > 1.0:
            doc["heartbeat"] = time.time()
            write_json(status_path, doc)
            reported = {k: v for k, v in doc.items() if k != "heartbeat"}
            last_write = now
            if flows is not None:
                flow_doc = flows.to_json(args.node)
                if flow_doc != flows_written:
                    write_json(flows_path, flow_doc)
                    flows_written = flow_doc
        time.sleep(args.interval)
    if recorder is not None:
        recorder.stop()
    if drops is not None:
        drops.stop()
    if learner is not None:
        learner.stop()
    claim.close()
    log.info("stopping; the ruleset stays in place (policyd cleanup removes it)")


if __name__ == "__main__":
    main()
