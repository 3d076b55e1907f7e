"""The agent's own HTTP access to the API server (aiohttp, which kopf runs on too):
credentials, TLS, and paged lists of the watched kinds.

Why not the `kubernetes` client here: importing it costs the agent 19 MB and 0.6 s of
start-up (it loads every API model), 126 MB in the image, and the agent needs four list
endpoints and two for Events (kube/events.py). The client is still what reads a kubeconfig
this module does not (a user authenticated by an `exec` plugin or an `auth-provider`):
behaviour stays the client's; the agent image has no client and says so.

Credentials are read as `kubectl` reads them: in a pod with a service account and no
kubeconfig, the service account (its token re-read on every call, so a rotated token is
picked up); otherwise the kubeconfig (`--kubeconfig`, else the first file of $KUBECONFIG,
else ~/.kube/config), its current context, paths relative to the file's directory.
`kopf.ConnectionInfo` carries them, as kopf wants them (its `*_data` fields base64).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from .. import __version__
from .feed import NotServed, WatchKind, rv_int
from .lean_kopf import kopf

USER_AGENT = f"policyd/{__version__}"  # tells the agent's requests apart in the API server's audit log
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# The watched kinds' API versions, for our lists and watches and kopf's. ClusterNetworkPolicy:
# v1alpha2, served by every release of the CRD that has this kind (v0.2 and v0.3, where
# v1beta1 is the storage version and the same schema).
API_VERSIONS: dict[WatchKind, str] = {"Namespace": "v1", "Pod": "v1", "NetworkPolicy": "networking.k8s.io/v1", "Node": "v1",
                                      "ClusterNetworkPolicy": "policy.networking.k8s.io/v1alpha2"}
PLURALS: dict[WatchKind, str] = {"Namespace": "namespaces", "Pod": "pods", "NetworkPolicy": "networkpolicies", "Node": "nodes",
                                 "ClusterNetworkPolicy": "clusternetworkpolicies"}


def path_of(kind: WatchKind) -> str:
    """The cluster-wide collection of `kind`."""
    version = API_VERSIONS[kind]
    return f"/{'api' if '/' not in version else 'apis'}/{version}/{PLURALS[kind]}"


class UnsupportedKubeconfig(Exception):
    """A kubeconfig user this module does not read (exec plugins, auth providers)."""


def credentials(kubeconfig: str | None, context: str | None = None) -> kopf.ConnectionInfo:
    """The API server and how to authenticate, as kubectl would find them (`context`: that
    context of the kubeconfig instead of its current one)."""
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT / "token").exists():
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        return kopf.ConnectionInfo(server=f"https://{host}:{port}", ca_path=str(SERVICE_ACCOUNT / "ca.crt"),
                                   token=(SERVICE_ACCOUNT / "token").read_text().strip(), scheme="Bearer")
    path = kubeconfig_path(kubeconfig)
    try:
        return from_kubeconfig(yaml.safe_load(path.read_text()) or {}, path.parent, context)
    except UnsupportedKubeconfig:
        from .sdk import connection_info  # the kubernetes client's reading: exec plugins, auth providers

        return connection_info(str(path), context)


def kubeconfig_path(kubeconfig: str | None) -> Path:
    """The kubeconfig kubectl reads: the one given, else the first of $KUBECONFIG, else
    ~/.kube/config."""
    return Path(kubeconfig or (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0] or "~/.kube/config").expanduser()


def context_namespace(kubeconfig: str | None, context: str | None = None) -> str:
    """The namespace of the kubeconfig's context (`context`, else its current one), as kubectl
    uses it when no -n is given: `default` when the context names none."""
    path = kubeconfig_path(kubeconfig)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ValueError(f"kubeconfig {path}: {e.strerror}") from None
    name = context or doc.get("current-context")
    for item in doc.get("contexts") or []:
        if item.get("name") == name:
            return str((item.get("context") or {}).get("namespace") or "default")
    raise ValueError(f"kubeconfig {path}: no context named {name!r}")


def from_kubeconfig(doc: dict[str, Any], base: Path, context: str | None = None) -> kopf.ConnectionInfo:
    def named(section: str, name: str) -> dict[str, Any]:
        for item in doc.get(section) or []:
            if item.get("name") == name:
                return dict(item.get(section[:-1]) or {})
        raise ValueError(f"kubeconfig: no {section[:-1]} named {name!r}")

    def local(p: str | None) -> str | None:
        return None if p is None else str(base / Path(p).expanduser())

    current = context or doc.get("current-context")
    if not current:
        raise ValueError("kubeconfig: no current-context")
    ctx = named("contexts", current)
    cluster, user = named("clusters", ctx.get("cluster", "")), named("users", ctx.get("user", ""))
    if user.get("exec") or user.get("auth-provider"):
        raise UnsupportedKubeconfig()
    token = user.get("token")
    if token is None and user.get("tokenFile"):
        token = Path(local(user["tokenFile"]) or "").read_text().strip()
    return kopf.ConnectionInfo(
        server=cluster["server"], ca_path=local(cluster.get("certificate-authority")), ca_data=cluster.get("certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")) or None,
        certificate_path=local(user.get("client-certificate")), certificate_data=user.get("client-certificate-data"),
        private_key_path=local(user.get("client-key")), private_key_data=user.get("client-key-data"),
        username=user.get("username"), password=user.get("password"), token=token, scheme="Bearer" if token else None)


def ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | None:
    if not info.server.startswith("https:"):
        return None
    ctx = ssl.create_default_context(cafile=info.ca_path)
    if info.ca_data:
        ctx.load_verify_locations(cadata=base64.b64decode(info.ca_data).decode())
    if info.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if info.certificate_path or info.certificate_data:
        with tempfile.TemporaryDirectory(prefix="policyd-tls-") as tmp:  # 0700: the key never leaves root's reach
            cert, key = info.certificate_path, info.private_key_path
            if info.certificate_data:
                cert = Path(tmp, "cert.pem")
                cert.write_bytes(base64.b64decode(info.certificate_data))
            if info.private_key_data:
                key = Path(tmp, "key.pem")
                key.write_bytes(base64.b64decode(info.private_key_data))
            ctx.load_cert_chain(cert, key)  # type: ignore[arg-type]
    return ctx


def auth_headers(info: kopf.ConnectionInfo) -> tuple[dict[str, str], aiohttp.BasicAuth | None]:
    headers = {"User-Agent": USER_AGENT}
    if info.token:
        headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        return headers, None
    if info.username:
        return headers, aiohttp.BasicAuth(info.username, info.password or "")
    return headers, None


def session(info: kopf.ConnectionInfo, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
    headers, auth = auth_headers(info)
    return aiohttp.ClientSession(timeout=timeout, headers=headers, auth=auth,
                                 connector=aiohttp.TCPConnector(ssl=ssl_context(info) or True))


CONTINUE_RE = re.compile(rb'"continue":"([^"\\]*)"')


async def list_pages(info: kopf.ConnectionInfo, kind: WatchKind, page: int = 500
                     ) -> AsyncIterator[tuple[list[dict[str, Any]], int | None]]:
    """Every object of `kind` as the API serves it (with apiVersion/kind filled in, which
    list items omit), one page at a time, with the list's resourceVersion: a caller that
    folds each page in never holds a whole list of 100k pods. Decoded on a worker thread.

    Uncompressed (the API server gzips large responses by default: at 100k pods, seconds of
    its CPU and ours for a transfer inside the cluster), and pipelined: the next page is
    asked for as soon as this one's continue token is read from its head (list metadata
    comes before the items), so the server serves it while this one is decoded and folded."""
    url = info.server.rstrip("/") + path_of(kind)
    rv: int | None = None
    async with session(info, aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)) as s:

        async def fetch(token: str | None) -> bytes:
            params = {"limit": str(page)} | ({"continue": token} if token else {})
            async with s.get(url, params=params, headers={"Accept-Encoding": "identity"}) as resp:
                body = await resp.read()
                if resp.status == 404 and kind == "ClusterNetworkPolicy":
                    raise NotServed(f"no {API_VERSIONS[kind]} {PLURALS[kind]}")
                if resp.status != 200:
                    raise RuntimeError(f"list {PLURALS[kind]}: {resp.status} {body[:300].decode(errors='replace')}")
                return body

        body = await fetch(None)
        first = True
        while True:
            items_at = body.find(b'"items"', 0, 4096)
            head = CONTINUE_RE.search(body, 0, items_at) if items_at > 0 else None
            ahead_token = head.group(1).decode() if head else None
            ahead = asyncio.ensure_future(fetch(ahead_token)) if ahead_token else None
            try:
                doc = await asyncio.to_thread(json.loads, body)
                del body
                items = doc.get("items") or []
                for item in items:
                    item.setdefault("apiVersion", API_VERSIONS[kind])
                    item.setdefault("kind", kind)
                if first:  # the first page's resourceVersion is the whole list's
                    rv = rv_int(doc)
                    first = False
                token = (doc.get("metadata") or {}).get("continue") or None
                if token != ahead_token and ahead is not None:  # not read right ahead: ask again
                    ahead.cancel()
                    ahead = None
                yield items, rv
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                raise
            if not token:
                return
            body = await (ahead if ahead is not None else fetch(token))
