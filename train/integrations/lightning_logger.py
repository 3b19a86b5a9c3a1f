"""``TunescopeLogger``: a Lightning logger that writes tunescope's per-rank
event log::

    trainer = L.Trainer(logger=TunescopeLogger("runs/my-run"), log_every_n_steps=1,
                        callbacks=[LearningRateMonitor("step")])

Every rank writes its own ``rank-N.jsonl``: Lightning calls the loggers on
every rank (its own loggers decorate themselves to act on rank 0 only; this
one does not), and a value logged with ``self.log("train_loss", loss)``
(``sync_dist`` off, the default) is this rank's own. What Lightning's names
become:

- ``train_loss`` (and ``train_loss_step``, its per-step half when
  ``on_epoch`` is also set) -> ``loss``; ``*_epoch`` aggregates stay extra
  metrics under their names; ``val_*`` go to ``eval`` events.
- ``lr-AdamW`` (``LearningRateMonitor``) -> ``lr``.
- ``grad_2.0_norm_total`` (``lightning.pytorch.utilities.grad_norm`` logged in
  ``on_before_optimizer_step``) -> ``grad_norm``; Lightning logs no grad norm
  by itself.
- ``epoch`` (added by Lightning) -> ``epoch``.

Steps: Lightning logs the metrics of its optimizer step ``k`` (counted from
0, the batches that stepped before it) under step ``k``; tunescope counts
optimizer steps from 1, so this logger writes ``k + 1``. Lightning writes to
its loggers every ``log_every_n_steps`` (50 by default): set it to 1 to see
every step.
"""

from __future__ import annotations

import os
import re
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import Logger

from tunescope.ingest.readers.vocabulary import HIGH, meaning
from tunescope.train.integrations.recorder import Name, StepRecorder

_LR = re.compile(r"lr-[A-Za-z0-9_]+")  # LearningRateMonitor: "lr-AdamW", not "lr-AdamW/pg2"
_TOTAL_NORM = re.compile(r"grad_2(\.0)?_norm_total")
# Lightning's finalize statuses -> run_end's
_STATUS = {"success": "completed", "failed": "failed", "finished": "interrupted"}


def canonical_name(name: str) -> str:
    """The name tunescope's vocabulary should see for a name Lightning logged."""
    if _LR.fullmatch(name):
        return "lr"
    if _TOTAL_NORM.fullmatch(name):
        return "grad_norm"
    if name.endswith("_step"):
        stem = name[: -len("_step")]
        m = meaning(stem)
        if m.confidence >= HIGH and m.kind != "step":
            return stem
    return name


class TunescopeLogger(Logger):
    """Writes this rank's events for a Lightning ``Trainer`` run.

    Args:
        run_dir: the run directory (events go to ``run_dir/events/rank-N.jsonl``).
        run: run name in each event (default: the directory name).
        names: metric name -> canonical field (``{"my_loss": "loss"}``), before
            tunescope's vocabulary.
        run_start: more fields for ``run_start`` (``model``, ``total_steps``...).
        upload_to: a URL the run's files are shipped to as it trains.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        run: str | None = None,
        *,
        names: Mapping[str, Name] | None = None,
        run_start: Mapping[str, Any] | None = None,
        upload_to: str | None = None,
    ) -> None:
        super().__init__()
        self.run_dir = os.fspath(run_dir)
        self.run = run
        self.names = names
        self.run_start = dict(run_start or {})
        self.upload_to = upload_to
        self.recorder: StepRecorder | None = None

    @property
    def name(self) -> str:
        return "tunescope"

    @property
    def version(self) -> str:
        return os.path.basename(os.path.abspath(self.run_dir))

    # root_dir, log_dir and save_dir stay None: Lightning then puts its
    # checkpoints under the Trainer's default_root_dir, not in the run's log

    @property
    def experiment(self) -> StepRecorder:
        """The recorder behind this logger (opened on first use, on every rank)."""
        if self.recorder is None:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                rank, world = dist.get_rank(), dist.get_world_size()
            else:
                rank = int(getattr(rank_zero_only, "rank", 0) or 0)
                world = int(os.environ.get("WORLD_SIZE", "1"))
            fields: dict[str, Any] = {"world_size": world}
            fields.update(self.run_start)
            self.recorder = StepRecorder(
                self.run_dir,
                self.run,
                rank=rank,
                names=self.names,
                run_start=fields,
                upload_to=self.upload_to,
            )
        return self.recorder

    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        values = vars(params) if isinstance(params, Namespace) else dict(params)
        self.experiment.config(values)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        values = {canonical_name(k): v for k, v in metrics.items()}
        self.experiment.log(values, None if step is None else int(step) + 1)

    def finalize(self, status: str) -> None:
        """The last step and ``run_end``: ``success`` is completed, ``failed``
        failed, ``finished`` (stopped by a signal) interrupted."""
        if self.recorder is not None:
            self.recorder.finish(_STATUS.get(status, "interrupted"))
