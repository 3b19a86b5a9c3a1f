"""``tunescope explain``: a detector's documentation and options, or the list of detectors."""

from __future__ import annotations

import argparse
from typing import Any

from tunescope.errors import ExitCode


def add(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="print a detector's documentation and options",
        description="Print what a detector flags, why it matters, an example, the fix and "
        "its options. Without an id, list the detectors.",
    )
    p.add_argument("detector", metavar="TSxxx", nargs="?", help="detector id, e.g. TS101")
    p.set_defaults(handler=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from tunescope.detectors.selection import all_detectors, get_detector
    from tunescope.report.explain import explain_text, listing

    if not args.detector:
        print(listing(all_detectors()), end="")
        print("\n`tunescope explain TSxxx` prints one detector's documentation and options.")
        return ExitCode.OK
    print(explain_text(get_detector(args.detector)), end="")
    return ExitCode.OK
