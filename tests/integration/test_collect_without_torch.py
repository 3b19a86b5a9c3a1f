"""Without the [train] extra the suite still collects: the training tests are
reported as skips that say what to install, not as collection errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Put in front of the interpreter's path, this makes ``import torch`` (and the
# rest of the extra) fail as it does where the extra was never installed.
NO_TRAIN_EXTRA = (
    "import sys\n"
    "sys.modules.update(dict.fromkeys(('torch', 'transformers', 'peft', 'accelerate')))\n"
)


def test_training_tests_skip_cleanly_without_torch(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(NO_TRAIN_EXTRA)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/train", "tests/unit/test_train_config.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "ERROR" not in out and "error" not in out.strip().splitlines()[-1], out
    modules = sorted(p.name for p in (REPO / "tests" / "train").glob("test_*.py"))
    assert f"SKIPPED [{len(modules)}]" in out, out
    assert "needs the [train] extra (torch, transformers, peft not installed)" in out
    assert "make setup-dev" in out
    # the torch-free tests beside them are still collected
    assert "tests/unit/test_train_config.py::test_bad_values_raise_value_error" in out
