"""The lab's node agent: one process per node, started inside the node's network namespace
(`ip netns exec`), reading the lab's manifest directory.

After the source everything is the cluster agent's code path: events → Compiler →
SyncRunner → Syncer → libnftables. Each loop it polls the directory (every 10 ms by
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

from ..backends import KINDS, make_backend
from ..compile.engine import Compiler
from ..dataplane.config import DispatchMode, RenderConfig
from ..reconcile.interfaces import RouteInterfaces
from ..reconcile.runner import SyncRunner
from ..reconcile.syncer import Syncer
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
    ap.add_argument("--backend", choices=KINDS, default="nftables")
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--resync", type=float, default=float(os.environ.get("POLICYD_LAB_RESYNC", "30")),
                    help="seconds between full resyncs (env POLICYD_LAB_RESYNC; default 30)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    source = ManifestDirSource(args.state / "manifests")
    compiler = Compiler(args.node)
    syncer = Syncer(compiler, make_backend(args.backend, args.table), RenderConfig(table=args.table, mode=DispatchMode(args.mode)), RouteInterfaces())
    runner = SyncRunner(syncer, resync_every=args.resync)
    status_path = args.state / "agents" / f"{args.node}.json"
    started = time.time()
    applied_generation = -1
    reported: dict[str, Any] = {}
    last_write = 0.0
    log.info("agent for %s: dispatch by %s, %s", args.node, args.mode, syncer.backend.describe())

    repairs: dict[str, int] = {}
    while not stop:
        events = source.poll()
        generation = source.generation
        for ev in events:
            compiler.apply(ev)
        if events:
            runner.request()
        result = runner.run_once()
        for d in result.drift if result is not None else ():
            repairs[d.kind] = repairs.get(d.kind, 0) + 1
        if result is not None and result.ops:
            log.info("%s sync: %d operations in %.1f ms", "full" if result.full else "partial", result.ops, result.seconds * 1e3)
        if runner.stats.consecutive_failures == 0 and not runner.requested and not syncer.pending:
            applied_generation = generation
        s = runner.stats
        doc = {
            "node": args.node,
            "pid": os.getpid(),
            "started": started,
            "healthy": s.consecutive_failures == 0 and s.syncs > 0 and not s.drift_seen,
            "drift": s.drift_seen,
            "drift_repairs": repairs,
            "generation": applied_generation,
            "syncs": s.syncs,
            "full_syncs": s.full_syncs,
            "failures": s.failures,
            "last_error": s.last_error,
            "last_sync": s.last_sync_wall,
            "last_sync_ms": round(s.last_result.seconds * 1e3, 2) if s.last_result else None,
            "last_ops": s.last_result.ops if s.last_result else None,
            "local_pods": len(compiler.plans),
            "pending_interfaces": sorted(syncer.pending),
            "manifest_problems": {f: [str(p) for p in ps] for f, ps in source.problems.items()},
        }
        now = time.monotonic()
        if doc != reported or now - last_write > 1.0:
            doc["heartbeat"] = time.time()
            write_json(status_path, doc)
            reported = {k: v for k, v in doc.items() if k != "heartbeat"}
            last_write = now
        time.sleep(args.interval)
    log.info("stopping; the ruleset stays in place (policyd cleanup removes it)")


if __name__ == "__main__":
    main()
