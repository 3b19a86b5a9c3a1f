"""``tunescope watch``: follow runs as they train and send each new finding once.

Every ``interval`` seconds, and as soon as a file under the runs root changes
(file events, :mod:`tunescope.ingest.live.file_events`; polling alone where there
are none: object storage, network filesystems, ``events=False``), the watcher asks its
:class:`~tunescope.ingest.live.follow.Follower` (the TUI's too) which runs changed
(rows, events or status) after ingesting what is new under the runs root,
analyses those runs only (:func:`~tunescope.analysis.analyze_store`: their
findings are stored, so ``tunescope query`` and the TUI see them), and hands
the findings that are new to an :class:`~tunescope.alerts.AlertSender` (which
never blocks it). The command itself (options, signals, the closing summary)
is ``tunescope/cli/watch.py``.

Deduplication, persisted in ``watch-state.json`` in the store's cache dir
(written atomically, so a restarted watcher does not send again):

- an incident is identified by ``Finding.key``: run, rank, detector and the step
  where it started;
- a known incident is sent again as ``updated`` when it grows (its last step
  moves on) and as ``escalated`` when its severity rises;
- a rate limit per run and detector (``rate_limit`` seconds, default 300):
  inside the window, new incidents of the same detector and run are folded into
  the next alert ("3 more incidents since the last alert") and updates wait for
  the window to end. Escalations are never held back.

Runs that had already ended before the watcher's state was created are a
baseline: their findings are recorded, not sent (``include_finished`` sends
them, on this watch or on a later one over the same state). A run that ends,
or appears, while the watcher runs is alerted as usual, and so is one that
ended while a known watcher was stopped.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tunescope.alerts import Alert
from tunescope.analysis import Detect, analyze_store
from tunescope.config import Config
from tunescope.errors import StoreError, TunescopeError, UsageError
from tunescope.files import write_whole
from tunescope.findings import Finding, Severity, death_cause, status_text, step_range
from tunescope.ingest.live.file_events import FileEvents, polling_reason
from tunescope.ingest.live.follow import Follower
from tunescope.say import say
from tunescope.words import count

if TYPE_CHECKING:
    from tunescope.alerts import AlertSender
    from tunescope.ingest.store.database import Store

STATE_NAME = "watch-state.json"
LOCK_NAME = "watch.lock"
STATE_VERSION = 1

Log = Callable[[str], None]

# On file events, a poll starts at most this often: a run that writes a step
# every 50 ms is read in batches (a few polls a second), not line by line.
EVENT_GAP_S = 0.2


# ---- persisted state -----------------------------------------------------------------


class WatchState:
    """What has been announced: incidents, rate-limit gates and runs seen."""

    def __init__(self, path: str | os.PathLike[str], log: Log | None = None) -> None:
        self.path = Path(path)
        self.created = time.time()
        self.incidents: dict[str, dict[str, Any]] = {}
        self.gates: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.existed = False
        self._load(log or say)

    def _load(self, log: Log) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            # Starting over would send every known incident again; refuse instead.
            raise StoreError(
                f"{self.path} is unreadable ({e}); delete it to start the watch afresh "
                "(known incidents will be sent again)"
            ) from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            log(f"{self.path} has an unknown layout; starting a fresh watch state")
            return
        self.existed = True
        self.created = float(data.get("created", self.created))
        self.incidents = dict(data.get("incidents") or {})
        self.gates = dict(data.get("gates") or {})
        self.runs = dict(data.get("runs") or {})

    def save(self) -> None:
        data = {
            "version": STATE_VERSION,
            "created": self.created,
            "saved": time.time(),
            "runs": self.runs,
            "gates": self.gates,
            "incidents": self.incidents,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(self.path, json.dumps(data), durable=True)
        self.existed = True


def incident_key(f: Finding) -> str:
    return json.dumps(list(f.key))


def gate_key(f: Finding) -> str:
    return json.dumps([f.run, f.detector])


# ---- the watcher ---------------------------------------------------------------------


class Watcher:
    """Follows the runs of ``store`` and sends alerts through ``sender``.

    Args:
        store: the runs (:class:`~tunescope.ingest.store.database.Store`).
        sender: where alerts go (None: decide and record only).
        detect: an analysis function in place of the detectors
            (``--analyzer``; :class:`~tunescope.analysis.Detect`); None: the detectors.
        state_path: the dedup state (default ``CACHE_DIR/watch-state.json``).
        interval: seconds between polls (file events wake the watcher sooner).
        events: wake on file events under the runs root where the filesystem
            has them (False: poll every ``interval`` seconds only).
        min_severity: findings below it are ignored.
        rate_limit: seconds between two alerts for the same run and detector.
        include_finished: also send findings of runs that ended before the
            watch state was created.
        outbox_retry_s: how often undelivered alerts are retried.
        report_url: a link template for alerts, where a team serves reports
            (``tunescope report``): ``{run}`` (the run id, URL-quoted),
            ``{detector}`` and ``{step}`` are filled in; the link goes into
            the alert's run summary as ``report_url``.
        on_findings: called after each analysis with the runs analysed and
            their findings, every severity (``watch --metrics-port`` counts them).
    """

    def __init__(
        self,
        store: Store,
        sender: AlertSender | None,
        *,
        detect: Detect | None = None,
        state_path: str | os.PathLike[str] | None = None,
        interval: float = 2.0,
        min_severity: Severity | str = Severity.WARNING,
        rate_limit: float = 300.0,
        include_finished: bool = False,
        select: list[str] | None = None,
        ignore: list[str] | None = None,
        config: Config | None = None,
        outbox_retry_s: float = 60.0,
        log: Log | None = None,
        clock: Callable[[], float] = time.time,
        report_url: str | None = None,
        events: bool = True,
        on_findings: Callable[[list[str], list[Finding]], None] | None = None,
    ) -> None:
        if interval <= 0:
            raise UsageError(f"--interval must be > 0 seconds, got {interval}")
        if rate_limit < 0:
            raise UsageError(f"--rate-limit must be >= 0 seconds, got {rate_limit}")
        self.store = store
        self.sender = sender
        self.detect = detect
        self.interval = interval
        if isinstance(min_severity, str):
            try:
                min_severity = Severity.parse(min_severity)
            except ValueError as e:
                raise UsageError(str(e)) from None
        self.min_severity = min_severity
        self.rate_limit = rate_limit
        self.include_finished = include_finished
        self.select = select
        self.ignore = ignore
        self.config = config
        self.outbox_retry_s = outbox_retry_s
        self.report_url = report_url
        self.on_findings = on_findings
        if report_url:
            try:
                report_link(report_url, Finding("run", "TS000", "x", Severity.INFO, 1, 1, "", ""))
            except (KeyError, IndexError, ValueError) as e:
                raise UsageError(
                    f"--report-url {report_url!r}: unknown placeholder {e}; "
                    "use {run}, {detector} and {step}"
                ) from None
        self.log = log if log is not None else say
        self.clock = clock
        path = Path(state_path) if state_path else Path(store.cache.dir) / STATE_NAME
        self.state = WatchState(path, self.log)
        self.follower = Follower(store)
        # why file events are not used (None: they are), decided once
        self.polling: str | None = (
            polling_reason(store.root, is_url=hasattr(store.cache, "url"))
            if events
            else "polling was asked for"
        )
        self.queued = 0
        self._pending: set[str] = set()  # changed runs not analysed yet (a poll failed)

    # ---- one pass --------------------------------------------------------------

    @property
    def polls(self) -> int:
        return self.follower.polls

    def poll(self) -> list[Alert]:
        """Ingest, detect on the runs that changed, and queue what is new."""
        first = self.polls == 0
        self._pending.update(self.follower.poll())
        if not self._pending:
            return []
        summaries = self._summaries(sorted(self._pending))
        changed = sorted(r for r in self._pending if r in summaries)  # not a vanished run
        findings = analyze_store(
            self.store,
            self.config,
            select=self.select,
            ignore=self.ignore,
            run_ids=changed,
            detect=self.detect,
        ).found
        wanted = set(changed)
        findings = [f for f in findings if f.run in wanted]
        if self.on_findings is not None:
            self.on_findings(changed, findings)
        baseline, released = self._baseline_runs(changed, summaries, first)
        for run_id, s in summaries.items():  # "failed (CUDA out of memory)"
            cause = death_cause(findings, run_id)
            if cause and s.get("status"):
                s["status"] = status_text(s["status"], cause)
        alerts = self._decide(findings, summaries, baseline, first, released)
        for alert in alerts:
            self.log(f"alert: {alert.describe()}: {alert.finding.message}")
            if self.sender is not None:
                # Journaled before the state says "sent": a crash re-sends, never loses.
                self.sender.send(alert, durable=True)
        self.queued += len(alerts)
        self.state.save()
        # Only now: a poll that failed above looks at the same runs again next time.
        self._pending.clear()
        return alerts

    def run(self, stop: threading.Event, *, once: bool = False) -> None:
        """Poll every ``interval`` seconds, and on file events, until ``stop``
        is set (or once).

        An error in the first poll is raised; later ones are reported and the
        watch goes on (a bad line or a detector bug must not end a long watch).
        """
        if self.sender is not None:
            self.sender.retry_outbox()
        next_outbox = time.monotonic() + self.outbox_retry_s
        failures = 0
        events = None if once else self._start_events()
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    self.poll()
                    failures = 0
                except Exception as e:
                    if self.polls <= 1 and failures == 0 and isinstance(e, TunescopeError):
                        raise
                    failures += 1
                    self.log(f"poll failed ({type(e).__name__}: {e}); trying again")
                if once:
                    return
                if self.sender is not None and time.monotonic() >= next_outbox:
                    self.sender.retry_outbox()
                    next_outbox = time.monotonic() + self.outbox_retry_s
                if failures:  # back off when polls keep failing, up to 30 intervals
                    wait = self.interval * min(30, 2 ** max(0, failures - 1))
                    stop.wait(max(0.0, wait - (time.monotonic() - started)))
                    continue
                left = max(0.0, self.interval - (time.monotonic() - started))
                if events is None:
                    stop.wait(left)
                    continue
                if events.wait(left, stop):
                    stop.wait(max(0.0, EVENT_GAP_S - (time.monotonic() - started)))
                elif not events.alive and not stop.is_set():
                    self.log(
                        f"file events stopped ({events.error or 'no reason given'}); "
                        f"polling every {self.interval:g}s"
                    )
                    events.close()
                    events = None
        finally:
            if events is not None:
                events.close()

    def _start_events(self) -> FileEvents | None:
        """The file events under the runs root (None: polling only, and why is
        logged when it is not the user's choice)."""
        if self.polling is not None:
            return None
        try:
            return FileEvents(self.store.root, ignore=[self.store.cache.dir])
        except (OSError, RuntimeError) as e:
            self.polling = f"file events unavailable ({e})"
            self.log(f"{self.polling}; polling every {self.interval:g}s")
            return None

    # ---- store queries ---------------------------------------------------------

    def _summaries(self, run_ids: list[str]) -> dict[str, dict[str, Any]]:
        cur = self.store.cursor()
        cur.execute(
            """
            SELECT run_id, name, status, last_step, total_steps, last_loss, last_lr, model,
                   finetuning_type, world_size,
                   epoch(coalesce(ended_at, last_at, started_at)) AS active_at
            FROM runs WHERE list_contains(?, run_id)
            """,
            [run_ids],
        )
        cols = [d[0] for d in cur.description]
        out = {row[0]: dict(zip(cols, row, strict=True)) for row in cur.fetchall()}
        # what the training guard did in the run (skip, stop, rewind, checkpoint):
        # in each alert's run summary, so the payload says it was already acted on
        cur.execute(
            """
            SELECT run_id, string_agg(DISTINCT (payload->>'action') || ' at step ' || step
                                      || ' (' || (payload->>'finding') || ')', '; ')
            FROM events WHERE kind = 'intervention' AND list_contains(?, run_id)
            GROUP BY run_id
            """,
            [run_ids],
        )
        for run_id, acted in cur.fetchall():
            if run_id in out:
                out[run_id]["guard"] = acted
        return out

    # ---- decisions -------------------------------------------------------------

    def _baseline_runs(
        self, changed: list[str], summaries: dict[str, dict[str, Any]], first: bool
    ) -> tuple[set[str], set[str]]:
        """Runs seen for the first time that had ended before the state existed
        (the baseline), and, with ``include_finished``, runs an earlier watch
        kept as a baseline whose unsent findings are now to be sent (released)."""
        out: set[str] = set()
        released: set[str] = set()
        now = self.clock()
        for run_id in changed:
            seen = self.state.runs.get(run_id)
            if seen is not None:
                if self.include_finished and seen.get("baseline"):
                    seen["baseline"] = False
                    released.add(run_id)
                continue
            s = summaries.get(run_id, {})
            active_at = s.get("active_at")
            ended = s.get("status") not in (None, "running")
            # No timestamps at all: only what exists at the first poll is old.
            old = first if active_at is None else float(active_at) < self.state.created - 1.0
            is_baseline = ended and old and not self.include_finished
            self.state.runs[run_id] = {"first_seen": now, "baseline": is_baseline}
            if is_baseline:
                out.add(run_id)
        return out, released

    def _decide(
        self,
        findings: list[Finding],
        summaries: dict[str, dict[str, Any]],
        baseline: set[str],
        first: bool = False,
        released: set[str] | None = None,
    ) -> list[Alert]:
        released = released or set()
        now = self.clock()
        known = 0
        findings = [f for f in findings if f.severity.level >= self.min_severity.level]
        findings.sort(key=lambda f: (-f.severity.level, f.run, f.detector, f.step_start or 0))
        alerts: list[Alert] = []
        baselined: dict[str, int] = {}
        for f in findings:
            key = incident_key(f)
            rec = self.state.incidents.get(key)
            if f.run in baseline:
                if rec is None:
                    self.state.incidents[key] = _record(f, now, sent=False)
                    baselined[f.run] = baselined.get(f.run, 0) + 1
                continue
            if rec is None or (f.run in released and not rec.get("sent")):
                reason = "new"
            elif f.severity.level > Severity.parse(rec["severity"]).level:
                reason = "escalated"
            elif _grew(f, rec):
                reason = "updated"
            else:
                known += rec.get("sent", False)
                continue
            gate = self.state.gates.setdefault(gate_key(f), {"last_sent": None, "folded": 0})
            last = gate["last_sent"]
            limited = last is not None and now - float(last) < self.rate_limit
            if limited and reason != "escalated":
                wait = self.rate_limit - (now - float(last))
                steps = step_range(f, "no step")
                if reason == "new":
                    self.state.incidents[key] = _record(f, now, sent=False)
                    gate["folded"] += 1
                    self.log(
                        f"held: new {f.severity.value} {f.detector} incident in {f.run} "
                        f"({steps}) folded into the next alert for this run and detector "
                        f"(rate limit, {wait:.0f}s left)"
                    )
                elif rec is not None and not rec.get("held"):
                    rec["held"] = True
                    self.log(
                        f"held: {f.detector} incident in {f.run} ({steps}) is still "
                        f"firing; update in {wait:.0f}s (rate limit)"
                    )
                continue
            run = _summary(summaries.get(f.run))
            if self.report_url:
                run["report_url"] = report_link(self.report_url, f)
            alert = Alert(f, reason=reason, run=run, created=now)
            alert.folded = gate["folded"]
            gate["last_sent"] = now
            gate["folded"] = 0
            self.state.incidents[key] = _record(f, now, sent=True)
            alerts.append(alert)
        if first and known:
            self.log(
                f"skipped {count(known, 'finding')} already sent by an earlier watch "
                f"(remembered in {self.state.path})"
            )
        if baselined:
            n = sum(baselined.values())
            self.log(
                f"baseline: {count(n, 'finding')} in {count(len(baselined), 'run')} that ended before "
                "this watch began were not sent (--include-finished sends them)"
            )
        return alerts


def _record(f: Finding, now: float, sent: bool) -> dict[str, Any]:
    return {"severity": f.severity.value, "step_end": f.step_end, "sent": sent, "at": now}


def _grew(f: Finding, rec: dict[str, Any]) -> bool:
    if f.step_end is None:
        return False
    old = rec.get("step_end")
    return old is None or f.step_end > old


def report_link(template: str, f: Finding) -> str:
    """``template`` with ``{run}`` (URL-quoted), ``{detector}`` and ``{step}``
    (the first step of the finding, empty for a whole-run one) filled in."""
    from urllib.parse import quote

    step = "" if f.step_start is None else str(f.step_start)
    return template.format(run=quote(f.run, safe=""), detector=f.detector, step=step)


def _summary(row: dict[str, Any] | None) -> dict[str, Any]:
    if not row:
        return {}
    return {k: v for k, v in row.items() if k not in ("active_at", "run_id") and v is not None}


# ---- helpers for the CLI -------------------------------------------------------------


def load_analyzer(spec: str) -> Detect:
    """The analysis function ``MODULE:FUNCTION`` (``--analyzer``), in place of
    the detectors."""
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise UsageError(f"--analyzer must be MODULE:FUNCTION, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"--analyzer {spec}: cannot import {module_name} ({e})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UsageError(f"--analyzer {spec}: {module_name} has no function {func_name}")
    return cast("Detect", func)


@contextlib.contextmanager
def watch_lock(cache_dir: str | os.PathLike[str], root: str | os.PathLike[str]) -> Iterator[None]:
    """One watcher per cache dir: a second one would send every alert twice."""
    from filelock import FileLock, Timeout

    from tunescope.ingest.store.trust import own_file

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    own_file(Path(cache_dir) / LOCK_NAME)  # a link there would truncate what it points to
    lock = FileLock(str(Path(cache_dir) / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UsageError(
            f"another `tunescope watch` is already following {root} "
            f"(it holds {Path(cache_dir) / LOCK_NAME}); stop it first"
        ) from None
    try:
        yield
    finally:
        lock.release()
