"""Every command in the README and the manual's pages (``docs/*.md``) runs as
written, from a fresh copy of the project.

The README's shell examples are fenced blocks whose commands start with
``$ ``; the lines after a command, up to the next one, are what it prints.
Each block runs in order (the README, then the docs pages by name) in one copy of the project (later blocks may use
what earlier ones made, as a reader following the README would), with the
project's ``tunescope`` first on PATH. A command must exit 0, unless the next
command is ``echo $?``, whose expected output is then the exit status.

Outputs are compared where they are stable: a block preceded by the line
``<!-- readme-test: compare -->`` must print on stdout what the README shows (durations
written as ``1.23s`` are compared as ``Ns``). ``<!-- readme-test: skip -->``
skips a block that cannot run here (it says why in the README).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent


@dataclass
class Command:
    line: int
    text: str
    output: list[str] = field(default_factory=list)


@dataclass
class Block:
    line: int
    commands: list[Command]
    compare: bool = False
    skip: bool = False
    page: str = "README.md"


def blocks(text: str) -> list[Block]:
    """The README's shell example blocks (fences holding ``$ `` commands)."""
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    marker = ""
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("<!-- readme-test:"):
            marker = line.strip()
        elif line.startswith("```"):
            start = i
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append((i + 1, lines[i]))
                i += 1
            lang = line[3:].strip()
            cmds: list[Command] = []
            for no, b in body:
                if b.startswith("$ "):
                    cmds.append(Command(no, b[2:]))
                elif cmds:
                    cmds[-1].output.append(b)
            if cmds and lang in ("", "console", "sh", "shell"):
                out.append(Block(start + 1, cmds, "compare" in marker, "skip" in marker))
            marker = ""
        elif line.strip():
            marker = ""
        i += 1
    return out


def _all_blocks() -> list[Block]:
    out = []
    for path in PAGES:
        name = path.relative_to(REPO).as_posix()
        for b in blocks(path.read_text(encoding="utf-8")):
            b.page = name
            out.append(b)
    return out


BLOCKS = _all_blocks()


def _norm(lines: list[str]) -> list[str]:
    text = [re.sub(r"\b\d+(\.\d+)?s\b", "Ns", x.rstrip()) for x in lines]
    while text and not text[-1]:
        text.pop()
    return text


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of the project: the files git tracks and the new ones it does not ignore."""
    dest = tmp_path_factory.mktemp("readme") / "tunescope"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for f in files:
        if not f:
            continue
        src = REPO / f.decode()
        if src.is_file():
            (dest / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f.decode())
    return dest


def _needs_torch(block: Block) -> bool:
    return any(re.search(r"\btunescope train\b", c.text) for c in block.commands)


def test_readme_has_runnable_examples():
    assert len(BLOCKS) >= 3 and any(b.compare for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.page}-line-{b.line}" for b in BLOCKS])
def test_readme_block_runs_as_written(block: Block, copy: Path):
    if block.skip:
        pytest.skip(f"{block.page} line {block.line} is marked skip")
    if _needs_torch(block):
        pytest.importorskip("torch", reason="the example trains: needs the [train] extra")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "NO_COLOR": "1",
        "COLUMNS": "120",
        "PYTHONUNBUFFERED": "1",
    }
    last = 0
    for k, cmd in enumerate(block.commands):
        if cmd.text.strip() == "echo $?":
            assert [str(last)] == _norm(cmd.output), f"{block.page} line {cmd.line}"
            continue
        r = subprocess.run(
            ["bash", "-c", cmd.text],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        last = r.returncode
        checked = k + 1 < len(block.commands) and block.commands[k + 1].text.strip() == "echo $?"
        where = f"{block.page} line {cmd.line}: {cmd.text}"
        assert "Traceback" not in r.stderr, f"{where}\n{r.stderr}"
        if not checked:
            assert r.returncode == 0, f"{where}\nexit {r.returncode}\n{r.stderr}"
        if block.compare:
            got = _norm(r.stdout.splitlines())
            assert got == _norm(cmd.output), where


def test_every_relative_link_in_the_manual_resolves():
    """The README and the docs pages link each other: every relative link
    (``[text](path)`` or ``[text](path#anchor)``) names a file that exists."""
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []
