"""Following live runs: which runs changed since the last look.

``Follower(store).poll()`` ingests what is new under the root and returns
the ids of the runs whose rows, events or status changed. ``tunescope watch``
and the TUI both follow runs with it, so they see the same changes at the
same moments.

What it builds on: :meth:`Store.ingest` refreshes the views when this pass
read something, or when another process (a ``watch`` beside the TUI, a
second ``tunescope ingest``) changed the cache's manifest since the last load.
A poll that finds nothing new anywhere costs a stat per file and compares
nothing. Statuses are derived from the clock when the views load (a run
that stops writing turns from running to interrupted), so the views are also
reloaded every ``refresh_every`` seconds even when no file changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunescope.ingest.store.database import Store

REFRESH_EVERY_S = 30.0

Fingerprint = tuple[Any, ...]

# per run: its status and figures, and how many steps, events and metric points
# it has (an eval line or a run_end changes the counts, not the step figures)
_FINGERPRINT_SQL = """
SELECT r.run_id, r.status, r.steps_logged, r.last_step, epoch(r.last_at),
       coalesce(s.n, 0), coalesce(e.n, 0), coalesce(m.n, 0)
FROM runs r
LEFT JOIN (SELECT run_id, count(*) AS n FROM steps GROUP BY run_id) s USING (run_id)
LEFT JOIN (SELECT run_id, count(*) AS n FROM events GROUP BY run_id) e USING (run_id)
LEFT JOIN (SELECT run_id, count(*) AS n FROM metrics GROUP BY run_id) m USING (run_id)
"""


class Follower:
    """The runs of ``store`` as they are written.

    Args:
        store: the runs to follow.
        refresh_every: seconds after which the views are reloaded even when no
            file changed, so that statuses follow the clock.
        clock: monotonic seconds (tests pin it).
    """

    def __init__(
        self,
        store: Store,
        *,
        refresh_every: float = REFRESH_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.refresh_every = refresh_every
        self.clock = clock
        self.polls = 0
        self._seen: dict[str, Fingerprint] = {}
        self._loaded_at = -1.0  # the store's load time that ``_seen`` describes
        self._refreshed = clock()

    def poll(self) -> list[str]:
        """Ingest what is new and return the ids of the runs that changed
        since the last poll (at the first poll: every run), sorted."""
        store = self.store
        store.ingest()
        self.polls += 1
        now = self.clock()
        if store.loaded_at == self._loaded_at:
            if now - self._refreshed < self.refresh_every:
                return []  # nothing was loaded since the last look
            store.refresh()
        self._refreshed = now
        current = self.fingerprints()
        seen = self._seen
        changed = sorted(r for r in current.keys() | seen.keys() if current.get(r) != seen.get(r))
        self._seen, self._loaded_at = current, store.loaded_at
        return changed

    def baseline(self) -> None:
        """Take what the store holds now as seen (without ingesting): the next
        poll reports only what changes from here."""
        self._seen, self._loaded_at = self.fingerprints(), self.store.loaded_at
        self._refreshed = self.clock()

    def fingerprints(self) -> dict[str, Fingerprint]:
        """Per run, what a change shows in."""
        cur = self.store.cursor()
        try:
            rows = cur.execute(_FINGERPRINT_SQL).fetchall()
        finally:
            cur.close()
        return {r[0]: tuple(r[1:]) for r in rows}
