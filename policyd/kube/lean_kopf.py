"""kopf, imported without the `kubernetes` client.

kopf imports the `kubernetes` client whenever it is installed, only to recognise that
client's model objects as bodies (`kopf._cogs.helpers.thirdparty`). The agent never hands
kopf such an object, and the import costs every node's agent 19 MB and 0.2 s. So the
package is hidden while kopf loads (an import of it then fails, which kopf takes as "not
installed"), and visible again at once: the what-if tools and the Event poster import it
as usual. Where it is loaded already, hiding it would gain nothing and kopf loads as is.
Modules of the agent import kopf from here: `from .lean_kopf import kopf`.
"""

from __future__ import annotations

import sys

__all__ = ["kopf"]

if "kopf" not in sys.modules and "kubernetes" not in sys.modules:
    sys.modules["kubernetes"] = None  # type: ignore[assignment]
    try:
        import kopf
    finally:
        del sys.modules["kubernetes"]

import kopf  # noqa: E402 - re-exported (__all__)
