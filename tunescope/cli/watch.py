"""``tunescope watch``: the command around the watching engine (``tunescope.watch``):
its options, the webhook sender, Ctrl-C handling and the closing summary."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunescope.cli.args import config_arg, detector_config, runs_arg, select_args, split_ids
from tunescope.cli.metrics import add_serving_args, metrics_hook
from tunescope.cli.stopping import on_stop_signals
from tunescope.errors import ExitCode, UsageError
from tunescope.findings import Severity
from tunescope.opening import open_store
from tunescope.say import say
from tunescope.words import count

if TYPE_CHECKING:
    from tunescope.alerts import AlertSender, RetryPolicy
    from tunescope.watch import Watcher


def add(sub: Any) -> None:
    p = sub.add_parser(
        "watch",
        help="follow runs live and send new findings to webhooks",
        description="Follow the runs under RUNS as they train: ingest what is new as soon as "
        "a file changes (and every --interval seconds; polling alone with --poll, on object "
        "storage and on network filesystems), run the detectors on the runs that changed, and send each new "
        "finding once to every --webhook (Slack, Feishu/Lark, DingTalk or signed JSON), or, "
        "without --webhook, print each alert here. "
        "What was sent is remembered in the cache dir, so a restart does not send it again; "
        "undeliverable alerts are kept in an outbox and retried. Ctrl-C stops.",
        epilog="example: tunescope watch runs/ --webhook https://hooks.slack.com/services/T/B/X",
    )
    runs_arg(p)
    p.add_argument(
        "--webhook",
        metavar="URL",
        action="append",
        help="where alerts go (repeat for several endpoints); never printed. "
        "Without it, alerts are printed here only",
    )
    p.add_argument(
        "--format",
        choices=("auto", "slack", "feishu", "dingtalk", "json"),
        default="auto",
        help="payload format (default: auto, from the URL's host; json when unknown)",
    )
    p.add_argument(
        "--secret",
        metavar="S",
        help="signing secret (default: $TUNESCOPE_WEBHOOK_SECRET); prefer the variable, "
        "since arguments are visible to other users",
    )
    p.add_argument(
        "--interval", type=float, default=2.0, metavar="SEC", help="seconds between polls (2)"
    )
    p.add_argument(
        "--poll",
        action="store_true",
        help="do not wake on file events, poll every --interval seconds only "
        "(also: TUNESCOPE_POLL=1)",
    )
    p.add_argument(
        "--min-severity",
        default="warning",
        choices=("info", "warning", "error"),
        help="send findings at this severity and above (warning)",
    )
    p.add_argument(
        "--rate-limit",
        type=float,
        default=300.0,
        metavar="SEC",
        help="at most one alert per run and detector in this many seconds; "
        "escalations are never held (300)",
    )
    select_args(p)
    p.add_argument(
        "--include-finished",
        action="store_true",
        help="also alert on runs that had ended before the watch began",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="SEC", help="HTTP timeout per attempt (10)"
    )
    p.add_argument(
        "--retries", type=int, default=3, help="retries on 5xx/429/connection errors (3)"
    )
    p.add_argument(
        "--backoff",
        type=float,
        default=1.0,
        metavar="SEC",
        help="first retry delay, doubled each retry, with jitter (1)",
    )
    p.add_argument(
        "--drain",
        type=float,
        default=5.0,
        metavar="SEC",
        help="on stop, time allowed for queued alerts before they go to the outbox (5)",
    )
    config_arg(p)
    p.add_argument(
        "--once",
        action="store_true",
        help="poll once, deliver, and exit (exit 1 when an alert could not be delivered)",
    )
    p.add_argument(
        "--report-url",
        metavar="TEMPLATE",
        help="link each alert to a served report (tunescope report), e.g. "
        "https://reports.example.com/{run}.html#{detector}; {run}, {detector} and {step} "
        "are filled in",
    )
    p.add_argument(
        "--analyzer",
        metavar="MODULE:FUNCTION",
        help="use this analysis function instead of the built-in detectors",
    )
    add_serving_args(p, prefix="metrics-")
    p.set_defaults(handler=cmd_watch)


def cmd_watch(args: argparse.Namespace) -> int:
    """Follow RUNS until stopped (or ``--once``); exit 1 with ``--once`` when an
    alert could not be delivered."""
    from tunescope.watch import Watcher, load_analyzer, watch_lock

    if args.interval <= 0:
        raise UsageError(f"--interval must be > 0 seconds, got {args.interval}")
    try:
        min_severity = Severity.parse(args.min_severity)
        policy = _retry_policy(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    detect = load_analyzer(args.analyzer) if args.analyzer else None
    select, ignore = split_ids(args.select), split_ids(args.ignore)
    config = detector_config(
        args.config, [args.runs], select, ignore, check_ids=args.analyzer is None
    )
    store = open_store(args.runs, args.cache_dir)
    cache_dir = Path(store.cache.dir)
    with watch_lock(cache_dir, args.runs), metrics_hook(args, store) as on_findings:
        sender = _sender(args, policy, cache_dir)
        watcher = Watcher(
            store,
            sender,
            detect=detect,
            interval=args.interval,
            min_severity=min_severity,
            rate_limit=args.rate_limit,
            include_finished=args.include_finished,
            select=select,
            ignore=ignore,
            config=config,
            report_url=args.report_url,
            events=not args.poll,
            on_findings=on_findings,
        )
        say(_starting(args, sender, min_severity, watcher.polling))
        stop = threading.Event()
        with _stop_on_signals(stop, sender, args.drain):
            left = _watch(watcher, sender, stop, args)
        return _summary(watcher, sender, left, cache_dir, args.once)


def _retry_policy(args: argparse.Namespace) -> RetryPolicy:
    from tunescope.alerts import RetryPolicy

    return RetryPolicy(timeout=args.timeout, retries=args.retries, backoff=args.backoff)


def _sender(args: argparse.Namespace, policy: RetryPolicy, cache_dir: Path) -> AlertSender | None:
    """The webhooks' sender (None without ``--webhook``), its outbox in the cache dir."""
    if not args.webhook:
        return None
    from tunescope.alerts import OUTBOX_NAME, SECRET_ENV, AlertSender

    secret = args.secret if args.secret is not None else os.environ.get(SECRET_ENV, "")
    try:
        return AlertSender(
            args.webhook,
            format=args.format,
            secret=secret,
            policy=policy,
            outbox=cache_dir / OUTBOX_NAME,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def _starting(
    args: argparse.Namespace,
    sender: AlertSender | None,
    min_severity: Severity,
    polling: str | None,
) -> str:
    if sender is not None:
        names = ", ".join(ep.label for ep in sender.endpoints)
        signed = "signed" if sender.secret else "unsigned"
        where = f"{signed} alerts at {min_severity.value} and above go to {names}"
    else:
        where = f"alerts at {min_severity.value} and above are printed here (no --webhook)"
    if args.once:
        how = "once"
    elif polling is None:
        how = f"on file changes and every {args.interval:g}s; Ctrl-C stops"
    elif args.poll:
        how = f"every {args.interval:g}s; Ctrl-C stops"
    else:
        how = f"every {args.interval:g}s ({polling}); Ctrl-C stops"
    return f"watching {args.runs} {how}; {where}"


@contextlib.contextmanager
def _stop_on_signals(
    stop: threading.Event, sender: AlertSender | None, drain: float
) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) sets ``stop``; a second one hurries the sender (what
    is undelivered goes to the outbox at once)."""
    presses = [0]

    def on_signal(signum: int, frame: Any) -> None:
        # No KeyboardInterrupt here: it would cut the drain short and lose the
        # queued alerts that the state already records as sent.
        presses[0] += 1
        name = signal.Signals(signum).name
        if presses[0] == 1:
            stop.set()
            say(
                f"stopping ({name}); delivering queued alerts for up to {drain:g}s "
                "(again: stop now and keep them in the outbox)"
            )
        elif presses[0] == 2 and sender is not None:
            sender.hurry()
            say(f"stopping now ({name}); undelivered alerts go to the outbox")

    with on_stop_signals(on_signal):
        yield


def _watch(
    watcher: Watcher, sender: AlertSender | None, stop: threading.Event, args: argparse.Namespace
) -> int:
    """Watch until stopped, then drain the sender and save the state; returns
    how many alerts are left in the outbox."""
    try:
        watcher.run(stop, once=args.once)
    finally:
        if sender is not None:
            sender.close(timeout=args.drain)
        watcher.state.save()
    return sender.undelivered() if sender is not None else 0


def _summary(
    watcher: Watcher, sender: AlertSender | None, left: int, cache_dir: Path, once: bool
) -> int:
    """The closing line, and the exit code."""
    from tunescope.alerts import OUTBOX_NAME

    raised = count(watcher.queued, "alert")
    if sender is None:
        say(f"stopped: {raised} raised")
        return ExitCode.OK
    st = sender.stats
    where = f"; {left} kept in {cache_dir / OUTBOX_NAME} for the next start" if left else ""
    say(f"stopped: {raised} raised, {st['sent']} delivered, {st['rejected']} rejected{where}")
    failed = bool(left or st["rejected"])
    return ExitCode.FINDINGS if once and failed else ExitCode.OK
