"""The generic ``json`` format: the finding (``Finding.to_dict()``) plus a run
summary, for any HTTP endpoint (signed in headers, see
:func:`tunescope.alerts.signing.json_signature`)."""

from __future__ import annotations

from typing import Any

from tunescope.alerts.model import Alert, headline
from tunescope.findings import jsonable
from tunescope.version import __version__


def json_payload(alert: Alert) -> dict[str, Any]:
    return {
        "source": "tunescope",
        "version": __version__,
        "event": alert.event,
        "id": alert.id,
        "reason": alert.reason,
        "title": headline(alert),
        "finding": alert.finding.to_dict(),
        "run": jsonable(alert.run),
        "folded": alert.folded,
        "created": alert.created,
    }
