"""`policyd lab`: a real-packet cluster in network namespaces, built from manifests.

State of lab NAME lives under `/run/policyd/lab/NAME` (`POLICYD_LAB_ROOT` overrides):

* `lab.json` — topology, nodes, pods (namespaces, interfaces, addresses, process ids);
* `manifests/` — one file per object, the source the node agents read (the lab plays the
  API server, the scheduler and the CNI: it writes `spec.nodeName` and `status.podIPs`),
  plus `generation`, bumped after every change;
* `agents/NODE.json|.log` — each agent's status (health, last sync, the generation it has
  applied) and log; `pods/` — the pods' control sockets.

Every network namespace is named `pl-NAME.<role>`, so `lab down` removes exactly this lab's
namespaces (and every process inside them) even when `lab.json` is gone.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..backends import resolve
from ..compile.matrix import Matrix, compute
from ..model.addressing import DEFAULT_CLUSTER_CIDR, DEFAULT_NODE_PREFIX, allocate
from ..model.events import key_of, kind_of
from ..model.manifests import RawObject, iter_files, raw_documents, read_text
from ..model.objects import NetworkPolicy, Node, Pod
from ..model.parse import parse_object
from ..model.problems import InvalidInput, Problem
from ..model.selectors import LabelSelector, Requirement
from ..world import load_world
from .netns import delete_namespaces
from .topology import PodHandle, Topology, probe_via

LAB_ROOT = Path(os.environ.get("POLICYD_LAB_ROOT", "/run/policyd/lab"))
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$")
Say = Callable[[str], None]


class LabError(Exception):
    """A lab request that cannot be done as asked; nothing (more) was changed."""


@dataclass
class PodRecord:
    key: str
    node: str
    netns: str
    host_if: str
    ips: list[str]
    control: str
    tcp: list[int]
    udp: list[int]
    sctp: list[int]
    pid: int | None = None


@dataclass
class NodeRecord:
    name: str
    index: int
    cidr: str
    netns: str
    agent_pid: int | None = None


@dataclass
class LabRecord:
    name: str
    topology: str
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    pods: dict[str, PodRecord] = field(default_factory=dict)
    created: float = 0.0
    backend: str = "nftables"

    @property
    def mode(self) -> str:
        return "interface" if self.topology == "routed" else "address"

    @staticmethod
    def from_json(doc: dict[str, Any]) -> LabRecord:
        return LabRecord(
            doc["name"], doc["topology"],
            {k: NodeRecord(**v) for k, v in doc["nodes"].items()},
            {k: PodRecord(**v) for k, v in doc["pods"].items()},
            doc.get("created", 0.0),
            doc.get("backend", "nftables"),
        )


def file_name(kind: str, key: str) -> str:
    """`pod.default.frontend-x.yaml`: names are validated DNS labels/subdomains, no `/`."""
    ns, _, name = key.rpartition("/")
    return f"{kind.lower()}.{ns or '_'}.{name}.yaml"


def served_ports(pod: Pod) -> tuple[list[int], list[int], list[int]]:
    by = {proto: sorted({p.port for p in pod.ports if p.protocol == proto}) for proto in ("TCP", "UDP", "SCTP")}
    return by["TCP"], by["UDP"], by["SCTP"]


def parse_pod_selector(text: str) -> LabelSelector:
    """`app=web,tier!=db,env,!legacy` (AND), as kubectl's -l takes it."""
    reqs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append(Requirement(k.strip(), "NotIn", (v.strip(),)))
        elif "=" in part:
            k, v = part.split("=", 1)
            reqs.append(Requirement(k.strip().rstrip("="), "In", (v.strip(),)))
        elif part.startswith("!"):
            reqs.append(Requirement(part[1:], "DoesNotExist", ()))
        else:
            reqs.append(Requirement(part, "Exists", ()))
    return LabelSelector.build({}, reqs)


def alive(pid: int | None) -> bool:
    """Running, and not a zombie: an agent that crashed stays a zombie until its parent (the
    process that ran `lab up`) reaps it, and signal 0 still reaches a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Lab:
    def __init__(self, name: str = "default", root: Path | None = None) -> None:
        if not NAME_RE.match(name):
            raise LabError(f"invalid lab name {name!r}: 1-20 of [a-z0-9-], starting and ending alphanumeric")
        self.name = name
        self.dir = (root or LAB_ROOT) / name
        self.manifests = self.dir / "manifests"
        self.agents_dir = self.dir / "agents"
        self.prefix = f"pl-{name}"

    # --- the record ---------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.dir / "lab.json").exists()

    def load(self) -> LabRecord:
        try:
            return LabRecord.from_json(json.loads((self.dir / "lab.json").read_text()))
        except FileNotFoundError:
            raise LabError(f"no lab named {self.name!r} (start one with `policyd lab up -f PATH --name {self.name}`)") from None

    def save(self, rec: LabRecord) -> None:
        doc = {"name": rec.name, "topology": rec.topology, "created": rec.created, "backend": rec.backend,
               "nodes": {k: asdict(v) for k, v in rec.nodes.items()}, "pods": {k: asdict(v) for k, v in rec.pods.items()}}
        tmp = self.dir / ".lab.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.dir / "lab.json")

    def topology(self, rec: LabRecord) -> Topology:
        topo = Topology(self.prefix, rec.topology, state_dir=str(self.dir / "pods"), create=False)
        for n in sorted(rec.nodes.values(), key=lambda n: n.index):
            topo.attach_node(n.name, n.index, ipaddress.IPv4Network(n.cidr))
        return topo

    # --- the manifest directory ---------------------------------------------------------

    def write_object(self, kind: str, key: str, raw: dict[str, Any]) -> bool:
        """Write atomically; False when the file already held exactly this."""
        path = self.manifests / file_name(kind, key)
        text = yaml.safe_dump(raw, sort_keys=False)
        if path.exists() and path.read_text() == text:
            return False
        tmp = self.manifests / f".{path.name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
        return True

    def read_object(self, kind: str, key: str) -> dict[str, Any] | None:
        path = self.manifests / file_name(kind, key)
        return yaml.safe_load(path.read_text()) if path.exists() else None

    def remove_object(self, kind: str, key: str) -> bool:
        path = self.manifests / file_name(kind, key)
        if not path.exists():
            return False
        path.unlink()
        return True

    def bump_generation(self) -> int:
        path = self.manifests / "generation"
        gen = int(path.read_text()) + 1 if path.exists() else 1
        tmp = self.manifests / ".generation.tmp"
        tmp.write_text(str(gen))
        os.replace(tmp, path)
        return gen

    def _log_tail(self, node: str, lines: int = 15) -> str:
        try:
            return "\n".join((self.agents_dir / f"{node}.log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def agent_status(self, node: str) -> dict[str, Any] | None:
        try:
            status: dict[str, Any] = json.loads((self.agents_dir / f"{node}.json").read_text())
            return status
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def wait_agents(self, rec: LabRecord, generation: int, timeout: float = 60.0) -> float:
        """Until every node's agent has applied `generation`; returns the seconds waited."""
        start = time.monotonic()
        waiting = set(rec.nodes)
        while waiting:
            for node in sorted(waiting):
                st = self.agent_status(node)
                if st and st.get("generation", -1) >= generation:
                    waiting.discard(node)
                elif not alive(rec.nodes[node].agent_pid):
                    raise LabError(f"the agent of {node} is not running; see {self.agents_dir / (node + '.log')}")
            if waiting and time.monotonic() - start > timeout:
                details = "; ".join(f"{n}: {(self.agent_status(n) or {}).get('last_error') or 'no error reported'}" for n in sorted(waiting))
                tails = "\n".join(f"--- {n}.log (last lines)\n" + self._log_tail(n) for n in sorted(waiting))
                details += "\n" + tails
                raise LabError(f"agents did not apply generation {generation} within {timeout:.0f} s ({details}); see {self.agents_dir}")
            if waiting:
                time.sleep(0.005)
        return time.monotonic() - start

    def objects(self) -> list[Any]:
        """Every object of the lab, parsed (the same files the agents read)."""
        out = []
        for f in sorted(self.manifests.glob("*.yaml")):
            obj, problems = parse_object(yaml.safe_load(f.read_text()), str(f), 0)
            if obj is not None and not problems:
                out.append(obj)
        return out

    # --- up / down ----------------------------------------------------------------------

    def up(self, paths: list[str], nodes: int = 2, topology: str = "routed",
           cluster_cidr: str = DEFAULT_CLUSTER_CIDR, node_prefix: int = DEFAULT_NODE_PREFIX, say: Say = print,
           backend: str = "nftables") -> LabRecord:
        if topology not in ("routed", "bridge"):
            raise LabError("--topology is routed or bridge")
        try:
            backend = resolve(backend)
        except (ValueError, RuntimeError) as e:
            raise LabError(str(e)) from e
        if self.exists():
            raise LabError(f"lab {self.name!r} exists; remove it with `policyd lab down --name {self.name}`")
        if nodes < 1:
            raise LabError("--nodes must be at least 1")
        raws = read_raw(paths)
        parsed = validate(raws)
        node_objs = [o for o, _ in parsed if isinstance(o, Node)]
        pods = [o for o, _ in parsed if isinstance(o, Pod)]
        defaults = tuple(f"node-{i + 1}" for i in range(nodes))
        alloc = allocate(node_objs, pods, cluster_cidr, node_prefix, default_nodes=defaults, strict=True)
        if alloc.problems:
            raise InvalidInput(alloc.problems)
        node_names = sorted(alloc.nodes)  # the nodes the manifests name, else node-1..N
        for d in (self.manifests, self.agents_dir, self.dir / "pods"):
            d.mkdir(parents=True, exist_ok=True)
        rec = LabRecord(self.name, topology, created=time.time(), backend=backend)
        self.save(rec)  # from here on, `lab down` can clean up whatever exists
        try:
            say(f"lab {self.name}: {len(node_names)} nodes ({topology} topology, {backend} backend), {len(alloc.pods)} pods")
            topo = Topology(self.prefix, topology, state_dir=str(self.dir / "pods"))
            for name in node_names:
                cidr = alloc.nodes[name]
                h = topo.add_node(name, cidr)  # type: ignore[arg-type]
                rec.nodes[name] = NodeRecord(name, h.index, str(cidr), h.netns)
                self.write_object("Node", name, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                                                 "spec": {"podCIDR": str(cidr), "podCIDRs": [str(cidr)]}})
            self.save(rec)
            placed = {p.key: p for p in alloc.pods}
            for obj, raw in parsed:
                if isinstance(obj, Pod):
                    continue
                if not isinstance(obj, Node):
                    self.write_object(kind_of(obj), key_of(obj), raw.raw)
            self._implicit_namespaces([o for o, _ in parsed])
            handles: list[PodHandle] = []
            for obj, raw in parsed:
                if isinstance(obj, Pod):
                    handles.append(self._start_pod(topo, rec, placed[obj.key], raw.raw))
            topo.wait_ready(handles=handles)
            for ph in handles:
                rec.pods[ph.pod.key].pid = ph.proc.pid if ph.proc else None
            self.save(rec)
            gen = self.bump_generation()
            for name in node_names:
                rec.nodes[name].agent_pid = self._start_agent(rec, name)
            self.save(rec)
            waited = self.wait_agents(rec, gen, timeout=30.0)
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
            if pid and alive(pid) and _is_ours(pid):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 2
        while any(pid and alive(pid) and _is_ours(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        delete_namespaces(self.prefix + ".")  # kills whatever still runs inside them
        shutil.rmtree(self.dir, ignore_errors=True)
        if not quiet:
            say(f"lab {self.name}: removed" if found else f"lab {self.name}: nothing to remove")
        return found

    # --- pods and agents ------------------------------------------------------------------

    def _start_pod(self, topo: Topology, rec: LabRecord, pod: Pod, raw: dict[str, Any]) -> PodHandle:
        tcp, udp, sctp = served_ports(pod)
        h = topo.add_pod(pod, tcp, udp)
        rec.pods[pod.key] = PodRecord(pod.key, pod.node or "", h.netns, h.host_if, [str(i) for i in pod.ips], h.control, tcp, udp, sctp,
                                      h.proc.pid if h.proc else None)
        self.save(rec)
        out = copy.deepcopy(raw)
        out.setdefault("spec", {})["nodeName"] = pod.node
        out["status"] = {"phase": "Running", "podIP": str(pod.ips[0]), "podIPs": [{"ip": str(i)} for i in pod.ips]}
        self.write_object("Pod", pod.key, out)
        return h

    def _start_agent(self, rec: LabRecord, node: str) -> int:
        log = open(self.agents_dir / f"{node}.log", "ab")
        args = [sys.executable, "-m", "policyd.lab.agentproc", "--state", str(self.dir), "--node", node, "--mode", rec.mode, "--backend", rec.backend]
        proc = subprocess.Popen(["ip", "netns", "exec", rec.nodes[node].netns, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return proc.pid

    def require_agents(self, rec: LabRecord) -> None:
        """Refuse a change before writing anything when an agent is not running: the change
        could not be confirmed as enforced, and would land unconfirmed."""
        dead = sorted(n for n, r in rec.nodes.items() if not alive(r.agent_pid))
        if dead:
            raise LabError(f"the agent of {', '.join(dead)} is not running; nothing was changed "
                           f"(`policyd lab restart-agent {dead[0]} --name {self.name}` starts it again; its log: "
                           f"{self.agents_dir / (dead[0] + '.log')})")

    def restart_agent(self, node: str, downtime: float = 0.0) -> int:
        """Stop a node's agent (SIGTERM: the ruleset stays), wait `downtime`, start a new
        one; returns when the new agent has adopted the table and applied the current
        generation."""
        rec = self.load()
        if node not in rec.nodes:
            raise LabError(f"no node {node} in lab {self.name}")
        pid = rec.nodes[node].agent_pid
        if pid and alive(pid) and _is_ours(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        (self.agents_dir / f"{node}.json").unlink(missing_ok=True)
        time.sleep(downtime)
        rec.nodes[node].agent_pid = self._start_agent(rec, node)
        self.save(rec)
        gen_path = self.manifests / "generation"
        self.wait_agents(rec, int(gen_path.read_text()) if gen_path.exists() else 0)
        return rec.nodes[node].agent_pid or 0

    def _implicit_namespaces(self, objs: Iterable[Any]) -> None:
        for ns in sorted({o.namespace for o in objs if isinstance(o, (Pod, NetworkPolicy))}):
            if self.read_object("Namespace", ns) is None:
                self.write_object("Namespace", ns, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # --- kubectl-like changes ----------------------------------------------------------------

    def apply(self, paths: list[str], say: Say = print) -> float:
        """Create or update objects; returns the seconds until every agent applied them."""
        rec = self.load()
        self.require_agents(rec)
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
                old_raw = self.read_object("Pod", key)
                if old_raw is not None:
                    say(f"pod/{obj.name} {self._update_pod(rec, obj, raw.raw, old_raw)}")
                else:
                    new_pods.append((obj, raw.raw))
                continue
            existed = self.read_object(kind, key) is not None
            changed = self.write_object(kind, key, raw.raw)
            say(f"{kind.lower()}/{obj.name} {('configured' if existed else 'created') if changed else 'unchanged'}")
        self._implicit_namespaces([o for o, _ in parsed])
        handles: list[PodHandle] = []
        for obj, raw in new_pods:
            pod = self._place(rec, obj)
            handles.append(self._start_pod(topo, rec, pod, raw))
            say(f"pod/{obj.name} created on {pod.node} with {', '.join(map(str, pod.ips))}")
        topo.wait_ready(handles=handles)
        gen = self.bump_generation()
        return self.wait_agents(rec, gen)

    def _update_pod(self, rec: LabRecord, pod: Pod, raw: dict[str, Any], old_raw: dict[str, Any]) -> str:
        old, _ = parse_object(old_raw, "<lab>", 0)
        assert isinstance(old, Pod)
        if (pod.node and pod.node != old.node) or served_ports(pod) != served_ports(old) or (pod.ips and set(pod.ips) != set(old.ips)):
            raise LabError(f"pod {pod.key}: node, ports and addresses cannot change; delete the pod and apply it again")
        out = copy.deepcopy(raw)
        out.setdefault("spec", {})["nodeName"] = old.node
        out["status"] = old_raw.get("status")
        return "configured" if self.write_object("Pod", pod.key, out) else "unchanged"

    def _place(self, rec: LabRecord, pod: Pod) -> Pod:
        """The scheduler and IPAM: nodeName or the least-loaded node; the lowest free
        address from .2 of the node's CIDR unless status.podIPs gives one."""
        if pod.node and pod.node not in rec.nodes:
            raise LabError(f"pod {pod.key}: spec.nodeName {pod.node!r} is not a lab node ({', '.join(sorted(rec.nodes))})")
        load = {n: 0 for n in rec.nodes}
        for p in rec.pods.values():
            load[p.node] = load.get(p.node, 0) + 1
        node = pod.node or min(sorted(rec.nodes), key=lambda n: load[n])
        net = ipaddress.ip_network(rec.nodes[node].cidr)
        used = {ipaddress.ip_address(i) for p in rec.pods.values() for i in p.ips}
        if pod.ips:
            bad = [str(i) for i in pod.ips if i not in net or i in used]
            if bad:
                raise LabError(f"pod {pod.key}: status.podIPs {', '.join(bad)} outside {node}'s pod CIDR {net} or in use")
            ips = pod.ips
        else:
            gw = net.network_address + 1
            ips = (next(h for h in net.hosts() if h != gw and h not in used),)
        return Pod(pod.namespace, pod.name, pod.labels, node, ips, pod.ports, pod.host_network, pod.phase)

    def delete(self, paths: list[str], say: Say = print) -> int:
        """Delete the objects named in the files (a namespace takes its pods and policies
        with it). Returns the number of objects that were not found."""
        rec = self.load()
        self.require_agents(rec)
        missing = 0
        gone_pods: list[str] = []
        for kind, key in identities(read_raw(paths)):  # like kubectl delete -f: names only
            name = key.rpartition("/")[2]
            if kind == "Node":
                raise LabError(f"node {name}: the lab's nodes are fixed at `lab up`")
            if not self.remove_object(kind, key):
                say(f"{kind.lower()}/{name} not found")
                missing += 1
                continue
            say(f"{kind.lower()}/{name} deleted")
            if kind == "Pod":
                gone_pods.append(key)
            if kind == "Namespace":
                for f in list(self.manifests.glob("*.yaml")):
                    kind_part, ns_part, rest = f.name.split(".", 2)  # namespaces have no dots
                    if ns_part != name:
                        continue
                    f.unlink()
                    if kind_part == "pod":
                        gone_pods.append(f"{name}/{rest[: -len('.yaml')]}")
        gen = self.bump_generation()
        self.wait_agents(rec, gen)
        topo = self.topology(rec)
        for key in gone_pods:
            p = rec.pods.pop(key, None)
            if p is not None:
                topo.remove_pod(p.netns, p.control)
        self.save(rec)
        return missing

    def label(self, kind: str, ref: str, pairs: list[str], namespace: str = "default", say: Say = print) -> float:
        """`k=v` sets, `k-` removes, like kubectl label --overwrite."""
        rec = self.load()
        self.require_agents(rec)
        kind = {"pod": "Pod", "pods": "Pod", "ns": "Namespace", "namespace": "Namespace"}.get(kind.lower(), "")
        if not kind:
            raise LabError("label what? pod or ns")
        if kind == "Pod":
            ns, _, name = ref.rpartition("/")
            key = f"{ns or namespace}/{name}"
        else:
            key = name = ref
        raw = self.read_object(kind, key)
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
        obj, problems = parse_object(raw, f"{kind.lower()}/{key}", 0)
        if problems:
            raise InvalidInput(problems)
        changed = self.write_object(kind, key, raw)
        say(f"{kind.lower()}/{name} {'labeled' if changed else 'not labeled (no change)'}")
        return self.wait_agents(rec, self.bump_generation())

    # --- probes --------------------------------------------------------------------------------

    def select(self, rec: LabRecord, sel: str | None, labels: dict[str, dict[str, str]]) -> list[str]:
        """Pod keys for `NS/POD`, a label selector, or (None) every pod; `labels` by pod key."""
        keys = sorted(k for k in labels if k in rec.pods)
        if not sel:
            return keys
        if "/" in sel:
            if sel not in rec.pods:
                raise LabError(f"no pod {sel} in lab {self.name}")
            return [sel]
        selector = parse_pod_selector(sel)
        return [k for k in keys if selector.matches(labels[k])]

    def probe(self, src: str | None = None, dst: str | None = None, protocol: str = "TCP", port: int | None = 80,
              timeout: float = 0.5, progress: Say | None = None) -> Matrix:
        """Real probes from every selected source to every selected destination (its first
        address), concurrently. A TCP reset or an ICMP port-unreachable counts as reached:
        the packets passed the policy, only no server listened."""
        rec = self.load()
        if protocol == "SCTP":
            raise LabError("this kernel has no SCTP sockets: SCTP cannot be probed (policyd matrix shows the verdicts)")
        labels: dict[str, dict[str, str]] = {p.key: p.labels for p in self.objects() if isinstance(p, Pod)}
        sources, targets = self.select(rec, src, labels), self.select(rec, dst, labels)
        pairs = [(s, d) for s in sources for d in targets]
        results: dict[tuple[str, str], bool] = {}
        start, last = time.monotonic(), time.monotonic()

        def one(pair: tuple[str, str]) -> tuple[tuple[str, str], bool]:
            s, d = pair
            ip = sorted(rec.pods[d].ips, key=lambda a: ipaddress.ip_address(a).version)[0]
            return pair, probe_via(rec.pods[s].control, ip, protocol, port, timeout)

        with ThreadPoolExecutor(max_workers=min(64, max(1, len(pairs)))) as ex:
            for n, (pair, ok) in enumerate(ex.map(one, pairs), 1):
                results[pair] = ok
                if progress and time.monotonic() - last > 1.0:
                    progress(f"probed {n}/{len(pairs)} pairs ({time.monotonic() - start:.0f} s)")
                    last = time.monotonic()
        allowed = {s: [d for d in targets if results[(s, d)]] for s in sources}
        pods = sorted(set(sources) | set(targets))
        return Matrix(protocol, port if protocol != "ICMP" else None, pods, allowed, targets=targets)

    def expected(self, protocol: str, port: int | None, sources: list[str], targets: list[str]) -> Matrix:
        """What the policy engine says for the lab's current manifests."""
        w = load_world([self.manifests], strict_addresses=True)
        m = compute(w.compile(), w.pods, protocol, port)
        allowed = {s: [d for d in targets if d in m.allowed.get(s, ())] for s in sources}
        return Matrix(protocol, m.port, sorted(set(sources) | set(targets)), allowed, targets=targets)

    def services(self, rec: LabRecord) -> list[tuple[str, int | None]]:
        """ICMP and every TCP/UDP port a lab pod serves."""
        out: set[tuple[str, int | None]] = set()
        for p in rec.pods.values():
            out |= {("TCP", x) for x in p.tcp} | {("UDP", x) for x in p.udp}
        return [("ICMP", None), *sorted(out, key=lambda s: (s[0], s[1] or 0))]

    # --- status ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        rec = self.load()
        now = time.time()
        agents = {}
        for n in rec.nodes.values():
            st = self.agent_status(n.name) or {}
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
            }
        gen_path = self.manifests / "generation"
        return {
            "name": rec.name, "topology": rec.topology, "dispatch": rec.mode, "backend": rec.backend, "state": str(self.dir),
            "generation": int(gen_path.read_text()) if gen_path.exists() else 0,
            "nodes": [{"name": n.name, "netns": n.netns, "podCIDR": n.cidr, "agent": agents[n.name]}
                      for n in sorted(rec.nodes.values(), key=lambda n: n.index)],
            "pods": [{"pod": p.key, "node": p.node, "ips": p.ips, "interface": p.host_if, "netns": p.netns,
                      "tcp": p.tcp, "udp": p.udp, "sctp_not_served": p.sctp, "running": alive(p.pid)} for p in sorted(rec.pods.values(), key=lambda p: p.key)],
        }


def _is_ours(pid: int) -> bool:
    try:
        return b"policyd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def read_raw(paths: list[str]) -> list[RawObject]:
    problems: list[Problem] = []
    out: list[RawObject] = []
    for f in iter_files(paths):
        text = read_text(f, problems)
        if text is not None:
            out += raw_documents(str(f), text, problems)
    if problems:
        raise InvalidInput(problems)
    if not out:
        raise LabError(f"no objects in {', '.join(paths)}")
    return out


def identities(raws: list[RawObject]) -> list[tuple[str, str]]:
    """(kind, key) of each object, from apiVersion, kind and metadata alone: deleting needs
    no more (kubectl delete -f takes a manifest of just those)."""
    problems: list[Problem] = []
    out = []
    for r in raws:
        obj = r.raw if isinstance(r.raw, dict) else {}
        kind, api = obj.get("kind"), obj.get("apiVersion")
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        name, ns = meta.get("name"), meta.get("namespace") or "default"
        if (api, kind) not in {("v1", "Pod"), ("v1", "Namespace"), ("v1", "Node"), ("networking.k8s.io/v1", "NetworkPolicy")}:
            problems.append(Problem(r.source, r.index, "kind", f"cannot delete {api}/{kind}: the lab holds Pods, Namespaces and NetworkPolicies"))
        elif not isinstance(name, str) or not name or not isinstance(ns, str):
            problems.append(Problem(r.source, r.index, "metadata.name", "required: which object to delete", str(kind)))
        else:
            out.append((str(kind), name if kind in ("Namespace", "Node") else f"{ns}/{name}"))
    if problems:
        raise InvalidInput(problems)
    return out


def validate(raws: list[RawObject]) -> list[tuple[Any, RawObject]]:
    """Parse everything; any problem rejects the whole request, as the API server would."""
    problems: list[Problem] = []
    out = []
    seen: set[tuple[str, str]] = set()
    for r in raws:
        obj, ps = parse_object(r.raw, r.source, r.index)
        problems += ps
        if obj is None:
            continue
        ident = (kind_of(obj), key_of(obj))
        if ident in seen:
            problems.append(Problem(r.source, r.index, "metadata.name", f"duplicate {ident[0]} {ident[1]}", ident[0], ident[1]))
        seen.add(ident)
        out.append((obj, r))
    if problems:
        raise InvalidInput(problems)
    return out
