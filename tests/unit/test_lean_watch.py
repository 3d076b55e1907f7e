"""The Pod watch of our own (kube/watch.py) against a scripted HTTP server on loopback: the
faults a real API server cannot be made to produce on demand (an expired token, an ERROR
event other than 410, a broken stream). Each request is answered by the next script
entry; the watch's resourceVersion, events and credential reads are checked."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kopf
from aiohttp import web

from policyd.kube.watch import LeanWatch


def pod(name: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": str(rv)}}


async def run_script(script: list[tuple[int, list[dict[str, Any]]]], relist_rv: int = 100,
                     fail_reads: tuple[int, ...] = ()) -> tuple[list, list, int, LeanWatch]:
    """Serve `script` (status, watch events) one entry per request; stop after the last."""
    requests: list[dict[str, str]] = []
    events: list[tuple[str, str]] = []
    reads = 0
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        requests.append(dict(request.query) | {"auth": request.headers.get("Authorization", "")})
        if len(requests) > len(script):
            done.set()
            return web.Response(status=503)
        status, lines = script[len(requests) - 1]
        if status != 200:
            return web.Response(status=status, text="no")
        resp = web.StreamResponse()
        await resp.prepare(request)
        for ev in lines:
            await resp.write(json.dumps(ev).encode() + b"\n")
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/pods", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def credentials() -> kopf.ConnectionInfo:
        nonlocal reads
        reads += 1
        if reads in fail_reads:
            raise OSError("the token file is being rotated")
        return kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}", token=f"t{reads}")

    async def relist() -> int:
        events.append(("RELIST", ""))
        return relist_rv

    w = LeanWatch("Pod", credentials, lambda typ, obj: events.append((typ, obj["metadata"]["name"])), relist,
                  backoff=(0.01, 0.02))
    task = asyncio.create_task(w.run(5))
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
        await runner.cleanup()
    return requests, events, reads, w


def test_resumes_from_the_last_version_after_a_stream_ends_or_breaks_and_relists_after_410():
    script = [
        (200, [{"type": "ADDED", "object": pod("a", 6)}, {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}]),
        (500, []),  # refused: retried from the same version
        (200, [{"type": "MODIFIED", "object": pod("a", 10)},
               {"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "internal"}}]),
        (200, [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}]),
        (200, [{"type": "DELETED", "object": pod("a", 101)}]),
    ]
    requests, events, reads, w = asyncio.run(run_script(script))
    assert [r.get("resourceVersion") for r in requests[:5]] == ["5", "9", "9", "10", "100"]
    assert all(r["watch"] == "true" and r["allowWatchBookmarks"] == "true" for r in requests)
    assert events == [("ADDED", "a"), ("MODIFIED", "a"), ("RELIST", ""), ("DELETED", "a")]
    assert w.rv == 101 and w.stats.relists == 1 and w.stats.errors in (2, 3) and reads == 1  # 3: the closing 503


def test_an_expired_token_is_read_again():
    script = [(401, []), (200, [{"type": "ADDED", "object": pod("b", 7)}])]
    requests, events, reads, _ = asyncio.run(run_script(script))
    assert [r["auth"] for r in requests[:2]] == ["Bearer t1", "Bearer t2"]
    assert events == [("ADDED", "b")] and reads == 2


def test_http_410_at_connect_relists():
    requests, events, _, w = asyncio.run(run_script([(410, []), (200, [])], relist_rv=42))
    assert events == [("RELIST", "")] and requests[1]["resourceVersion"] == "42" and w.stats.relists == 1


def test_credentials_that_cannot_be_read_are_retried_not_fatal():
    """Reading the credentials failing (first at start, then after a 401) is an error to
    retry: the watch must never end while the agent runs."""
    script = [(401, []), (200, [{"type": "ADDED", "object": pod("c", 8)}])]
    requests, events, reads, w = asyncio.run(run_script(script, fail_reads=(1, 3)))
    assert events == [("ADDED", "c")] and reads == 4 and w.stats.errors >= 3
    assert [r["auth"] for r in requests[:2]] == ["Bearer t2", "Bearer t4"]
