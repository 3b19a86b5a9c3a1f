"""Console logs: tunescope's console reader against a plain scan of the same bytes.

Writes two logs under a temporary folder (``--dir``, default under /tmp):

- ``hf/train.log``: HF Trainer console output, tqdm-heavy: 50 progress-bar
  lines for each ``{'loss': ...}`` dict line (``--mb`` MB, default 200);
- ``megatron/train.log``: Megatron-LM iteration lines (``--iters``, default 200,000);
- ``homemade/ppo.log``: a home-made RL loop's ``rollout=N rl_loss=X ...`` lines
  behind a Python logging prefix (``--own-mb`` MB, default 50), read by the
  general reader.

Before timing, each reader reads a small log of its kind once: what a
process pays once (imports such as ``pyarrow.compute``, Arrow's first calls)
is not charged to the first log measured.

For each it times, best of ``--repeat``:

- ``grep -c`` of the metric lines over the file (a separate process, as a user
  would run it), and the same count with a compiled Python regex over the
  file's bytes (read included): the baselines, measured in this run;
- tunescope's ``ConsoleReader.read`` of the whole file (read, find, parse,
  build the Arrow tables);
- a re-read of the unchanged file through the cache (``Cache.ingest``: one stat
  per file, nothing read), against the first ingest of it.

and prints the throughput in MB/s and the ratios (reader / baseline speed).

    python bench/console.py [--mb 200] [--iters 200000] [--own-mb 50] [--repeat 2]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_hf(path: Path, mb: int) -> int:
    """A tqdm-heavy HF console log of about ``mb`` MB; returns the dict lines written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    total = 10_000_000
    target = mb * 1_000_000
    written = 0
    dicts = 0
    step = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write("***** Running training *****\n  Num examples = 1,000,000\n")
        while written < target:
            block = []
            for _ in range(50):
                step += 1
                pct = 100 * step // total
                block.append(
                    f"\r{pct:3d}%|{'#' * (pct // 10):10s}| {step}/{total} "
                    f"[01:{step % 60:02d}:{step % 59:02d}<10:00:00,  2.{step % 97:02d}it/s]\n"
                )
            dicts += 1
            loss = 2.0 / (1 + dicts / 1000) + (dicts % 7) * 1e-3
            block.append(
                f"{{'loss': {loss:.4f}, 'grad_norm': {0.5 + (dicts % 13) / 10:.4f}, "
                f"'learning_rate': {1e-4 * (1 - step / total):.6e}, "
                f"'epoch': {step / total * 3:.2f}}}\n"
            )
            text = "".join(block)
            f.write(text)
            written += len(text)
    return dicts


def write_megatron(path: Path, iters: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("[before the start of training step] datetime: 2024-01-01 00:00:00\n")
        for i in range(1, iters + 1):
            f.write(
                f" iteration {i:8d}/{iters:8d} | consumed samples: {i * 32:12d} | "
                f"elapsed time per iteration (ms): {600 + i % 50:.1f} | "
                f"learning rate: {1e-4 * (1 - i / iters):.3E} | global batch size:    32 | "
                f"lm loss: {3.0 / (1 + i / 10000):.6E} | loss scale: 1.0 | "
                f"grad norm: {1 + (i % 9) / 10:.3f} | number of skipped iterations:   0 | "
                f"number of nan iterations:   0 |\n"
            )


def write_homemade(path: Path, mb: int) -> None:
    """A home-made RL loop's log of about ``mb`` MB behind a Python logging
    prefix, counting rollouts: the general reader's shape (no console family)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = mb * 1_000_000
    written = 0
    step = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            block = []
            for _ in range(1000):
                step += 1
                loss = 2.0 / (1 + step / 5000) + (step % 7) * 1e-3
                block.append(
                    f"2024-05-01 12:{step // 60 % 60:02d}:{step % 60:02d},{step % 1000:03d} - INFO"
                    f" - ppo - rollout={step} rl_loss={loss:.4f} reward_mean={step % 13 / 10:.3f}"
                    f" kl={(step % 17) * 1e-3:.4f} lr=1.0e-05 time={100 + step % 50:.1f}ms\n"
                )
            text = "".join(block)
            f.write(text)
            written += len(text)


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def measure(
    name: str, path: Path, needle: str, repeat: int, general: bool = False
) -> dict[str, float]:
    from tunescope.ingest.readers.console.reader import ConsoleReader
    from tunescope.ingest.readers.general import GeneralReader
    from tunescope.ingest.store.cache import Cache

    size = path.stat().st_size / 1e6
    pattern = re.compile(re.escape(needle.encode()))

    def regex_count() -> int:
        return sum(1 for _ in pattern.finditer(path.read_bytes()))

    def grep_count() -> int:
        out = subprocess.run(
            ["grep", "-cF", needle, str(path)], capture_output=True, text=True, check=False
        )
        return int(out.stdout.strip() or 0)

    reader = GeneralReader() if general else ConsoleReader()

    def read() -> int:
        return reader.read(path, None).steps.num_rows

    t_regex, n_regex = best(regex_count, repeat)
    t_grep, n_grep = best(grep_count, repeat) if shutil.which("grep") else (float("nan"), None)
    t_read, n_rows = best(read, repeat)

    cache_dir = path.parent / ".tunescope"
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache = Cache(path.parent, cache_dir)
    t = time.perf_counter()
    cache.ingest()
    t_first = time.perf_counter() - t
    t_again, _ = best(cache.ingest, repeat)

    print(f"{name}: {size:,.0f} MB, {n_rows:,} step rows (regex count {n_regex:,}, grep {n_grep})")
    print(f"  grep -c          {t_grep:7.3f} s  {size / t_grep:8,.0f} MB/s")
    print(f"  regex count      {t_regex:7.3f} s  {size / t_regex:8,.0f} MB/s")
    print(
        f"  tunescope read   {t_read:7.3f} s  {size / t_read:8,.0f} MB/s  "
        f"= {t_regex / t_read:.2f}x the regex scan, {t_grep / t_read:.2f}x grep -c"
    )
    print(
        f"  ingest: first {t_first:.3f} s, unchanged again {t_again:.4f} s "
        f"= {100 * t_again / t_first:.2f}% of the first"
    )
    return {"regex": t_regex / t_read, "grep": t_grep / t_read, "again": t_again / t_first}


def warm_up(folder: Path) -> None:
    """One read of a small log of each kind, untimed (the process's one-time costs)."""
    from tunescope.ingest.readers.console.reader import ConsoleReader
    from tunescope.ingest.readers.general import GeneralReader

    write_hf(folder / "hf" / "train.log", 1)
    write_megatron(folder / "megatron" / "train.log", 2000)
    write_homemade(folder / "homemade" / "ppo.log", 1)
    ConsoleReader().read(folder / "hf" / "train.log", None)
    ConsoleReader().read(folder / "megatron" / "train.log", None)
    GeneralReader().read(folder / "homemade" / "ppo.log", None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=200)
    p.add_argument("--iters", type=int, default=200_000)
    p.add_argument("--own-mb", type=int, default=50, help="size of the home-made loop's log")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--dir", type=Path, default=None, help="where to write the logs (/tmp)")
    args = p.parse_args(argv)
    base = args.dir or Path(tempfile.mkdtemp(prefix="tunescope-bench-console-"))
    try:
        hf = base / "hf" / "train.log"
        meg = base / "megatron" / "train.log"
        own = base / "homemade" / "ppo.log"
        t = time.perf_counter()
        write_hf(hf, args.mb)
        write_megatron(meg, args.iters)
        write_homemade(own, args.own_mb)
        print(f"wrote the logs in {time.perf_counter() - t:.1f} s under {base}")
        warm_up(base / "warm-up")
        measure("HF console (tqdm-heavy)", hf, "{'loss'", args.repeat)
        measure("Megatron iterations", meg, "| lm loss:", args.repeat)
        measure("home-made loop (general reader)", own, " rl_loss=", args.repeat, general=True)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
