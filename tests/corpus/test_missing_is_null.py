"""Missing is NULL, in every reader: a value a log did not write reads as NULL,
never as NaN. NaN (and Inf) is kept only where a log wrote one, so a detector,
the TUI and the report can tell "diverged" from "not logged"."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunescope.ingest.store.database import Store

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"

# Every NaN the fixtures hold, each one written by its log: (root, run) ->
# {column or metric name: NaN cells}. Anything else that reads as NaN was invented.
LOGGED_NAN: dict[tuple[str, str], dict[str, int]] = {
    ("formats", "hf-nan"): {"loss": 4, "grad_norm": 4},  # "loss": NaN in trainer_state.json
    # MLflow stores a NaN as is_nan = 1 (SQLite) or the text "nan" (file store)
    ("formats", "mlflow-db/mlflow.db/ace8ee2fbfa45823ba0b5f72a3cdc42a"): {"loss": 4},
    ("formats", "mlruns/455032271917954935/2271feb1868a41e0bf9458c0c0a218f1"): {"loss": 1},
    ("runs", "fault-nan"): {
        "loss": 101,
        "grad_norm": 101,
        "grad_norm_adapter": 101,
        "grad_norm_backbone": 101,
        "grad_norm_lora_A": 101,
        "grad_norm_lora_B": 101,
    },
    ("formats", "general/nanogpt"): {"loss": 1},  # "iter 30: loss nan"
    # Lightning's CSVLogger wrote "nan" for the GAN's losses once they blew up
    ("real", "lightning-gan-nan"): {"loss": 319, "train_gen_loss": 320},
    # modded-nanogpt prints "step_avg:nanms" for its first steps (no average yet)
    ("real", "modded-nanogpt-1b"): {"step_avg": 12},
    ("real", "modded-nanogpt-speedrun"): {"step_avg": 12},
}


def nan_cells(store: Store) -> dict[str, dict[str, int]]:
    """run -> {step column or metric name: NaN cells} over the whole store."""
    cur = store.cursor()
    cols = [
        r[0]
        for r in cur.execute(
            "SELECT column_name FROM (DESCRIBE steps) WHERE column_type = 'DOUBLE'"
        ).fetchall()
    ]
    counts = ", ".join(f"count(*) FILTER (WHERE isnan({c}))" for c in cols)
    out: dict[str, dict[str, int]] = {}
    sql = f"SELECT run_id, {counts} FROM steps GROUP BY run_id"
    for run_id, *ns in cur.execute(sql).fetchall():
        got = {c: n for c, n in zip(cols, ns, strict=True) if n}
        if got:
            out[run_id] = got
    for run_id, name, n in cur.execute(
        "SELECT run_id, name, count(*) FILTER (WHERE isnan(value)) AS n FROM metrics "
        "GROUP BY run_id, name HAVING n > 0"
    ).fetchall():
        out.setdefault(run_id, {})[name] = n
    return out


@pytest.mark.parametrize("root", ["formats", "real", "runs"])
def test_no_reader_invents_nan(root: str, tmp_path: Path) -> None:
    store = Store.open(FIXTURES / root, tmp_path / "cache")
    try:
        assert store.run_ids()
        expected = {run: cells for (r, run), cells in LOGGED_NAN.items() if r == root}
        assert nan_cells(store) == expected
    finally:
        store.close()


MEGATRON = (
    "[Rank 0] (after {it} iterations) memory (MB) | allocated: 7024.9 | max allocated: "
    "17050.5 | reserved: 17548.0 | max reserved: 17548.0\n"
)
ITERATION = (
    " iteration {it:8d}/     100 | consumed samples: {s:10d} | elapsed time per iteration (ms): "
    "612.5 | learning rate: 2.000E-05 | global batch size:    32 | lm loss: {loss:.6E} | "
    "loss scale: 1.0 | grad norm: 1.250 | number of skipped iterations:   0 | "
    "number of nan iterations:   0 |\n"
)


def test_megatron_memory_logged_once_is_null_on_the_other_iterations(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "gpt"
    run.mkdir(parents=True)
    lines = [MEGATRON.format(it=1)]
    lines += [ITERATION.format(it=i, s=32 * i, loss=3.0 - i / 100) for i in range(1, 61)]
    (run / "finetune.log").write_text("".join(lines))
    store = Store.open(tmp_path / "runs", tmp_path / "cache")
    try:
        rows = (
            store.cursor()
            .execute(
                "SELECT step, mem_allocated_mb, mem_reserved_mb, isnan(mem_allocated_mb) "
                "FROM steps ORDER BY step"
            )
            .fetchall()
        )
    finally:
        store.close()
    assert len(rows) == 60
    assert rows[0][:3] == (1, pytest.approx(7024.9), pytest.approx(17548.0))
    assert all(r[1] is None and r[2] is None for r in rows[1:]), rows[1:3]
