"""`policyd lab`: a real-packet cluster in network namespaces, built from manifests.

State of lab NAME lives under `/run/policyd/lab/NAME` (`POLICYD_LAB_ROOT` overrides):

* `lab.json` — topology, nodes, pods (namespaces, interfaces, addresses, process ids;
  `records`);
* `manifests/` — one file per object, the source the node agents read (`apiserver`: the lab
  plays the API server, the scheduler and the CNI, writing `spec.nodeName` and
  `status.podIPs`), plus `generation`, bumped after every change;
* `agents/NODE.json|.log` — each agent's status (health, last sync, the generation it has
  applied) and log (`agents`); `pods/` — the pods' control sockets (`topology`).

This module is the verbs (up, apply, delete, label, restart-agent, probe, status, down),
each composed of those parts. Every network namespace is named `pl-NAME.<role>`, so `lab
down` removes exactly this lab's namespaces (and every process inside them) even when
`lab.json` is gone.
"""

from __future__ import annotations

import copy
import fcntl
import functools
import ipaddress
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, cast

from ..backends import make_backend, resolve
from ..model.addressing import DEFAULT_CLUSTER_CIDR, DEFAULT_NODE_PREFIX, allocate
from ..model.events import key_of, kind_of
from ..model.objects import KubeObject, Node, Pod, PodKey
from ..model.parse import parse_object
from ..model.problems import InvalidInput
from ..observe.counters import CounterIndex, Counters
from ..observe.flows import document, merge
from ..whatif.matrix import Matrix
from ..whatif.world import load_world
from . import dns as labdns
from . import families, probes
from .agents import Agents, agent_config
from .apiserver import ManifestStore, identities, read_raw, validate
from .netns import delete_namespaces, entered
from .placement import place, served_ports
from .records import LabError, LabRecord, NodeRecord, PodRecord, alive, is_ours
from .topology import PodHandle, Topology

LAB_ROOT = Path(os.environ.get("POLICYD_LAB_ROOT", "/run/policyd/lab"))
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$")
Say = Callable[[str], None]

__all__ = ["Lab", "LabError", "LabRecord", "alive"]
F = TypeVar("F", bound=Callable[..., Any])


def _one_at_a_time(method: F) -> F:
    """Changes to one lab run one at a time (a lock file in its directory, held until the
    verb returns): two `lab label` at once read the same generation, wrote the same
    temporary file names and ended in an internal error."""
    @functools.wraps(method)
    def locked(self: Lab, *args: Any, **kw: Any) -> Any:
        if not self.dir.is_dir():
            return method(self, *args, **kw)  # no lab: the verb says so
        with open(self.dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            return method(self, *args, **kw)
    return cast(F, locked)
IMMORTAL_NAMESPACES = ("default", "kube-system", "kube-public")  # the API server's NamespaceLifecycle refuses their deletion


class Lab:
    def __init__(self, name: str = "default", root: Path | None = None) -> None:
        if not NAME_RE.match(name):
            raise LabError(f"invalid lab name {name!r}: 1-20 of [a-z0-9-], starting and ending alphanumeric")
        self.name = name
        self.dir = (root or LAB_ROOT) / name
        self.manifests = self.dir / "manifests"
        self.store = ManifestStore(self.manifests)
        self.agents = Agents(self.dir, name)
        self.agents_dir = self.agents.dir
        self.prefix = f"pl-{name}"

    # --- the record ---------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.dir / "lab.json").exists()

    def counters(self, node: str) -> Counters:
        """A node's per-rule counters, read from its kernel and summed by policy rule with the
        index of what the lab's manifests compile to for that node."""
        rec = self.load()
        if node not in rec.nodes:
            raise LabError(f"lab {self.name} has no node {node!r} (nodes: {', '.join(sorted(rec.nodes))})")
        plans = load_world([self.manifests], strict_addresses=True).compile(node).plans.values()
        with entered(rec.nodes[node].netns):
            backend = make_backend(resolve(rec.backend), "policyd")
            index = CounterIndex.of_plans(plans, backend.renderer(agent_config(rec.mode, rec.dns is not None)))
            return index.sum(backend.rule_counters())

    def load(self) -> LabRecord:
        try:
            return LabRecord.from_json(json.loads((self.dir / "lab.json").read_text()))
        except FileNotFoundError:
            raise LabError(f"no lab named {self.name!r} (start one with `policyd lab up -f PATH --name {self.name}`)") from None

    def save(self, rec: LabRecord) -> None:
        tmp = self.dir / ".lab.json.tmp"
        tmp.write_text(json.dumps(rec.to_json(), indent=1))
        os.replace(tmp, self.dir / "lab.json")

    def topology(self, rec: LabRecord) -> Topology:
        topo = Topology(self.prefix, rec.topology, state_dir=str(self.dir / "pods"), create=False)
        for n in sorted(rec.nodes.values(), key=lambda n: n.index):
            topo.attach_node(n.name, n.index, ipaddress.IPv4Network(n.cidr))
        return topo

    def read_object(self, kind: str, key: str) -> dict[str, Any] | None:
        return self.store.read(kind, key)

    def objects(self) -> list[KubeObject]:
        return self.store.objects()

    def agent_status(self, node: str) -> dict[str, Any] | None:
        return self.agents.status(node)

    # --- up / down ----------------------------------------------------------------------

    def up(self, paths: list[str], nodes: int = 2, topology: str = "routed",
           cluster_cidr: str = DEFAULT_CLUSTER_CIDR, node_prefix: int = DEFAULT_NODE_PREFIX, say: Say = print,
           backend: str = "nftables", ip_family: str = "ipv4", dns_zone: str | None = None, min_ttl: int = 30) -> LabRecord:
        if topology not in ("routed", "bridge"):
            raise LabError("--topology is routed or bridge")
        families.check(ip_family, cluster_cidr, node_prefix)
        try:
            backend = resolve(backend)
        except (ValueError, RuntimeError) as e:
            raise LabError(str(e)) from e
        if self.exists():
            raise LabError(f"lab {self.name!r} exists; remove it with `policyd lab down --name {self.name}`")
        if nodes < 1:
            raise LabError("--nodes must be at least 1")
        zone = None
        if dns_zone is not None:
            try:
                zone = labdns.read_zone(dns_zone)
            except labdns.ZoneError as e:
                raise LabError(str(e)) from None
            if not 1 <= min_ttl <= 86_400:
                raise LabError(f"--fqdn-min-ttl is 1-86400 s, not {min_ttl}")
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "lab-dns.yaml").write_text(labdns.POD_MANIFEST)
            paths = [*paths, str(self.dir / "lab-dns.yaml")]
        parsed = validate(read_raw(paths))
        node_objs = [o for o, _ in parsed if isinstance(o, Node)]
        pods = [o for o, _ in parsed if isinstance(o, Pod)]
        if ip_family != "ipv4":  # allocate IPv4 slots; a pod's addresses follow from its slot
            pods = [replace(p, ips=tuple(s for s in [families.slot_of(p.key, p.ips, ip_family)] if s is not None)) for p in pods]
        defaults = tuple(f"node-{i + 1}" for i in range(nodes))
        alloc = allocate(node_objs, pods, cluster_cidr, node_prefix, default_nodes=defaults, strict=True)
        if alloc.problems:
            raise InvalidInput(alloc.problems)
        for name, net in sorted(alloc.nodes.items()):
            if net.version != 4 or (ip_family != "ipv4" and net.prefixlen != 24):
                raise LabError(f"node {name}: spec.podCIDRs {net}: the lab routes an IPv4 range per node"
                               + (f" (a /24 with --ip-family {ip_family}: its IPv6 range is the /64 mirroring it)" if ip_family != "ipv4" else ""))
        node_names = sorted(alloc.nodes)  # the nodes the manifests name, else node-1..N
        for d in (self.manifests, self.agents.dir, self.dir / "pods"):
            d.mkdir(parents=True, exist_ok=True)
        rec = LabRecord(self.name, topology, created=time.time(), backend=backend, ip_family=ip_family)
        self.save(rec)  # from here on, `lab down` can clean up whatever exists
        try:
            say(f"lab {self.name}: {len(node_names)} nodes ({topology} topology, {backend} backend, {ip_family}), {len(alloc.pods)} pods")
            topo = Topology(self.prefix, topology, state_dir=str(self.dir / "pods"))
            for name in node_names:
                cidr = ipaddress.IPv4Network(alloc.nodes[name])
                h = topo.add_node(name, cidr)
                rec.nodes[name] = NodeRecord(name, h.index, str(cidr), h.netns)
                ranges = families.node_cidrs(cidr, ip_family)
                self.store.write("Node", name, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                                                "spec": {"podCIDR": ranges[0], "podCIDRs": ranges}})
            self.save(rec)
            placed = {p.key: p if ip_family == "ipv4" or not p.ips else replace(p, ips=families.addresses(p.ips[0], ip_family))
                      for p in alloc.pods}
            for obj, raw in parsed:
                if not isinstance(obj, (Pod, Node)):
                    self.store.write(kind_of(obj), key_of(obj), raw.raw)
            self.store.implicit_namespaces([o for o, _ in parsed])
            dns_key = PodKey(f"{labdns.NAMESPACE}/{labdns.NAME}")
            handles = [self._start_pod(topo, rec, placed[obj.key], raw.raw, serve=obj.key != dns_key or zone is None)
                       for obj, raw in parsed if isinstance(obj, Pod)]
            topo.wait_ready(handles=handles)
            for ph in handles:
                rec.pods[ph.pod.key].pid = ph.proc.pid if ph.proc else None
            if zone is not None:
                rec.dns = self._start_dns(topo, rec, zone, placed[dns_key], min_ttl, say)
            self.save(rec)
            gen = self.store.bump_generation()
            for name in node_names:
                rec.nodes[name].agent_pid = self.agents.start(rec, name)
            self.save(rec)
            waited = self.agents.wait(rec, gen, timeout=30.0)
            say(f"agents enforcing on {', '.join(node_names)} ({waited * 1e3:.0f} ms after start)")
            return rec
        except BaseException:
            self.down(quiet=True)
            raise

    def down(self, quiet: bool = False, say: Say = print) -> bool:
        """Remove the lab: processes, namespaces, state. Safe to repeat, and after a crash."""
        found = self.dir.exists()
        try:
            rec: LabRecord | None = self.load()
        except LabError:
            rec = None
        pids = [n.agent_pid for n in rec.nodes.values()] + [p.pid for p in rec.pods.values()] if rec else []
        for pid in pids:
            if pid and alive(pid) and is_ours(pid):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 2
        while any(pid and alive(pid) and is_ours(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        delete_namespaces(self.prefix + ".")  # kills whatever still runs inside them
        shutil.rmtree(self.dir, ignore_errors=True)
        if not quiet:
            say(f"lab {self.name}: removed" if found else f"lab {self.name}: nothing to remove")
        return found

    def _start_dns(self, topo: Topology, rec: LabRecord, zone: labdns.Zone, pod: Pod, min_ttl: int, say: Say) -> dict[str, Any]:
        """CoreDNS in the DNS pod, and the external hosts the zone's answers point at."""
        proc = labdns.start(rec.pods[pod.key].netns, self.dir / "dns", zone)
        ranges = [ipaddress.ip_network(c) for n in rec.nodes.values() for c in families.node_cidrs(ipaddress.IPv4Network(n.cidr), rec.ip_family)]
        outside = labdns.external(zone.addresses, ranges)
        ext_pid = None
        if outside:
            _, ext = topo.add_external(outside, tcp=list(labdns.EXTERNAL_TCP), udp=list(labdns.EXTERNAL_UDP))
            ext_pid = ext.pid
        labdns.wait_serving(rec.pods[pod.key].netns, [str(a) for a in pod.ips], proc)
        say(f"DNS: CoreDNS in {pod.key} ({', '.join(str(a) for a in pod.ips)}) serving {len(zone.names)} names"
            + (f"; external hosts {', '.join(outside)} (TCP {', '.join(map(str, labdns.EXTERNAL_TCP))})" if outside else ""))
        return {"pod": pod.key, "addresses": [str(a) for a in pod.ips], "pid": proc.pid, "external": outside, "external_pid": ext_pid,
                "min_ttl": min_ttl, "names": list(zone.names)}

    def _start_pod(self, topo: Topology, rec: LabRecord, pod: Pod, raw: dict[str, Any], serve: bool = True) -> PodHandle:
        """The pod's namespace and process (the CNI and the kubelet), then its manifest with
        the node and addresses (the scheduler's and the kubelet's writes). `serve` False: the
        process serves no port (the DNS pod: CoreDNS has port 53)."""
        tcp, udp, sctp = served_ports(pod)
        h = topo.add_pod(pod, tcp if serve else [], udp if serve else [])
        rec.pods[pod.key] = PodRecord(pod.key, pod.node or "", h.netns, h.host_if, [str(i) for i in pod.ips], h.control, tcp, udp, sctp,
                                      h.proc.pid if h.proc else None)
        self.save(rec)
        out = copy.deepcopy(raw)
        out.setdefault("spec", {})["nodeName"] = pod.node
        out["status"] = {"phase": "Running", "podIP": str(pod.ips[0]), "podIPs": [{"ip": str(i)} for i in pod.ips]}
        self.store.write("Pod", pod.key, out)
        return h

    @_one_at_a_time
    def restart_agent(self, node: str, downtime: float = 0.0) -> int:
        """Stop a node's agent (SIGTERM: the ruleset stays), wait `downtime`, start a new
        one; returns when the new agent has adopted the table and applied the current
        generation."""
        rec = self.load()
        if node not in rec.nodes:
            raise LabError(f"no node {node} in lab {self.name}")
        pid = rec.nodes[node].agent_pid
        if pid and alive(pid) and is_ours(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        self.agents.forget_status(node)
        time.sleep(downtime)
        rec.nodes[node].agent_pid = self.agents.start(rec, node)
        self.save(rec)
        self.agents.wait(rec, self.store.generation())
        return rec.nodes[node].agent_pid or 0

    # --- kubectl-like changes ----------------------------------------------------------------

    @_one_at_a_time
    def apply(self, paths: list[str], say: Say = print) -> float:
        """Create or update objects; returns the seconds until every agent applied them."""
        rec = self.load()
        self.agents.require(rec)
        parsed = validate(read_raw(paths))
        topo = self.topology(rec)
        new_pods = []
        for obj, raw in parsed:
            kind, key = kind_of(obj), key_of(obj)
            if isinstance(obj, Node):
                if obj.name not in rec.nodes:
                    raise LabError(f"node {obj.name}: the lab's nodes are fixed at `lab up` ({', '.join(sorted(rec.nodes))})")
                say(f"node/{obj.name} unchanged (nodes are fixed at lab up)")
                continue
            if isinstance(obj, Pod):
                old_raw = self.store.read("Pod", key)
                if old_raw is not None:
                    say(f"pod/{obj.name} {self._update_pod(obj, raw.raw, old_raw)}")
                else:
                    new_pods.append((obj, raw.raw))
                continue
            existed = self.store.read(kind, key) is not None
            changed = self.store.write(kind, key, raw.raw)
            say(f"{kind.lower()}/{obj.name} {('configured' if existed else 'created') if changed else 'unchanged'}")
        self.store.implicit_namespaces([o for o, _ in parsed])
        handles: list[PodHandle] = []
        for obj, raw_pod in new_pods:
            pod = place(rec, obj)
            handles.append(self._start_pod(topo, rec, pod, raw_pod))
            say(f"pod/{obj.name} created on {pod.node} with {', '.join(map(str, pod.ips))}")
        topo.wait_ready(handles=handles)
        return self.agents.wait(rec, self.store.bump_generation())

    def _update_pod(self, pod: Pod, raw: dict[str, Any], old_raw: dict[str, Any]) -> str:
        old, _ = parse_object(old_raw, "<lab>", 0)
        assert isinstance(old, Pod)
        if (pod.node and pod.node != old.node) or served_ports(pod) != served_ports(old) or (pod.ips and set(pod.ips) != set(old.ips)):
            raise LabError(f"pod {pod.key}: node, ports and addresses cannot change; delete the pod and apply it again")
        out = copy.deepcopy(raw)
        out.setdefault("spec", {})["nodeName"] = old.node
        out["status"] = old_raw.get("status")
        return "configured" if self.store.write("Pod", pod.key, out) else "unchanged"

    @_one_at_a_time
    def delete(self, paths: list[str], say: Say = print) -> int:
        """Delete the objects named in the files (a namespace takes its pods and policies
        with it). Returns the number of objects that were not found."""
        rec = self.load()
        self.agents.require(rec)
        missing = 0
        gone_pods: list[str] = []
        named = identities(read_raw(paths))  # like kubectl delete -f: names only
        for kind, key in named:  # refused before anything is deleted
            if kind == "Node":
                raise LabError(f"node {key}: the lab's nodes are fixed at `lab up`")
            if kind == "Namespace" and key in IMMORTAL_NAMESPACES:
                raise LabError(f'namespaces "{key}" is forbidden: this namespace may not be deleted (as the API server says)')
        for kind, key in named:
            name = key.rpartition("/")[2]
            if not self.store.remove(kind, key):
                say(f"{kind.lower()}/{name} not found")
                missing += 1
                continue
            say(f"{kind.lower()}/{name} deleted")
            if kind == "Pod":
                gone_pods.append(key)
            if kind == "Namespace":
                gone_pods += self.store.remove_namespaced(name)
        self.agents.wait(rec, self.store.bump_generation())
        topo = self.topology(rec)
        for key in gone_pods:
            p = rec.pods.pop(key, None)
            if p is not None:
                topo.remove_pod(p.netns, p.control)
        self.save(rec)
        return missing

    @_one_at_a_time
    def label(self, kind: str, ref: str, pairs: list[str], namespace: str = "default", say: Say = print) -> float:
        """`k=v` sets, `k-` removes, like kubectl label --overwrite."""
        rec = self.load()
        self.agents.require(rec)
        kind = {"pod": "Pod", "pods": "Pod", "ns": "Namespace", "namespace": "Namespace"}.get(kind.lower(), "")
        if not kind:
            raise LabError("label what? pod or ns")
        if kind == "Pod":
            ns, _, name = ref.rpartition("/")
            key = f"{ns or namespace}/{name}"
        else:
            key = name = ref
        raw = self.store.read(kind, key)
        if raw is None:
            raise LabError(f"{kind.lower()} {key} not found in lab {self.name}")
        labels = dict((raw.get("metadata") or {}).get("labels") or {})
        for pair in pairs:
            if pair.endswith("-") and "=" not in pair:
                labels.pop(pair[:-1], None)
            elif "=" in pair:
                k, v = pair.split("=", 1)
                labels[k] = v
            else:
                raise LabError(f"{pair!r}: use key=value to set a label or key- to remove it")
        raw.setdefault("metadata", {})["labels"] = labels
        _, problems = parse_object(raw, f"{kind.lower()}/{key}", 0)
        if problems:
            raise InvalidInput(problems)
        changed = self.store.write(kind, key, raw)
        say(f"{kind.lower()}/{name} {'labeled' if changed else 'not labeled (no change)'}")
        return self.agents.wait(rec, self.store.bump_generation())

    # --- probes and status -----------------------------------------------------------------

    def pods(self) -> list[Pod]:
        return [o for o in self.store.objects() if isinstance(o, Pod)]

    def probe(self, src: str | None = None, dst: str | None = None, protocol: str = "TCP", port: int | None = 80,
              timeout: float = 0.5, progress: Say | None = None, version: int | None = None) -> Matrix:
        pods = [o for o in self.store.objects() if isinstance(o, Pod)]
        return probes.probe(self.load(), pods, src, dst, protocol, port, timeout, progress, version)

    def flows(self, node: str | None = None) -> dict[str, Any]:
        """The new connections the agents recorded (FlowRecords: a connection between two
        nodes' pods is recorded by both and counted once)."""
        rec = self.load()
        if node is not None and node not in rec.nodes:
            raise LabError(f"no node {node} in lab {self.name}")
        nodes = sorted(rec.nodes) if node is None else [node]
        docs = [d for n in nodes if (d := self.agents.flows(n)) is not None]
        return document(nodes, merge(docs), sum(int(d.get("dropped", 0)) for d in docs))

    def expected(self, protocol: str, port: int | None, sources: list[str], targets: list[str],
                 version: int | None = None) -> Matrix:
        return probes.expected(self.manifests, protocol, port, sources, targets, version)

    def status(self) -> dict[str, Any]:
        rec = self.load()
        now = time.time()
        agents = {}
        for n in rec.nodes.values():
            st = self.agents.status(n.name) or {}
            up = alive(n.agent_pid)
            agents[n.name] = {
                "pid": n.agent_pid, "running": up,
                "healthy": bool(up and st.get("healthy")),
                "generation": st.get("generation"),
                "last_sync_ago_s": round(now - st["last_sync"], 1) if st.get("last_sync") else None,
                "last_sync_ms": st.get("last_sync_ms"), "last_ops": st.get("last_ops"),
                "syncs": st.get("syncs"), "failures": st.get("failures"), "last_error": st.get("last_error") or None,
                "local_pods": st.get("local_pods"), "pending_interfaces": st.get("pending_interfaces"),
                "drift": st.get("drift") or [], "drift_repairs": st.get("drift_repairs") or {},
                "manifest_problems": st.get("manifest_problems") or {},
                **({"names": st["names"]} if st.get("names") is not None else {}),
            }
            # A file the agent could not take (or took only in part) is not a healthy state.
            agents[n.name]["healthy"] = agents[n.name]["healthy"] and not agents[n.name]["manifest_problems"]
        return {
            "name": rec.name, "topology": rec.topology, "dispatch": rec.mode, "backend": rec.backend, "ip_family": rec.ip_family,
            "state": str(self.dir), "generation": self.store.generation(),
            "nodes": [{"name": n.name, "netns": n.netns, "podCIDR": cidrs[0], "podCIDRs": cidrs, "agent": agents[n.name]}
                      for n in sorted(rec.nodes.values(), key=lambda n: n.index)
                      for cidrs in [families.node_cidrs(ipaddress.IPv4Network(n.cidr), rec.ip_family)]],
            "pods": [{"pod": p.key, "node": p.node, "ips": p.ips, "interface": p.host_if, "netns": p.netns,
                      "tcp": p.tcp, "udp": p.udp, "sctp_not_served": p.sctp, "running": alive(p.pid)}
                     for p in sorted(rec.pods.values(), key=lambda p: p.key)],
            **({"dns": rec.dns} if rec.dns is not None else {}),
        }
