"""An in-process Kubernetes-compatible API server for tests (aiohttp), serving exactly what
kopf, the `kubernetes` client and kubectl use for Namespaces, Pods, NetworkPolicies and
Events:

* `/version`, discovery (`/api`, `/apis`, group versions), a stub OpenAPI v3 document that
  declares the `fieldValidation` parameter, so kubectl sends `fieldValidation=Strict` and
  this server checks the top-level fields (deeper schema checks are the real server's job);
* list (with `labelSelector` equality terms, and `limit`/`continue` as the real server
  pages: every page comes from the snapshot the first page saw, the token continues after
  the last key served, and a token older than the compaction floor answers `410 Expired`)
  and watch with
  resourceVersion semantics: chunked JSON-lines streams, replay from a resourceVersion,
  bookmarks, `sendInitialEvents`, `timeoutSeconds`, and an ERROR event with `410 Gone` for a
  resourceVersion older than the compaction floor;
* create / get / update (optimistic concurrency) / patch (JSON merge, strategic merge with
  the merge keys of these kinds, JSON patch) / delete, the Pod `status` subresource;
* deletion as the real server does it where an agent sees the difference: a Pod bound to
  a node first gets `deletionTimestamp` (MODIFIED) and goes (DELETED) when its grace period
  ends (capped at `grace_cap` seconds, standing in for the kubelet's confirmation; 0 or an
  unbound pod: at once); a Namespace turns `Terminating` (MODIFIED), its objects are deleted
  that way, and it goes once it is empty.

Test controls: `drop_watches()` closes every open watch stream; `compact()` forgets the
history so that resuming watches get 410; `requests` logs every request (method, path,
query) so a test can assert that an agent never wrote to an object.

Deliberate differences from the real server: no authentication or admission, status given
on create is kept (tests place pods by writing it, as a kubelet would through the status
subresource), no finalizers.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import copy
import json
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS = [
    Kind("", "v1", "namespaces", "Namespace", False, (), ("ns",)),
    Kind("", "v1", "pods", "Pod", True, ("status",), ("po",)),
    Kind("", "v1", "nodes", "Node", False, ("status",), ("no",)),
    Kind("", "v1", "events", "Event", True, (), ("ev",)),
    Kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, (), ("netpol",)),
    Kind("events.k8s.io", "v1", "events", "Event", True),
]
TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec", "status",
             # Event's fields are top-level
             "involvedObject", "reason", "message", "type", "source", "firstTimestamp", "lastTimestamp",
             "eventTime", "count", "action", "reportingComponent", "reportingInstance", "related", "series",
             "regarding", "note", "reportingController", "deprecatedSource", "deprecatedFirstTimestamp",
             "deprecatedLastTimestamp", "deprecatedCount"}
# Strategic merge: list fields that merge by key instead of being replaced.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name", "ports": "containerPort",
              "env": "name", "volumes": "name", "volumeMounts": "mountPath", "podIPs": "ip", "conditions": "type",
              "tolerations": "key", "finalizers": None, "ownerReferences": "uid"}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def kind_of(plural: str) -> Kind:
    return next(k for k in KINDS if k.plural == plural)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code}, status=code)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def strategic_merge(target: Any, patch: Any, name: str = "") -> Any:
    if isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return {k: v for k, v in patch.items() if k != "$patch"}
        if patch.get("$patch") == "delete":
            return None
        out = dict(target) if isinstance(target, dict) else {}
        for k, v in patch.items():
            if k.startswith("$"):
                continue
            if v is None:
                out.pop(k, None)
            else:
                merged = strategic_merge(out.get(k), v, k)
                if merged is None:
                    out.pop(k, None)
                else:
                    out[k] = merged
        return out
    if isinstance(patch, list) and name in MERGE_KEYS and isinstance(target, list):
        key = MERGE_KEYS[name]
        if key is None:  # a set of scalars
            return list(dict.fromkeys([*target, *patch]))
        items = [copy.deepcopy(x) for x in target]
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                items.append(copy.deepcopy(item))
                continue
            idx = next((i for i, x in enumerate(items) if isinstance(x, dict) and x.get(key) == item[key]), None)
            if item.get("$patch") == "delete":
                if idx is not None:
                    items.pop(idx)
            elif idx is None:
                items.append(strategic_merge({}, item))
            else:
                items[idx] = strategic_merge(items[idx], item)
        return items
    return copy.deepcopy(patch)


def json_patch(target: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902: add, remove, replace, test (enough for kubectl and tests)."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1] if parts else ""
        kind = op["op"]
        if kind == "test":
            cur = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if cur != op.get("value"):
                raise ValueError(f"test failed at {op['path']}")
        elif kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif kind == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                parent[last] = op["value"]
        else:
            raise ValueError(f"unsupported JSON patch op {kind!r}")
    return doc


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """`labelSelector` with equality terms (`a=b`, `a==b`, `a!=b`) and existence (`a`, `!a`)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def fields_match(selector: str, obj: dict[str, Any]) -> bool:
    """Field selector terms `a.b=v`, `a.b==v`, `a.b!=v` on the object's dotted paths (the real
    server allows a few fields per kind; the agent uses metadata.name and Event fields)."""
    for term in filter(None, selector.split(",")):
        negate = "!=" in term
        path, _, want = term.replace("!=", "=").replace("==", "=").partition("=")
        value: Any = obj
        for part in path.strip().split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if (str(value if value is not None else "") == want.strip()) == negate:
            return False
    return True


@dataclass(eq=False)
class Watch:
    kind: Kind
    namespace: str | None
    selector: str
    fields: str = ""
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    closed: bool = False  # dropped: takes no more events


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    user_agent: str = ""

    @property
    def is_write(self) -> bool:
        return self.method in MUTATING

    @property
    def resource(self) -> str:
        """The plural the request addresses (`namespaces` only when a Namespace itself is)."""
        parts = self.path.strip("/").split("/")
        parts = parts[2:] if parts[0] == "api" else parts[3:]
        if parts[:1] == ["watch"]:
            parts = parts[1:]
        if len(parts) >= 3 and parts[0] == "namespaces":
            return parts[2]
        return parts[0] if parts else ""


class KubeAPI:
    """The server's state and handlers; `serve()` runs it on a background thread."""

    def __init__(self, bookmark_every: float = 1.0, grace_cap: float = 0.3) -> None:
        self.grace_cap = grace_cap
        self.snapshots: dict[tuple[Kind, int], tuple[list[tuple[str, str]], list[dict[str, Any]]]] = {}
        self.objects: dict[tuple[Kind, str, str], dict[str, Any]] = {}
        self._sorted: dict[Kind, tuple[int, list[tuple[str, dict[str, Any]]]]] = {}
        self.history: list[tuple[int, Kind, str, dict[str, Any]]] = []  # (rv, kind, type, object)
        self.rv = 1
        self.floor = 0  # resourceVersions older than this answer 410 Gone
        self.bookmark_every = bookmark_every
        self.watches: set[Watch] = set()
        self.requests: list[Request] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.holding: list[tuple[Watch, tuple[str, dict[str, Any]]]] | None = None  # events held back by recreate()
        for ns in ("default", "kube-system", "kube-public"):
            self._store(KINDS[0], "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}, "ADDED")

    # --- test controls (thread-safe) --------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn on the server's loop and return its result."""
        assert self.loop is not None
        fut = asyncio.run_coroutine_threadsafe(self._as_coro(fn, *args), self.loop)
        return fut.result(10)

    @staticmethod
    async def _as_coro(fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def drop_watches(self) -> int:
        return int(self.call(self._drop_watches))

    def _drop_watches(self) -> int:
        n = len(self.watches)
        for w in list(self.watches):
            w.closed = True
            w.queue.put_nowait(None)
        return n

    def compact(self) -> None:
        """Forget the history: a watch resumed from an older resourceVersion gets 410 Gone."""
        self.call(self._compact)

    def _compact(self) -> None:
        self.floor = self.rv
        self.history.clear()

    def delete_during_outage(self, plural: str, ns: str, name: str) -> None:
        """Drop every watch, delete the object and compact the history, in one step: the
        deletion is never streamed, and watchers resuming from their resourceVersion get
        410 Gone, so only a relist can reveal it."""
        def outage() -> None:
            self._drop_watches()
            kind = kind_of(plural)
            self._store(kind, ns, copy.deepcopy(self.objects[(kind, ns, name)]), "DELETED")
            self._compact()
        self.call(outage)

    def update_during_outage(self, plural: str, ns: str, name: str, obj: dict[str, Any]) -> None:
        """As delete_during_outage, but the object is replaced by `obj`: the change is never
        streamed, so only a relist can reveal it."""
        def outage() -> None:
            self._drop_watches()
            kind = kind_of(plural)
            self._store(kind, ns, copy.deepcopy(obj), "MODIFIED")
            self._compact()
        self.call(outage)

    def recreate(self, plural: str, ns: str, name: str, obj: dict[str, Any], added_first: bool = False) -> None:
        """Delete the object and create `obj` under its name in one step, as a client that
        deletes and re-creates within milliseconds does: watchers get DELETED and ADDED
        back to back, and kopf hands each uid to its own worker. `added_first`: watchers get
        the new ADDED before the old DELETED, the order in which kopf's per-uid workers
        may handle them (which no server can be made to cause on demand)."""
        def both() -> None:
            kind = kind_of(plural)
            self.holding = [] if added_first else None
            try:
                self._store(kind, ns, copy.deepcopy(self.objects[(kind, ns, name)]), "DELETED")
                self._store(kind, ns, copy.deepcopy(obj), "ADDED")
            finally:
                held, self.holding = self.holding, None
            for w, event in reversed(held or []):
                w.queue.put_nowait(event)
        self.call(both)

    def writes(self, plurals: tuple[str, ...] = ("pods", "namespaces", "networkpolicies")) -> list[Request]:
        """Mutating requests that touched one of these resources (events are not among them)."""
        return [r for r in list(self.requests) if r.is_write and r.resource in plurals]

    # --- storage --------------------------------------------------------------------------

    def _store(self, kind: Kind, ns: str, obj: dict[str, Any], typ: str) -> dict[str, Any]:
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        if typ == "ADDED":
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            meta["generation"] = 1
            if ns:
                meta["namespace"] = ns
            if kind.kind == "Namespace":
                meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
                obj.setdefault("status", {"phase": "Active"})
        key = (kind, ns, meta["name"])
        if typ == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        obj.setdefault("apiVersion", kind.group_version)
        obj.setdefault("kind", kind.kind)
        self.history.append((self.rv, kind, typ, copy.deepcopy(obj)))
        for w in list(self.watches):
            if not w.closed and self._visible(w, kind, ns, obj):
                if self.holding is not None:
                    self.holding.append((w, (typ, copy.deepcopy(obj))))
                else:
                    w.queue.put_nowait((typ, copy.deepcopy(obj)))
        return obj

    @staticmethod
    def _visible(w: Watch, kind: Kind, ns: str, obj: dict[str, Any]) -> bool:
        if w.kind != kind or (w.namespace is not None and w.namespace != ns):
            return False
        return selector_matches(w.selector, obj.get("metadata", {}).get("labels") or {}) and fields_match(w.fields, obj)

    # --- routing --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._log])
        r = app.router
        r.add_get("/version", self.version)
        r.add_get("/api", self.api_versions)
        r.add_get("/apis", self.api_groups)
        r.add_get("/openapi/v3", self.openapi_root)
        r.add_get("/openapi/v3/{path:.*}", self.openapi_doc)
        r.add_get("/openapi/v2", self.openapi_v2)
        r.add_route("*", "/api/{version}", self.resources)
        r.add_route("*", "/apis/{group}/{version}", self.resources)
        r.add_route("*", "/api/{version}/{rest:.+}", self.dispatch)
        r.add_route("*", "/apis/{group}/{version}/{rest:.+}", self.dispatch)
        return app

    @web.middleware
    async def _log(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        self.requests.append(Request(request.method, request.path, dict(request.query), request.headers.get("User-Agent", "")))
        return await handler(request)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "32", "gitVersion": "v1.32.0-policyd-fake",
                                  "platform": "linux/amd64"})

    async def api_versions(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})

    async def api_groups(self, request: web.Request) -> web.Response:
        groups = sorted({(k.group, k.version) for k in KINDS if k.group})
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
             "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}} for g, v in groups]})

    async def openapi_v2(self, request: web.Request) -> web.Response:
        return status(404, "NotFound", "only OpenAPI v3 is served")

    async def openapi_root(self, request: web.Request) -> web.Response:
        gvs = sorted({("api/" if not k.group else "apis/") + k.group_version for k in KINDS})
        return web.json_response({"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash=fake"} for gv in gvs}})

    async def openapi_doc(self, request: web.Request) -> web.Response:
        gv = request.match_info["path"]
        params = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}]
        paths: dict[str, Any] = {}
        for k in KINDS:
            if ("api/" if not k.group else "apis/") + k.group_version != gv:
                continue
            base = f"/{gv}/namespaces/{{namespace}}/{k.plural}" if k.namespaced else f"/{gv}/{k.plural}"
            op = {"parameters": params, "responses": {"200": {"description": "OK"}},
                  "x-kubernetes-group-version-kind": {"group": k.group, "version": k.version, "kind": k.kind}}
            paths[base] = {"post": op}
            paths[base + "/{name}"] = {"put": op, "patch": op}
        if not paths:
            return status(404, "NotFound", f"no OpenAPI document {gv}")
        return web.json_response({"openapi": "3.0.0", "info": {"title": "policyd test API", "version": "v1.32"},
                                  "paths": paths, "components": {"schemas": {}}})

    def _kinds(self, group: str, version: str) -> list[Kind]:
        return [k for k in KINDS if k.group == group and k.version == version]

    async def resources(self, request: web.Request) -> web.Response:
        group, version = request.match_info.get("group", ""), request.match_info["version"]
        kinds = self._kinds(group, version)
        if not kinds:
            return status(404, "NotFound", f"no API {group}/{version}")
        res = []
        for k in kinds:
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            res.append({"name": k.plural, "singularName": k.kind.lower(), "namespaced": k.namespaced, "kind": k.kind, "verbs": verbs,
                        "shortNames": list(k.short_names)})
            for sub in k.subresources:
                res.append({"name": f"{k.plural}/{sub}", "singularName": "", "namespaced": k.namespaced, "kind": k.kind,
                            "verbs": ["get", "patch", "update"]})
        return web.json_response({"kind": "APIResourceList", "apiVersion": "v1",
                                  "groupVersion": f"{group}/{version}" if group else version, "resources": res})

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        group, version = request.match_info.get("group", ""), request.match_info["version"]
        parts = request.match_info["rest"].strip("/").split("/")
        watch_path = parts[0] == "watch"
        if watch_path:
            parts = parts[1:]
        ns: str | None = None
        if len(parts) >= 3 and parts[0] == "namespaces" and parts[2]:
            ns, parts = parts[1], parts[2:]
        plural, name, sub = parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None
        kind = next((k for k in self._kinds(group, version) if k.plural == plural), None)
        if kind is None:
            return status(404, "NotFound", f"the server could not find the requested resource ({plural})")
        if kind.namespaced is False and ns is not None:
            return status(404, "NotFound", f"{plural} are not namespaced")
        if sub and sub not in kind.subresources:
            return status(404, "NotFound", f"no subresource {sub}")
        m = request.method
        if name is None:
            if m == "GET" and (watch_path or request.query.get("watch") in ("true", "1")):
                return await self.watch(request, kind, ns)
            if m == "GET":
                return self.list(request, kind, ns)
            if m == "POST":
                return await self.create(request, kind, ns)
            return status(405, "MethodNotAllowed", f"{m} on a collection")
        key = (kind, ns or "", name)
        if m == "GET":
            obj = self.objects.get(key)
            return web.json_response(obj) if obj else self._not_found(kind, name)
        if m == "DELETE":
            grace = request.query.get("gracePeriodSeconds")
            if grace is None and request.can_read_body:
                grace = (await self._body(request) or {}).get("gracePeriodSeconds")
            return self.delete(kind, ns or "", name, None if grace is None else int(grace))
        if m in ("PUT", "PATCH"):
            return await self.modify(request, kind, ns or "", name, sub)
        return status(405, "MethodNotAllowed", m)

    @staticmethod
    def _not_found(kind: Kind, name: str) -> web.Response:
        return status(404, "NotFound", f'{kind.plural} "{name}" not found')

    # --- verbs ----------------------------------------------------------------------------

    def _select(self, kind: Kind, ns: str | None, selector: str) -> list[dict[str, Any]]:
        # A paged list of 100k objects asks for 200 pages: sort once per store version.
        cached = self._sorted.get(kind)
        if cached is None or cached[0] != self.rv:
            cached = (self.rv, [(n, o) for (k, n, _), o in sorted(self.objects.items(), key=lambda kv: (kv[0][1], kv[0][2])) if k == kind])
            self._sorted[kind] = cached
        items = [o for n, o in cached[1] if ns is None or n == ns]
        if not selector:
            return items
        return [o for o in items if selector_matches(selector, o.get("metadata", {}).get("labels") or {})]

    def list(self, request: web.Request, kind: Kind, ns: str | None) -> web.Response:
        q = request.query
        after: tuple[str, str] | None = None
        if q.get("continue"):
            try:
                tok = json.loads(base64.urlsafe_b64decode(q["continue"]))
                list_rv, after = int(tok["rv"]), (tok["start"][0], tok["start"][1])
            except (ValueError, KeyError, TypeError, IndexError):
                return status(400, "BadRequest", "continue key is not valid")
            snapshot = self.snapshots.get((kind, list_rv))
            if snapshot is None or list_rv < self.floor:
                return status(410, "Expired", "The provided continue parameter is too old to display a consistent list "
                              "result. You can start a new list without the continue parameter.")
        else:
            list_rv = self.rv
            # What the first page saw: later pages read it, whatever changes meanwhile
            # (objects are replaced on every change, never edited in place).
            entries = sorted(((n, nm), o) for (k, n, nm), o in self.objects.items() if k == kind)
            snapshot = ([key for key, _ in entries], [o for _, o in entries])
            self.snapshots[(kind, list_rv)] = snapshot
            while len(self.snapshots) > 32:
                del self.snapshots[next(iter(self.snapshots))]
        selector = q.get("labelSelector", "")
        keys, objs = snapshot
        start = 0 if after is None else bisect.bisect_right(keys, after)
        limit = int(q.get("limit") or 0)
        page: list[dict[str, Any]] = []
        last: tuple[str, str] | None = None
        for i in range(start, len(keys)):
            if limit and len(page) == limit:
                break
            last = keys[i]
            if ((ns is None or last[0] == ns) and selector_matches(selector, objs[i].get("metadata", {}).get("labels") or {})
                    and fields_match(q.get("fieldSelector", ""), objs[i])):
                page.append(objs[i])
        more = last is not None and last < keys[-1]
        cont = base64.urlsafe_b64encode(json.dumps({"rv": list_rv, "start": list(last or ())}).encode()).decode() if more and limit else ""
        return web.json_response({"kind": f"{kind.kind}List", "apiVersion": kind.group_version,
                                  "metadata": {"resourceVersion": str(list_rv), "continue": cont}, "items": page})

    async def watch(self, request: web.Request, kind: Kind, ns: str | None) -> web.StreamResponse:
        q = request.query
        w = Watch(kind, ns, q.get("labelSelector", ""), q.get("fieldSelector", ""))
        since = q.get("resourceVersion", "")
        bookmarks = q.get("allowWatchBookmarks") == "true"
        timeout = float(q.get("timeoutSeconds") or 1800)
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        await resp.prepare(request)

        async def send(typ: str, obj: dict[str, Any]) -> None:
            await resp.write(json.dumps({"type": typ, "object": obj}).encode() + b"\n")

        # Snapshot and subscription happen in one step on the loop: no event falls between.
        self.watches.add(w)
        try:
            if since and since != "0" and int(since) < self.floor:
                await send("ERROR", {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired",
                                     "code": 410, "message": f"too old resource version: {since} ({self.floor})"})
                return resp
            if not since or since == "0" or q.get("sendInitialEvents") == "true":
                for obj in self._select(kind, ns, w.selector):
                    if fields_match(w.fields, obj):
                        await send("ADDED", obj)
                if q.get("sendInitialEvents") == "true":
                    await send("BOOKMARK", {"kind": kind.kind, "apiVersion": kind.group_version, "metadata": {
                        "resourceVersion": str(self.rv), "annotations": {"k8s.io/initial-events-end": "true"}}})
            else:
                for rv, k, typ, obj in list(self.history):
                    if rv > int(since) and self._visible(w, k, obj.get("metadata", {}).get("namespace", ""), obj):
                        await send(typ, obj)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(w.queue.get(), min(left, self.bookmark_every))
                except TimeoutError:
                    if bookmarks:
                        await send("BOOKMARK", {"kind": kind.kind, "apiVersion": kind.group_version,
                                                "metadata": {"resourceVersion": str(self.rv)}})
                    continue
                if item is None:  # drop_watches(): end the stream abruptly
                    break
                await send(*item)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watches.discard(w)
        return resp

    async def _body(self, request: web.Request) -> Any:
        text = await request.text()
        return json.loads(text) if text else {}

    def _check_fields(self, request: web.Request, obj: dict[str, Any]) -> web.Response | None:
        if request.query.get("fieldValidation") != "Strict":
            return None
        unknown = sorted(set(obj) - TOP_LEVEL)
        if unknown:
            return status(400, "BadRequest", f'strict decoding error: unknown field "{unknown[0]}"')
        return None

    async def create(self, request: web.Request, kind: Kind, ns: str | None) -> web.Response:
        obj = await self._body(request)
        if not isinstance(obj, dict) or not obj.get("metadata", {}).get("name"):
            if obj.get("metadata", {}).get("generateName"):
                obj["metadata"]["name"] = obj["metadata"]["generateName"] + uuid.uuid4().hex[:5]
            else:
                return status(422, "Invalid", "metadata.name: Required value")
        bad = self._check_fields(request, obj)
        if bad:
            return bad
        if kind.namespaced:
            body_ns = obj["metadata"].get("namespace")
            if body_ns and body_ns != ns:
                return status(400, "BadRequest", "the namespace of the object does not match the namespace on the request")
            if (KINDS[0], "", ns) not in self.objects:
                return status(404, "NotFound", f'namespaces "{ns}" not found')
        name = obj["metadata"]["name"]
        if (kind, ns or "", name) in self.objects:
            return status(409, "AlreadyExists", f'{kind.plural} "{name}" already exists')
        if request.query.get("dryRun"):
            return web.json_response(obj, status=201)
        return web.json_response(self._store(kind, ns or "", obj, "ADDED"), status=201)

    async def modify(self, request: web.Request, kind: Kind, ns: str, name: str, sub: str | None) -> web.Response:
        cur = self.objects.get((kind, ns, name))
        if cur is None:
            return self._not_found(kind, name)
        body = await self._body(request)
        ctype = request.content_type
        try:
            if request.method == "PUT":
                rv = body.get("metadata", {}).get("resourceVersion")
                if rv and rv != cur["metadata"]["resourceVersion"]:
                    return status(409, "Conflict", f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has been modified')
                new = body
            elif ctype == "application/merge-patch+json":
                new = merge_patch(cur, body)
            elif ctype == "application/strategic-merge-patch+json":
                new = strategic_merge(cur, body)
            elif ctype == "application/json-patch+json":
                new = json_patch(cur, body)
            else:
                return status(415, "UnsupportedMediaType", f"patch type {ctype} is not supported by this test server")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return status(422, "Invalid", f"patch does not apply: {e}")
        bad = self._check_fields(request, new)
        if bad:
            return bad
        if sub == "status":  # only status changes through the subresource
            merged = copy.deepcopy(cur)
            merged["status"] = new.get("status", {})
            new = merged
        else:
            new["status"] = copy.deepcopy(cur.get("status", {})) if kind.subresources else new.get("status", cur.get("status"))
        meta = new.setdefault("metadata", {})
        for k in ("uid", "creationTimestamp", "namespace", "name"):
            if k in cur["metadata"]:
                meta[k] = cur["metadata"][k]
        meta["generation"] = cur["metadata"].get("generation", 1) + int(new.get("spec") != cur.get("spec"))
        if kind.kind == "Namespace":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        if request.query.get("dryRun"):
            return web.json_response(new)
        return web.json_response(self._store(kind, ns, new, "MODIFIED"))

    def delete(self, kind: Kind, ns: str, name: str, grace: int | None = None) -> web.Response:
        obj = self.objects.get((kind, ns, name))
        if obj is None:
            return self._not_found(kind, name)
        if kind.kind == "Namespace":
            return web.json_response(self._terminate_namespace(name))
        if kind.kind == "Pod":
            if grace is None:
                grace = int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
            if grace > 0 and (obj.get("spec") or {}).get("nodeName"):
                return web.json_response(self._delete_gracefully(kind, ns, name, grace))
        return web.json_response(self._store(kind, ns, copy.deepcopy(obj), "DELETED"))

    def _delete_gracefully(self, kind: Kind, ns: str, name: str, grace: int) -> dict[str, Any]:
        """deletionTimestamp now (MODIFIED); DELETED when the (capped) grace period ends."""
        obj = self.objects[(kind, ns, name)]
        if obj["metadata"].get("deletionTimestamp"):
            return obj
        marked = copy.deepcopy(obj)
        marked["metadata"]["deletionTimestamp"] = now()
        marked["metadata"]["deletionGracePeriodSeconds"] = grace
        marked = self._store(kind, ns, marked, "MODIFIED")
        uid = marked["metadata"]["uid"]

        def finish() -> None:
            current = self.objects.get((kind, ns, name))
            if current is not None and current["metadata"]["uid"] == uid:
                self._store(kind, ns, copy.deepcopy(current), "DELETED")

        asyncio.get_running_loop().call_later(min(grace, self.grace_cap), finish)
        return marked

    def _terminate_namespace(self, name: str) -> dict[str, Any]:
        """Terminating (MODIFIED) → its objects deleted (pods gracefully) → DELETED once empty."""
        kind = KINDS[0]
        ns_obj = copy.deepcopy(self.objects[(kind, "", name)])
        if not ns_obj["metadata"].get("deletionTimestamp"):
            ns_obj["metadata"]["deletionTimestamp"] = now()
            ns_obj["status"] = {"phase": "Terminating"}
            ns_obj = self._store(kind, "", ns_obj, "MODIFIED")
        for (k, n, nm) in [key for key in self.objects if key[1] == name and key[0].namespaced]:
            if k.kind == "Pod":
                pod = self.objects[(k, n, nm)]
                self._delete_gracefully(k, n, nm, int((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))) \
                    if (pod.get("spec") or {}).get("nodeName") else self._store(k, n, copy.deepcopy(pod), "DELETED")
            else:
                self._store(k, n, copy.deepcopy(self.objects[(k, n, nm)]), "DELETED")

        def finish() -> None:
            if (kind, "", name) not in self.objects:
                return
            if any(key[1] == name and key[0].namespaced for key in self.objects):
                asyncio.get_running_loop().call_later(0.05, finish)
                return
            self._store(kind, "", copy.deepcopy(self.objects[(kind, "", name)]), "DELETED")

        asyncio.get_running_loop().call_later(0, finish)
        return ns_obj

    # --- running --------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None) -> str:
        """Start on a background thread; returns the base URL. `sock` lets the caller bind
        inside another network namespace first."""
        if sock is None:
            sock = socket.create_server((host, port))
        addr = sock.getsockname()
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None, shutdown_timeout=0.5)
            self.loop.run_until_complete(self._runner.setup())
            self.loop.run_until_complete(web.SockSite(self._runner, sock).start())
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self._runner.cleanup())
            self.loop.close()

        self._thread = threading.Thread(target=run, name="kubeapi", daemon=True)
        self._thread.start()
        ready.wait(10)
        self.url = f"http://{addr[0]}:{addr[1]}"
        return self.url

    def stop(self) -> None:
        if self.loop is None:
            return
        self.call(self._drop_watches)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread:
            self._thread.join(10)

    def kubeconfig(self, server: str | None = None) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Config", "current-context": "test",
                "clusters": [{"name": "test", "cluster": {"server": server or self.url}}],
                "users": [{"name": "test", "user": {"token": "test"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}]}
