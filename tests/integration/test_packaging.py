"""The wheel maps the top-level folders into one package; the analysis side stays light."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = {
    "tunescope": "tunescope",
    "ingest": "tunescope.ingest",
    "detectors": "tunescope.detectors",
    "train": "tunescope.train",
    "tui": "tunescope.tui",
}


def all_modules() -> list[str]:
    mods = []
    for folder, package in COMPONENTS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):  # subpackages too (tunescope.alerts)
            if path.name == "__main__.py":
                continue
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods.append(".".join((package, *parts)))
    return mods


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_imports_every_module(tmp_path):
    dist = tmp_path / "dist"
    # Build from a clean copy of the sources: a stale build/ folder in the
    # checkout must not be able to smuggle deleted modules into the wheel.
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".tunescope",
            "fixtures",
            "bench",
            "tests",
            ".pytest_cache",
            ".ruff_cache",
            ".hypothesis",
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("tunescope-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # Dependencies come from this environment's site-packages (a plain path
    # entry, so the editable install's finder there is not activated).
    site = Path(sysconfig.get_paths()["purelib"])
    venv_site = Path(
        subprocess.check_output(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    (venv_site / "deps.pth").write_text(str(site) + "\n")
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    mods = all_modules()
    code = (
        "import importlib, sys\n"
        f"mods = {mods!r}\n"
        "for m in mods:\n"
        "    mod = importlib.import_module(m)\n"
        "    assert '/site-packages/tunescope/' in mod.__file__ or m == 'tunescope', mod.__file__\n"
        # the HTML report's package data: the vendored chart library and the page's assets
        "from tunescope.report import html as h\n"
        "assert h.vendor_version().startswith('uplot ')\n"
        "assert 'uPlot' in h._asset('vendor/uplot.min.js') and h._asset('vendor/uplot.LICENSE')\n"
        "assert h._asset('html.js') and h._asset('html.css')\n"
        "print(len(mods))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(mods)
    helped = subprocess.run(
        [str(venv / "bin" / "tunescope"), "--help"], capture_output=True, text=True, env=env
    )
    assert helped.returncode == 0 and "usage: tunescope" in helped.stdout


def test_analysis_side_never_imports_torch_transformers_or_textual():
    light = ["tunescope.cli"] + [
        m for m in all_modules() if m.startswith(("tunescope.ingest", "tunescope.detectors"))
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {light!r}:\n"
        "    importlib.import_module(m)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'textual', 'peft') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
