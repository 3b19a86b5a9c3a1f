"""``TunescopeTracker``: an accelerate tracker that writes tunescope's per-rank
event log from a home-made loop::

    accelerator = Accelerator(log_with=[TunescopeTracker("runs/my-run")])
    accelerator.init_trackers("my-project", config={"lr": 3e-4})
    for step, batch in enumerate(loader, start=1):
        ...
        accelerator.log({"loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                         "grad_norm": norm.item()}, step=step)
    accelerator.end_training()

Ranks: ``accelerator.log`` and ``init_trackers`` run on the main process
only (accelerate decorates them so), which gives ``rank-0.jsonl`` alone. For
one log per rank, the way tunescope sees a rank that goes NaN alone or
lags, keep the tracker and call its own ``log`` on every rank, with the loss
this rank computed (before any gather), then ``finish`` after
``end_training``::

    tracker = TunescopeTracker("runs/my-run")
    accelerator = Accelerator(log_with=[tracker])
    ...
        tracker.log({"loss": loss.item(), "lr": lr, "grad_norm": norm.item()}, step=step)
    accelerator.end_training()
    tracker.finish()

A rank opens its log on its first ``log`` (rank and world size from
accelerate's ``PartialState``). The grad norm is what
``accelerator.clip_grad_norm_`` returns. Names are mapped as
:mod:`~tunescope.train.integrations.recorder` says; the step is the one
given (count optimizer steps from 1), else one more than the last.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from accelerate.state import PartialState
from accelerate.tracking import GeneralTracker

from tunescope.train.integrations.recorder import Name, StepRecorder


class TunescopeTracker(GeneralTracker):
    """Writes this rank's events for an ``Accelerator`` run.

    Args:
        run_dir: the run directory (events go to ``run_dir/events/rank-N.jsonl``).
        run: run name in each event (default: the directory name).
        names: metric name -> canonical field (``{"my_loss": "loss"}``), before
            tunescope's vocabulary.
        run_start: more fields for ``run_start`` (``model``, ``total_steps``...).
        upload_to: a URL the run's files are shipped to as it trains.
    """

    name = "tunescope"
    requires_logging_directory = False
    main_process_only = False  # nothing here is for the main process only

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
        self.run_dir = run_dir
        self.run = run
        self.names = names
        self.run_start = dict(run_start or {})
        self.upload_to = upload_to
        self.recorder: StepRecorder | None = None

    @property
    def tracker(self) -> StepRecorder | None:
        """The recorder behind this tracker (after ``init_trackers``)."""
        return self.recorder

    def start(self) -> None:
        """Called by ``init_trackers``: the process group is known by now."""
        if self.recorder is not None:
            return
        state = PartialState()
        fields = {
            "world_size": state.num_processes,
            "devices": [str(state.device)],
        }
        fields.update(self.run_start)
        self.recorder = StepRecorder(
            self.run_dir,
            self.run,
            rank=state.process_index,
            names=self.names,
            run_start=fields,
            upload_to=self.upload_to,
        )

    def store_init_configuration(self, values: dict) -> None:
        self._recorder().config(values)

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        self._recorder().log(values, step)

    def finish(self) -> None:
        """The last step and ``run_end`` (completed), once: ``end_training``
        calls it on the main process."""
        if self.recorder is not None:
            self.recorder.finish("completed")

    def _recorder(self) -> StepRecorder:
        if self.recorder is None:
            self.start()  # used without init_trackers
        assert self.recorder is not None
        return self.recorder
