"""What every test folder shares.

The tests are split by what they need:

- ``unit/``: pure functions and in-process ingest of small generated logs, plus
  the detector cases (``unit/cases``) and the report goldens (``unit/golden``);
  no subprocess, no training. ``make test-fast`` runs this folder.
- ``corpus/``: the labelled corpora as a whole: every real log in
  ``fixtures/real`` read and judged against its ``LABELS.json``, the provenance
  of each, the demo runs' labelled faults, no reader inventing NaN.
- ``integration/``: the CLI as a subprocess, ingest of whole fixture folders,
  webhooks to a real HTTP server on 127.0.0.1, the report in a real browser.
- ``tui/``: Textual Pilot tests and SVG snapshots (``tui/__snapshots__``).
- ``train/``: anything that trains, so needs torch (the ``[train]`` extra);
  without it, ``train/conftest.py`` reports each module there as one skip.

Helpers that several folders import (the detector-case generator, the webhook
receiver, the trainer helpers) live in ``tests/helpers``, which
``pyproject.toml`` puts on ``sys.path`` (``pythonpath``).

Each test is marked with its folder's name, so ``-m "not train"`` works too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FOLDERS = ("unit", "corpus", "integration", "tui", "train")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = Path(item.path).resolve().relative_to(HERE).parts[0]
        except (ValueError, IndexError):
            continue
        if folder in FOLDERS:
            item.add_marker(getattr(pytest.mark, folder))
