"""``tunescope metrics``: follow runs and serve their Prometheus metrics (no
alerts); and the ``--metrics-*`` options that ``tunescope watch`` shares with it.
The collector, the server and the follow loop are ``tunescope.metrics``."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from tunescope.cli.args import config_arg, detector_config, runs_arg, split_ids
from tunescope.cli.stopping import on_stop_signals
from tunescope.errors import ExitCode
from tunescope.say import say
from tunescope.words import count

if TYPE_CHECKING:
    from tunescope.findings import Finding
    from tunescope.ingest.store.database import Store

# the defaults, repeated from tunescope.metrics so that --help imports no prometheus_client
DEFAULT_PORT = 9464
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_RUNS = 50

Record = Callable[[list[str], list["Finding"]], None]


def add(sub: Any) -> None:
    p = sub.add_parser(
        "metrics",
        help="serve the runs' Prometheus metrics (no alerts)",
        description="Follow the runs under RUNS (ingest what is new every --interval seconds, "
        "run the detectors on the runs that changed) and serve Prometheus/OpenMetrics text at "
        "http://HOST:PORT/metrics: per run the last step, last loss, steps/s, peak memory per "
        "rank, status, seconds since the last log line, and findings by detector and "
        "severity. Only the --max-runs most recently active runs are exported. "
        "docs/prometheus.md lists the metrics and ships a Grafana dashboard. Ctrl-C stops.",
        epilog="example: tunescope metrics runs/ --port 9464",
    )
    runs_arg(p)
    add_serving_args(p, prefix="")
    p.add_argument(
        "--interval", type=float, default=5.0, metavar="SEC", help="seconds between polls (5)"
    )
    p.add_argument("--select", action="append", metavar="IDS", help="only these detectors")
    p.add_argument("--ignore", action="append", metavar="IDS", help="skip these detectors")
    config_arg(p)
    p.set_defaults(handler=cmd_metrics)


def add_serving_args(p: argparse.ArgumentParser, prefix: str) -> None:
    """``--{prefix}port``, ``--{prefix}host`` and ``--{prefix}max-runs`` (``watch``
    uses the prefix ``metrics-``; without ``--metrics-port`` it serves nothing)."""
    dest = prefix.replace("-", "_")
    p.add_argument(
        f"--{prefix}port",
        dest=f"{dest}port",
        type=_port,
        default=None if prefix else DEFAULT_PORT,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port)"
        + ("" if prefix else f" ({DEFAULT_PORT})"),
    )
    p.add_argument(
        f"--{prefix}host",
        dest=f"{dest}host",
        default=DEFAULT_HOST,
        metavar="HOST",
        help=f"the address the metrics server listens on ({DEFAULT_HOST}: this machine only; "
        "0.0.0.0 for every interface)",
    )
    p.add_argument(
        f"--{prefix}max-runs",
        dest=f"{dest}max_runs",
        type=_at_least_one,
        default=DEFAULT_MAX_RUNS,
        metavar="N",
        help=f"export the N most recently active runs, running ones first ({DEFAULT_MAX_RUNS})",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port number (0-65535), not {text!r}")
    return port


def _at_least_one(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"a whole number of runs (1 or more), not {text!r}")
    return n


@contextlib.contextmanager
def metrics_hook(args: argparse.Namespace, store: Store) -> Iterator[Record | None]:
    """For ``watch``: with ``--metrics-port``, serve the store's metrics while
    the block runs and yield the function the watcher hands its findings to;
    without it, yield None."""
    if args.metrics_port is None:
        yield None
        return
    from tunescope.metrics import MetricsServer, RunsCollector

    collector = RunsCollector(store, max_runs=args.metrics_max_runs)
    with MetricsServer(
        collector, args.metrics_host, args.metrics_port, option="--metrics-port"
    ) as server:
        say(f"serving metrics at {server.url} ({count(collector.max_runs, 'run')} at most)")
        yield collector.record


def cmd_metrics(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; exit 0 then."""
    from tunescope.metrics import MetricsServer, RunsCollector, follow
    from tunescope.opening import open_store

    select, ignore = split_ids(args.select), split_ids(args.ignore)
    config = detector_config(args.config, [args.runs], select, ignore)
    store = open_store(args.runs, args.cache_dir)
    try:
        collector = RunsCollector(store, max_runs=args.max_runs)
        with MetricsServer(collector, args.host, args.port, option="--port") as server:
            say(
                f"serving metrics of {args.runs} at {server.url} "
                f"({count(collector.max_runs, 'run')} at most, polled every {args.interval:g}s); "
                "Ctrl-C stops"
            )
            stop = threading.Event()
            with _stop_on_signals(stop):
                follow(
                    store,
                    collector,
                    stop,
                    interval=args.interval,
                    select=select,
                    ignore=ignore,
                    config=config,
                )
    finally:
        store.close()
    say("stopped serving metrics")
    return ExitCode.OK


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C or SIGTERM sets ``stop`` (a clean exit 0: stopping a server is
    how it ends)."""

    def on_signal(signum: int, frame: Any) -> None:
        if not stop.is_set():
            say(f"stopping ({signal.Signals(signum).name})")
        stop.set()

    with on_stop_signals(on_signal):
        yield
