"""A runs folder from someone else: its cache (``RUNS/.tunescope/``) is never
trusted. Paths a manifest names are confined to the cache's own segments
folder, links in the cache lead nowhere, and a manifest that breaks a rule is
rebuilt from the logs without acting on it. Canary files outside the cache
must survive every case with their content."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunescope.cli import main
from tunescope.ingest.store.manifest import MANIFEST_VERSION
from tunescope.train.events import EventWriter

STEPS = 6
RUNS = ("runA", "runB")
QUERY = "SELECT run_id, count(*) AS n, sum(loss) AS s FROM steps GROUP BY run_id ORDER BY run_id"
CANARIES = {
    "notes.txt": b"my notes, not a cache\n",
    "seg-00000001-steps.parquet": b"PAR1 not a segment of this cache PAR1",
    "findings-00000001.parquet": b"PAR1 someone's findings PAR1",
    ".notes.txt.999999999.tmp": b"a temporary name with a dead pid\n",
    "manifest.json": b'{"mine": true}\n',
    "ingest.lock": b"not a lock\n",
}


def write_runs(root: Path) -> None:
    for name in RUNS:
        with EventWriter(root / name) as w:
            w.run_start(model="tiny", total_steps=STEPS)
            for s in range(1, STEPS + 1):
                w.step(step=s, loss=1.0 / s, lr=1e-4, grad_norm=1.0)


def expected_rows() -> list[str]:
    total = sum(1.0 / s for s in range(1, STEPS + 1))
    return ["run_id,n,s", *(f"{r},{STEPS},{total}" for r in RUNS)]


def digest(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: a file's sha256, a link's target."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class World:
    """A runs folder with a cache, beside a folder of canaries (``outside``)
    that nothing may touch."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.runs = base / "runs"
        self.outside = base / "outside"
        self.outside.mkdir(parents=True)
        for name, body in CANARIES.items():
            (self.outside / name).write_bytes(body)
        pq.write_table(pa.table({"step": [1], "loss": [99.0]}), self.outside / "real.parquet")
        write_runs(self.runs)
        self.cache = self.runs / ".tunescope"
        self.manifest_path = self.cache / "manifest.json"

    def snapshot(self) -> tuple[dict[str, str], dict[str, str]]:
        logs = {k: v for k, v in digest(self.runs).items() if "/.tunescope" not in k}
        return digest(self.outside), logs

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def write_manifest(self, manifest: Any) -> None:
        self.manifest_path.write_text(json.dumps(manifest), encoding="utf-8")


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    assert main(["ingest", str(w.runs)]) == 0
    return w


def query_whole(world: World, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run ``query`` twice (the second over the rebuilt cache): both answer in
    full; returns the first call's stderr lines."""
    capsys.readouterr()
    before = world.snapshot()
    assert main(["query", str(world.runs), QUERY, "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == expected_rows()
    assert main(["query", str(world.runs), QUERY, "--format", "csv"]) == 0
    out2, _ = capsys.readouterr()
    assert out2.splitlines() == expected_rows()
    assert world.snapshot() == before
    for name, body in CANARIES.items():
        assert (world.outside / name).read_bytes() == body
    assert "Traceback" not in err
    return err.splitlines()


# ---- the reproducers ---------------------------------------------------------------


def test_a_trash_entry_outside_the_cache_is_refused_and_nothing_is_deleted(world, capsys):
    manifest = world.manifest()
    notes = world.outside / "notes.txt"
    rel = os.path.relpath(notes, world.cache / "segments")
    manifest["trash"] = [{"file": str(notes), "since": 0}, {"file": rel, "since": 0}]
    world.write_manifest(manifest)
    err = query_whole(world, capsys)
    assert len(err) == 1, err
    assert err[0].startswith(f"tunescope: {world.manifest_path} is damaged (trash entry '/")
    assert err[0].endswith("is not a segment name); rebuilding the cache from the logs")
    assert world.manifest()["trash"] == []


def test_a_segment_named_outside_the_cache_is_neither_read_nor_deleted(world, capsys):
    manifest = world.manifest()
    outside = world.outside / "real.parquet"
    manifest["segments"][0]["file"] = os.path.relpath(outside, world.cache / "segments")
    world.write_manifest(manifest)
    err = query_whole(world, capsys)
    assert len(err) == 1 and "is not a segment name); rebuilding the cache" in err[0]


def test_a_segment_file_that_is_a_link_out_of_the_cache_is_not_read(world, capsys):
    seg = next((world.cache / "segments").glob("seg-*-steps.parquet"))
    seg.unlink()
    seg.symlink_to(world.outside / "real.parquet")
    err = query_whole(world, capsys)
    assert len(err) == 1 and f"{seg.name} is not a plain file in" in err[0], err
    assert not seg.is_symlink() or not seg.exists() or seg.resolve().parent != world.outside


def test_cache_folders_and_lock_that_are_links_are_replaced_not_followed(world, capsys):
    segments, tmp, lock = world.cache / "segments", world.cache / "tmp", world.cache / "ingest.lock"
    shutil.rmtree(segments)
    segments.symlink_to(world.outside, target_is_directory=True)
    tmp.symlink_to(world.outside, target_is_directory=True)
    lock.unlink(missing_ok=True)
    lock.symlink_to(world.outside / "ingest.lock")
    err = query_whole(world, capsys)
    assert f"tunescope: {segments} is a link, not the cache's own folder; removing it" in err[0]
    assert not segments.is_symlink() and not tmp.is_symlink() and not lock.is_symlink()


def test_a_cache_folder_that_is_a_link_is_not_used(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    world = World(tmp_path)
    world.outside.joinpath("segments").mkdir()
    world.cache.symlink_to(world.outside, target_is_directory=True)
    err = query_whole(world, capsys)
    assert err[0] == (
        f"tunescope: {world.cache} is a link; not using it as the cache "
        "(pass --cache-dir to choose one)"
    )
    assert (tmp_path / "xdg" / "tunescope").is_dir()


# ---- the fuzz ------------------------------------------------------------------------

CANARY_NAMES = sorted(CANARIES)


def hostile_paths(outside: str, cache: str) -> st.SearchStrategy[Any]:
    """Names a hostile manifest may hold where a file name belongs."""
    canary = st.sampled_from(CANARY_NAMES)
    return st.one_of(
        canary.map(lambda n: f"{outside}/{n}"),  # absolute
        st.tuples(st.integers(1, 6), canary).map(
            lambda t: "../" * t[0] + "outside/" + t[1]
        ),  # climbing out
        canary.map(lambda n: f"../../../outside/{n}"),
        canary.map(lambda n: f"segments/../../{n}"),
        st.just(cache),
        st.just("seg-" + "9" * 300 + "-steps.parquet"),  # very long
        st.just("a" * 5000),
        st.just("seg-00000001-steps.parquet\x00../../outside/notes.txt"),  # NUL
        st.just("seg-00000001-steps.parquet/../../../outside/notes.txt"),
        st.just(""),
        st.just("."),
        st.just(".."),
        st.text(max_size=40),
        st.sampled_from(CANARY_NAMES),  # a pattern-like bare name: a link may sit there
        st.integers(),
        st.none(),
        st.lists(st.text(max_size=3), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.floats(allow_nan=True),
        st.booleans(),
    )


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)

READER_STATE = st.fixed_dictionaries(
    {},
    optional={
        k: st.one_of(JUNK, hostile_paths("/", "/")) for k in ("offset", "inode", "line", "fp")
    },
)
SOURCE_KEYS = (
    "src",
    "gen",
    "size",
    "mtime_ns",
    "inode",
    "problems",
    "problem_count",
    "state",
    "run_id",
    "format",
    "run_dir",
    "changed_at",
    "max_step",
    "parent",
)
LINK_SPOTS = (
    "segments",
    "tmp",
    "ingest.lock",
    "segments/seg-00000001-steps.parquet",
    "segments/seg-00000001-metrics.parquet",
    "segments/seg-00000001-events.parquet",
    "segments/findings-00000001.parquet",
    "segments/runstats-0000000000000000.parquet",
    "manifest.json",
)


@st.composite
def hostile_case(draw: st.DrawFn, outside: str, cache: str) -> list[tuple[str, Any, Any]]:
    """A list of edits to a valid manifest and cache."""
    paths = hostile_paths(outside, cache)
    edits: list[tuple[str, Any, Any]] = []
    for _ in range(draw(st.integers(1, 4))):
        where = draw(
            st.sampled_from(
                ["trash", "segment", "findings", "number", "source", "top", "link", "extra"]
            )
        )
        if where == "trash":
            edits.append(("trash", draw(paths), draw(st.one_of(st.just(0), JUNK))))
        elif where == "segment":
            edits.append(
                (
                    "segment",
                    draw(st.sampled_from(["file", "table", "rows", "srcs"])),
                    draw(st.one_of(paths, JUNK)),
                )
            )
        elif where == "findings":
            edits.append(("findings", draw(paths), None))
        elif where == "number":
            edits.append(("number", draw(st.sampled_from(["next_seg", "next_src"])), draw(JUNK)))
        elif where == "source":
            key = draw(st.sampled_from(SOURCE_KEYS))
            value = draw(st.one_of(JUNK, paths, READER_STATE if key == "state" else JUNK))
            edits.append(("source", key, value))
        elif where == "top":
            edits.append(
                (
                    "top",
                    draw(st.sampled_from(["sources", "segments", "trash", "root", "version"])),
                    draw(JUNK),
                )
            )
        elif where == "link":
            target = draw(st.sampled_from([*CANARY_NAMES, "", "real.parquet"]))
            edits.append(("link", draw(st.sampled_from(LINK_SPOTS)), target))
        else:
            size = draw(st.sampled_from([0, 1, 100, 70_000]))
            edits.append(("extra", "trash", size))
    return edits


def apply(world: World, edits: list[tuple[str, Any, Any]]) -> None:
    manifest = world.manifest()
    for kind, key, value in edits:
        # an earlier edit may have replaced the container this one edits
        if kind in ("trash", "extra") and not isinstance(manifest.get("trash"), list):
            continue
        if kind == "segment" and not (
            isinstance(manifest.get("segments"), list)
            and manifest["segments"]
            and isinstance(manifest["segments"][0], dict)
        ):
            continue
        if kind == "source" and not (
            isinstance(manifest.get("sources"), dict) and manifest["sources"]
        ):
            continue
        if kind == "trash":
            manifest["trash"].append({"file": key, "since": value})
        elif kind == "segment":
            manifest["segments"][0][key] = value
        elif kind == "findings":
            manifest["findings"] = key
        elif kind == "number":
            manifest[key] = value
        elif kind == "source":
            next(iter(manifest["sources"].values()))[key] = value
        elif kind == "top":
            manifest[key] = value
        elif kind == "extra":  # many entries: a big manifest
            manifest["trash"].extend(
                {"file": f"../outside/notes.txt{'/..' * (i % 3)}", "since": 0} for i in range(value)
            )
        elif kind == "link":
            spot = world.cache / key
            if spot.parent.is_symlink() or not spot.parent.is_dir():
                continue  # never plant through a link: that would write outside
            if spot.is_dir() and not spot.is_symlink():
                shutil.rmtree(spot)
            else:
                spot.unlink(missing_ok=True)
            spot.symlink_to(world.outside / value)
    if not any(kind == "link" and key == "manifest.json" for kind, key, _ in edits):
        world.write_manifest(manifest)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world whose cache holds two ingests (so trash, findings and several
    segments exist), copied for each example."""
    base = tmp_path_factory.mktemp("pristine")
    world = World(base)
    assert main(["ingest", str(world.runs)]) == 0
    assert main(["analyze", str(world.runs), "--exit-zero"]) == 0
    assert main(["analyze", str(world.runs), "--exit-zero"]) == 0
    return base


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_no_hostile_manifest_or_cache_touches_a_file_outside(pristine, capsys, data):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "w"
        shutil.copytree(pristine, base, symlinks=True)
        world = World.__new__(World)
        world.base, world.runs, world.outside = base, base / "runs", base / "outside"
        world.cache = world.runs / ".tunescope"
        world.manifest_path = world.cache / "manifest.json"
        edits = data.draw(hostile_case(str(world.outside), str(world.cache)))
        apply(world, edits)
        err = query_whole(world, capsys)
        assert all(line.startswith("tunescope: ") for line in err), err
        assert len(err) <= 4, err
        assert world.manifest()["version"] == MANIFEST_VERSION


def test_watch_files_in_the_cache_that_are_links_lead_nowhere(world, capsys):
    from webhook_receiver import Receiver

    with open(world.runs / "runA" / "events" / "rank-0.jsonl", "a", encoding="utf-8") as f:
        f.write('{"v":1,"kind":"step","rank":0,"step":7,"loss":NaN}\n')  # a finding to send
    for name, target in (
        ("watch.lock", "notes.txt"),
        ("alerts-outbox.jsonl.lock", "ingest.lock"),
        ("alerts-outbox.jsonl", "manifest.json"),
    ):
        (world.cache / name).symlink_to(world.outside / target)
    before = world.snapshot()[0]
    with Receiver() as rx:
        code = main(["watch", str(world.runs), "--once", "--include-finished", "--webhook", rx.url])
        assert code == 0, capsys.readouterr().err
        assert rx.wait_for(1)
    assert world.snapshot()[0] == before
    for name, body in CANARIES.items():
        assert (world.outside / name).read_bytes() == body
    err = capsys.readouterr().err
    assert f"{world.cache / 'watch.lock'} is a link, not the cache's own file" in err
