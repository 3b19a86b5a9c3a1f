"""Spark and Ray for real (the ``[scale]`` extra): ``tunescope.spark`` in local
mode (``local[2]``, the machine's Java) and ``tunescope.ray`` on a local Ray
(``num_cpus=2``), over folders and over ``s3://`` served by moto on 127.0.0.1.

The contract: Spark, Ray, ``analyze_groups`` and one plain ``tunescope
analyze`` find the same findings in the same runs. Caches shared by tasks
that run at once stay whole. The lake reads back in Spark SQL row for row.

One Spark session and one Ray for the whole module (a JVM and a Ray start
each cost seconds to a minute on a loaded machine), and the module runs in
one pytest-xdist worker (``xdist_group``; ``make test`` runs ``--dist
loadgroup``). The spark-submit example of docs/scale.md is run by
test_readme.py, as every shell example is.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from s3_server import S3Server

import tunescope
import tunescope.ray
import tunescope.spark
from tunescope.cli import main
from tunescope.errors import InputError, UsageError
from tunescope.fanout import analyze_groups, findings_schema
from tunescope.ingest.store.database import Store
from tunescope.ingest.store.lake import TABLES

pytestmark = pytest.mark.xdist_group("scale_out")

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "runs"
# every labelled run, in three roots; siblings (same recipe, other seeds) share one
ROOTS = {
    "a": ["healthy-lora-s0", "healthy-lora-s1", "fault-nan", "fault-lr-spike"],
    "b": ["fault-straggler-2rank", "fault-bad-batch", "fault-leak", "resumed"],
    "c": ["fault-freeze-adapter", "killed", "warmup-noise", "healthy-full-s2"],
}
BUCKET = "scale-logs"


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("scale") / "roots"
    for root, names in ROOTS.items():
        for name in names:
            shutil.copytree(FIXTURES / name, base / root / name)
    return {root: base / root for root in ROOTS}


@pytest.fixture(scope="module")
def s3(roots, tmp_path_factory):
    """moto on 127.0.0.1 holding root ``a`` as ``s3://scale-logs/a`` (and roots
    ``a`` and ``b`` as ``s3://logs/sweep-a`` and ``sweep-b``). Its
    address goes into the environment before Spark and Ray start, since their
    workers inherit the environment they start with (as a cluster's workers
    would be configured)."""
    home = tmp_path_factory.mktemp("s3home")
    with S3Server() as server, pytest.MonkeyPatch.context() as mp:
        for k, v in server.env().items():
            mp.setenv(k, v)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "none"))
        mp.setenv("AWS_CONFIG_FILE", str(home / "none"))
        mp.setenv("XDG_CACHE_HOME", str(home / "xdg"))
        server.client().create_bucket(Bucket=BUCKET)
        server.upload(roots["a"], BUCKET, "a")
        server.client().create_bucket(Bucket="logs")  # as the README's example names it
        server.upload(roots["a"], "logs", "sweep-a")
        server.upload(roots["b"], "logs", "sweep-b")
        yield f"s3://{BUCKET}"


@pytest.fixture(scope="module")
def spark(s3):
    session = tunescope.spark.session("local[2]", app_name="tunescope-tests")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def ray_local(s3):
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def rows(table: pa.Table, *, root: bool = True) -> list[tuple]:
    """Every column of every finding, sorted; evidence as canonical JSON."""
    out = []
    for r in table.to_pylist():
        r["evidence"] = json.dumps(json.loads(r["evidence"] or "null"), sort_keys=True)
        if not root:
            r.pop("root")
        out.append(tuple(r.values()))
    return sorted(out, key=repr)


def cli_rows(paths: list[Path], cache: Path, capsys) -> list[tuple]:
    """One plain ``tunescope analyze`` over the paths, as ``rows(root=False)``."""
    code = main(["analyze", *map(str, paths), "--format", "json", "--cache-dir", str(cache)])
    assert code == 1  # errors among the findings
    out = []
    for f in json.loads(capsys.readouterr().out)["findings"]:
        f.pop("explain")
        f["evidence"] = json.dumps(f["evidence"], sort_keys=True)
        out.append(tuple(f.values()))
    return sorted(out, key=repr)


def test_spark_ray_groups_and_analyze_find_the_same(spark, ray_local, roots, tmp_path, capsys):
    paths = [roots[r] for r in ROOTS]
    spark_t = tunescope.spark.analyze(spark, [[paths[0]], paths[1:]], cache_dir=tmp_path / "s")
    ray_t = tunescope.ray.analyze(paths, cache_dir=tmp_path / "r")
    local_t = analyze_groups([[p] for p in paths], workers=2, cache_dir=tmp_path / "g")
    plain = cli_rows(paths, tmp_path / "cli", capsys)

    for table in (spark_t, ray_t, local_t):
        assert table.schema == findings_schema()
    assert rows(spark_t) == rows(ray_t) == rows(local_t)
    assert rows(spark_t, root=False) == plain
    # the labelled faults are among them
    found = {(r[0], r[2]) for r in plain}
    assert {("fault-nan", "TS001"), ("fault-straggler-2rank", "TS301")} <= found
    assert {("fault-freeze-adapter", "TS201"), ("fault-leak", "TS401")} <= found
    # Ray hands back analyze_runs's own table: same rows, same order
    assert ray_t.equals(tunescope.analyze_runs(paths, cache_dir=tmp_path / "one"))


def test_over_s3_equals_the_folder(spark, ray_local, roots, s3, tmp_path):
    url = f"{s3}/a"
    local = tunescope.analyze_runs([roots["a"]], cache_dir=tmp_path / "l")
    by_spark = tunescope.spark.analyze(spark, [url], cache_dir=tmp_path / "s")
    by_ray = tunescope.ray.analyze([url], cache_dir=tmp_path / "r")
    assert by_spark.num_rows == local.num_rows > 0
    assert set(by_spark.column("root").to_pylist()) == {url}
    assert rows(by_spark, root=False) == rows(by_ray, root=False) == rows(local, root=False)
    # the lazy form: a DataFrame Spark SQL can query, empty error column
    frame = tunescope.spark.findings(spark, [url, roots["b"]], cache_dir=tmp_path / "f")
    frame.createOrReplaceTempView("found")
    got = spark.sql(
        "SELECT root, count(*) AS n, count(error) AS errors FROM found GROUP BY root"
    ).collect()
    want_b = tunescope.analyze_runs([roots["b"]], cache_dir=tmp_path / "lb").num_rows
    assert {r["root"]: (r["n"], r["errors"]) for r in got} == {
        url: (local.num_rows, 0),
        str(roots["b"]): (want_b, 0),
    }


def test_tasks_sharing_a_cache_never_collide(spark, ray_local, roots, tmp_path, capsys):
    """Four tasks on one path with one cache dir, two at a time, from an empty
    cache: each ingests or waits on the cache's lock, and all find the same."""
    want = rows(tunescope.analyze_runs([roots["c"]], cache_dir=tmp_path / "fresh"))
    shared = tmp_path / "shared"
    by_spark = tunescope.spark.analyze(spark, [[roots["c"]]] * 4, cache_dir=shared)
    assert by_spark.num_rows == 4 * len(want)
    assert sorted(set(rows(by_spark)), key=repr) == want
    by_ray = tunescope.ray.analyze([roots["c"]] * 4, cache_dir=shared / "ray")
    assert sorted(set(rows(by_ray)), key=repr) == want
    for cache_root in (shared, shared / "ray"):
        caches = [d for d in cache_root.iterdir() if d.name != "ray"]
        assert len(caches) == 1  # one path, one cache
        # the cache is whole: a plain analyze over it finds the same, no temporaries left
        assert not list((caches[0] / "tmp").glob("*"))
        assert cli_rows([roots["c"]], caches[0], capsys) == [r[1:] for r in want]


def test_bad_input_is_one_line_naming_it(spark, ray_local, roots, tmp_path, capfd):
    missing = tmp_path / "no-such-runs"
    capfd.readouterr()
    for engine in (
        lambda g: tunescope.spark.analyze(spark, g, cache_dir=tmp_path / "s"),
        lambda g: tunescope.ray.analyze(g, cache_dir=tmp_path / "r"),
    ):
        with pytest.raises(InputError) as e:
            engine([roots["a"], missing])
        assert str(e.value) == f"{missing}: no such directory; pass the folder that holds your runs"
        with pytest.raises(InputError) as e:
            engine(["s3://no-such-bucket/runs"])
        assert (
            str(e.value)
            == "s3://no-such-bucket/runs: no such bucket ('no-such-bucket'); check the URL"
        )
        for bad in ([], [[]], [3]):
            with pytest.raises(UsageError):
                engine(bad)
    # no engine's stack trace reached the terminal (the JVM's and Ray's go to fd 2)
    err = capfd.readouterr().err
    assert not re.search(r"Traceback|\tat org\.apache|Exception in task|RayTaskError", err), err
    # the lazy form: the bad group is one row with its error; the others stand
    frame = tunescope.spark.findings(spark, [roots["a"], missing], cache_dir=tmp_path / "f")
    table = frame.toArrow()
    errors = [e for e in table.column("error").to_pylist() if e]
    assert errors == [
        f"InputError: {missing}: no such directory; pass the folder that holds your runs"
    ]
    assert (
        table.num_rows
        == 1 + tunescope.analyze_runs([roots["a"]], cache_dir=tmp_path / "a").num_rows
    )
    with pytest.raises(InputError, match="not a tunescope lake"):
        tunescope.spark.read_lake(spark, tmp_path)


def test_spark_sql_reads_the_lake_row_for_row(spark, roots, tmp_path, capsys):
    cache = tmp_path / "cache"
    runs = roots["b"]
    assert (
        main(["export", str(runs), "--parquet", str(tmp_path / "lake"), "--cache-dir", str(cache)])
        == 0
    )
    store = Store(runs, cache)
    views = {t: store.query(f"SELECT * FROM {t}") for t in TABLES}
    store.close()
    frames = tunescope.spark.read_lake(spark, tmp_path / "lake")
    assert views["findings"].num_rows > 0
    for t in TABLES:
        assert frames[t].schema["run_id"].dataType.simpleString() == "string"
        got = spark.sql(f"SELECT * FROM {t}").toArrow()  # the temporary view
        cols = views[t].column_names
        assert sorted(got.column_names) == sorted(cols), t
        assert canonical(got, cols) == canonical(views[t], cols), t
    # Spark SQL's answer, as a user would ask it, against the store's
    got = spark.sql("SELECT run_id, max(step) AS last FROM steps GROUP BY run_id").collect()
    want = views["steps"].group_by("run_id").aggregate([("step", "max")]).to_pylist()
    assert {r["run_id"]: r["last"] for r in got} == {r["run_id"]: r["step_max"] for r in want}
    assert len(got) == len(ROOTS["b"])


def canonical(table: pa.Table, columns: list[str]) -> list[tuple]:
    """Rows in a fixed column order, sorted; times as microseconds since the
    epoch (the time zone's name differs between engines), NaN as text."""
    import pyarrow.compute as pc

    out = table.select(columns)
    for i, field in enumerate(out.schema):
        if pa.types.is_timestamp(field.type):
            us = pc.cast(out.column(i), pa.timestamp("us", tz="UTC")).cast(pa.int64())
            out = out.set_column(i, field.name, us)
    return sorted((tuple(repr(v) for v in r.values()) for r in out.to_pylist()), key=str)


def example(page: str) -> str:
    """The Python block of ``page`` marked as tested by this module."""
    text = (REPO / page).read_text(encoding="utf-8")
    marker = "<!-- tested by tests/integration/test_scale_out.py -->\n```python\n(.*?)```"
    block = re.search(marker, text, re.S)
    assert block, f"{page} lost its tested Python example"
    return block.group(1)


def test_the_manuals_python_examples_run(spark, ray_local, s3, tmp_path, monkeypatch, capsys):
    """docs/scale.md's example, run as written from a folder holding a copy of
    fixtures/runs, and the README's, over a bucket named as it names it: the
    tables of each agree."""
    shutil.copytree(FIXTURES, tmp_path / "fixtures" / "runs")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(example("docs/scale.md"), "docs/scale.md", "exec"), scope)
    assert scope["spark_findings"].num_rows > 0
    assert rows(scope["spark_findings"]) == rows(scope["ray_findings"])
    assert rows(scope["spark_findings"]) == rows(scope["local_findings"])
    assert "severity" in capsys.readouterr().out  # the DataFrame's count by severity

    scope = {}
    exec(compile(example("README.md"), "README.md", "exec"), scope)
    assert scope["by_spark"].num_rows > 0
    assert rows(scope["by_spark"]) == rows(scope["by_ray"])


def test_groups_are_paths_or_lists_of_paths():
    """What a job is made of, checked on the driver before any task starts."""
    from tunescope.tasks import as_groups

    assert as_groups("runs") == [["runs"]]  # one path for the groups: one group
    assert as_groups([Path("a"), ["b", Path("c")]]) == [["a"], ["b", "c"]]
    for bad, says in (([], "no runs"), ([[]], "group 0"), (["a", [1]], "group 1")):
        with pytest.raises(UsageError, match=says):
            as_groups(bad)
