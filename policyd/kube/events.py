"""Warning Events on policies that cannot be enforced as written.

Posted by the node that runs the affected pods, named after it (`reportingInstance`, the
`source.host` that `kubectl describe` shows) and saying what policyd did (`action`). A
finding is posted once per version of the policy: the agent remembers what it posted, and a
restarted agent first looks for an Event it posted before (same policy uid and version,
reason, node and message), so restarts do not repeat Events. These are the agent's only
writes to the API.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from .api import credentials, session
from .feed import Finding

log = logging.getLogger("policyd.agent")

COMPONENT = "policyd"
# What the agent does about each finding (the Event's `action`).
ACTIONS = {
    "PolicyInvalid": "IsolateAllowingNothing",  # its pods are isolated, no rule of it allows
    "NamedPortUnresolved": "AllowNothingOnPort",  # that rule allows nothing to those pods
    "PolicyReadLeniently": "EnforceAsStored",  # an old object read as the API server read it
}


def event_body(finding: Finding, policy: dict[str, Any], node: str, now: datetime.datetime) -> dict[str, Any]:
    meta = policy.get("metadata") or {}
    stamp = now.isoformat()
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'policy')}.", "namespace": meta.get("namespace")},
        "involvedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "name": meta.get("name"),
                           "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                           "resourceVersion": meta.get("resourceVersion")},
        "type": "Warning", "reason": finding.reason, "message": finding.message[:1024],
        "action": ACTIONS.get(finding.reason, "Enforce"),
        "reportingComponent": COMPONENT, "reportingInstance": node,
        "source": {"component": COMPONENT, "host": node},
        "firstTimestamp": stamp, "lastTimestamp": stamp, "eventTime": now.isoformat(timespec="microseconds"),
        "count": 1,
    }


def already_posted(events: list[dict[str, Any]], body: dict[str, Any]) -> bool:
    """Whether one of `events` is this finding, from this node, on this policy version."""
    want = body["involvedObject"]
    for e in events:
        obj = e.get("involvedObject") or {}
        if (obj.get("uid") == want["uid"] and obj.get("resourceVersion") == want["resourceVersion"]
                and e.get("reason") == body["reason"] and e.get("message") == body["message"]
                and e.get("reportingInstance") == body["reportingInstance"]
                and e.get("reportingComponent") == COMPONENT):
            return True
    return False


class EventPoster:
    """Posts through the agent's own HTTP access (kube/api.py: no `kubernetes` client, which
    the agent image does not carry); a failure is logged, never raised (Events inform,
    enforcement does not depend on them). Credentials are read again for every Event, so a
    rotated service account token is picked up."""

    def __init__(self, node: str, kubeconfig: str | None) -> None:
        self.node = node
        self.kubeconfig = kubeconfig

    async def post(self, finding: Finding, policy: dict[str, Any]) -> bool:
        try:
            return await self._post(finding, policy)
        except Exception as e:  # noqa: BLE001 - the API may refuse or be away
            log.warning("could not post Event %s on %s: %s", finding.reason, finding.policy, e)
            return False

    async def _post(self, finding: Finding, policy: dict[str, Any]) -> bool:
        info = await asyncio.to_thread(credentials, self.kubeconfig)
        body = event_body(finding, policy, self.node, datetime.datetime.now(datetime.UTC))
        url = f"{info.server.rstrip('/')}/api/v1/namespaces/{quote(body['metadata']['namespace'], safe='')}/events"
        selector = f"involvedObject.uid={body['involvedObject']['uid']},reason={finding.reason}"
        async with session(info, aiohttp.ClientTimeout(total=30)) as s:
            async with s.get(url, params={"fieldSelector": selector}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"list events: {resp.status} {(await resp.text())[:300]}")
                listed = json.loads(await resp.read())
            if already_posted(listed.get("items") or [], body):
                log.info("Event %s on %s was posted before (same policy version): not again", finding.reason, finding.policy)
                return False
            async with s.post(url, json=body) as resp:
                if resp.status not in (200, 201):
                    raise RuntimeError(f"create event: {resp.status} {(await resp.text())[:300]}")
        log.warning("%s: %s: %s", finding.policy, finding.reason, finding.message)
        return True
