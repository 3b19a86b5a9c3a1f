"""``tunescope analyze`` (a CI gate over the findings) and ``tunescope report``
(the same analysis as one HTML file)."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunescope.cli.args import cache_arg, config_arg, detector_config, select_args, split_ids
from tunescope.errors import ExitCode, InputError
from tunescope.files import write_output
from tunescope.opening import unread_files, with_store
from tunescope.progress import Progress
from tunescope.say import say
from tunescope.words import count

if TYPE_CHECKING:
    from tunescope.config import Config
    from tunescope.findings import Finding
    from tunescope.ingest.store.database import Store


def add(sub: Any) -> None:
    p = sub.add_parser(
        "analyze",
        help="run the detectors over runs and report findings (a CI gate)",
        description="Ingest RUNS, run the detectors, store the findings (the findings view) "
        "and report them. Exit 0: nothing at or above --fail-on; 1: findings at or above "
        "it; 2: usage, configuration or input error.",
        epilog="example: tunescope analyze runs/ --fail-on warning --format github",
    )
    p.add_argument(
        "runs",
        metavar="RUNS",
        nargs="+",
        help="directories or URLs (s3://bucket/prefix, gs://..., az://...) holding runs",
    )
    p.add_argument(
        "--fail-on",
        choices=("error", "warning", "never"),
        help="lowest severity that makes the exit code 1 (default: error, or the config's)",
    )
    select_args(p)
    p.add_argument("--exit-zero", action="store_true", help="exit 0 even with findings")
    p.add_argument(
        "--format",
        choices=("text", "json", "github", "junit", "markdown", "html"),
        default="text",
        help="report format (default: text); markdown for $GITHUB_STEP_SUMMARY or a "
        "merge-request comment, html for the interactive report",
    )
    p.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE")
    p.add_argument(
        "--report-link",
        metavar="URL",
        help="markdown: where the HTML report is (e.g. the CI artifact's URL)",
    )
    config_arg(p)
    cache_arg(p)
    p.set_defaults(handler=cmd_analyze)


def add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="write one self-contained HTML report of the runs (curves, findings, ranks)",
        description="Ingest RUNS, run the detectors and write one HTML file that works "
        "offline: a runs table, each run with findings with its curves (zoom, pan, hover), "
        "findings shaded, fixes and evidence, the per-rank compute-time heatmap, the runs' "
        "loss curves overlaid with their configs side by side, and what each log cannot "
        "show. Exit 0 when written, whatever the findings (use analyze to gate).",
        epilog="example: tunescope report runs/ -o report.html",
    )
    p.add_argument(
        "runs",
        metavar="RUNS",
        nargs="+",
        help="directories or URLs (s3://bucket/prefix, gs://..., az://...) holding runs",
    )
    p.add_argument(
        "--output", "-o", metavar="FILE", default="report.html", help="(default: report.html)"
    )
    select_args(p)
    config_arg(p)
    cache_arg(p)
    p.set_defaults(handler=cmd_report)


def cmd_analyze(args: argparse.Namespace) -> int:
    from tunescope.detectors.engine import fails
    from tunescope.ingest.store.remote import is_url
    from tunescope.report.formats import render

    roots: list[Any] = [r if is_url(r) else Path(r) for r in args.runs]  # URLs stay strings
    for root in roots:
        if isinstance(root, Path) and not root.is_dir():
            what = "not a directory" if root.exists() else "no such directory"
            raise InputError(f"{root}: {what}; pass the folder that holds your runs")
    select, ignore = split_ids(args.select), split_ids(args.ignore)
    cfg = detector_config(args.config, roots, select, ignore)
    fail_on = args.fail_on or cfg.fail_on or "error"
    findings: list[Finding] = []
    runs: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}  # markdown: loss curves of runs with errors
    collected: dict[str, Any] = {}  # html: what the page draws
    unread_notes: dict[str, str] = {}  # roots without runs: the files no reader took
    for i, root in enumerate(roots):
        cache = args.cache_dir
        if cache and len(roots) > 1:
            name = root.rstrip("/").rsplit("/", 1)[-1] if is_url(root) else root.resolve().name
            cache = str(Path(cache) / f"{i}-{name}")

        # a cache rebuilt under the analysis (files gone or cut short) is read again once
        done = with_store(
            root,
            cache,
            functools.partial(
                _analyze_root, args=args, cfg=cfg, root=root, select=select, ignore=ignore
            ),
        )
        if isinstance(done, str) or done is None:
            unread = done
            if unread:
                unread_notes[str(root)] = unread
            if len(roots) > 1:
                say(f"{root}: no runs found" + (f"; {unread}" if unread else ""))
            continue
        found, summaries, drawn = done
        (curves if args.format == "markdown" else collected).update(drawn)
        runs.extend(summaries)
        findings.extend(found)
    if not runs:
        where = ", ".join(map(str, roots))
        if len(roots) == 1 and unread_notes:
            detail = next(iter(unread_notes.values()))
        elif unread_notes:
            detail = "; ".join(f"{r}: {n}" for r, n in unread_notes.items())
        else:
            detail = "no files in it (`tunescope ingest` lists what was read and skipped)"
        raise InputError(f"no runs found under {where}: {detail}")
    text = render(
        args.format,
        findings,
        runs,
        curves=curves,
        collected=collected,
        link=getattr(args, "report_link", None),
    )
    if args.output:
        try:
            write_output(Path(args.output), text)
        except OSError as e:
            raise InputError(f"{args.output}: cannot write: {e.strerror or e}") from None
        size = Path(args.output).stat().st_size
        hint = "; open it in a browser, no server needed" if args.format == "html" else ""
        say(
            f"wrote {args.output}: {count(len(runs), 'run')}, "
            f"{count(len(findings), 'finding')} ({args.format}, {size / 1e6:.2f} MB){hint}"
        )
    else:
        sys.stdout.write(text)
    if args.exit_zero:
        return ExitCode.OK
    return ExitCode.FINDINGS if fails(findings, fail_on) else ExitCode.OK


def _analyze_root(
    store: Store,
    args: argparse.Namespace,
    cfg: Config,
    root: str | Path,
    select: list[str] | None,
    ignore: list[str] | None,
) -> tuple[list[Finding], list[dict[str, Any]], dict[str, Any]] | str | None:
    """One root's findings, run summaries and what its report draws; with no
    runs, the note naming the files no reader took (None: there were none)."""
    from tunescope.analysis import analyze_store
    from tunescope.detectors.summaries import run_summaries

    if not store.run_ids():
        return unread_files(store.last_report, root)
    # the store keeps the full analysis; --select/--ignore filter the report only;
    # an unchanged run's findings come from the cache (same result, no detector run)
    with Progress("analyze", "runs") as bar:
        analysis = analyze_store(store, cfg, select=select, ignore=ignore, progress=bar.update)
    found = analysis.found
    summaries = run_summaries(store, found, groups=cfg.groups, memo=analysis.memo)
    drawn: dict[str, Any] = {}
    if args.format == "markdown":
        from tunescope.report.formats import markdown_curves

        drawn = markdown_curves(store, found)
    elif args.format == "html":
        from tunescope.report.html import collect

        drawn = collect(store, found, summaries)
    return found, summaries, drawn


def cmd_report(args: argparse.Namespace) -> int:
    """``tunescope report``: ``analyze --format html -o FILE --exit-zero``."""
    args = argparse.Namespace(
        **vars(args), format="html", fail_on="never", exit_zero=True, report_link=None
    )
    cmd_analyze(args)  # says what it wrote
    return ExitCode.OK
