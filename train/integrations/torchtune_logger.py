"""``TunescopeMetricLogger``: a torchtune metric logger that writes tunescope's
event log. In a recipe's YAML::

    metric_logger:
      _component_: tunescope.train.integrations.torchtune_logger.TunescopeMetricLogger
      run_dir: ${output_dir}/tunescope
    log_every_n_steps: 1

torchtune's recipes make their metric logger on rank 0 only and log, per
optimizer step (``global_step``, counted from 1 as tunescope counts):
``loss`` (in the distributed recipes, reduced over all ranks first), ``lr``,
``tokens_per_second_per_gpu``, ``grad_norm`` when ``clip_grad_norm`` is set,
and with ``log_peak_memory_stats`` on a GPU ``peak_memory_active``,
``peak_memory_alloc`` and ``peak_memory_reserved`` in GiB. So the log is one
rank's, and when several ranks train its loss is the whole job's:
``run_start`` says so (``per_rank: false``). The names become ``loss``,
``lr``, ``tokens_per_s``, ``grad_norm``, and ``mem_peak_mb`` (from
``peak_memory_alloc``, in MiB); ``log_config`` puts the resolved recipe
configuration in ``run_start``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tunescope.train.integrations.recorder import Name, StepRecorder

_GIB_IN_MIB = 1024.0
# torchtune.training.get_memory_stats: peak figures in GiB
TORCHTUNE_NAMES: dict[str, Name] = {
    "peak_memory_alloc": ("mem_peak_mb", _GIB_IN_MIB),
    "peak_memory_active": ("peak_memory_active_mb", _GIB_IN_MIB),
    "peak_memory_reserved": ("peak_memory_reserved_mb", _GIB_IN_MIB),
}


class TunescopeMetricLogger:
    """torchtune's ``MetricLoggerInterface`` (``log``, ``log_dict``,
    ``log_config``, ``close``; a protocol, met without importing torchtune)
    over tunescope's event log.

    Args:
        run_dir: the run directory (events go to ``run_dir/events/rank-N.jsonl``).
        run: run name in each event (default: the directory name).
        names: metric name -> canonical field, before tunescope's vocabulary.
        run_start: more fields for ``run_start`` (``model``, ``total_steps``...).
        upload_to: a URL the run's files are shipped to as it trains.
        **kwargs: other keys of the YAML section, ignored (as torchtune's own
            loggers do).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        run: str | None = None,
        *,
        names: Mapping[str, Name] | None = None,
        run_start: Mapping[str, Any] | None = None,
        upload_to: str | None = None,
        **kwargs: Any,
    ) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = 0, 1
        fields: dict[str, Any] = {"world_size": world, "per_rank": world <= 1}
        if world > 1:
            fields["loss_averaging"] = "mean over all ranks (torchtune reduces before logging)"
        fields.update(run_start or {})
        self.recorder = StepRecorder(
            run_dir,
            run,
            rank=rank,
            names={**TORCHTUNE_NAMES, **(names or {})},
            run_start=fields,
            upload_to=upload_to,
        )

    def log(self, name: str, data: Any, step: int) -> None:
        self.recorder.log({name: data}, step)

    def log_dict(self, payload: Mapping[str, Any], step: int) -> None:
        self.recorder.log(payload, step)

    def log_config(self, config: DictConfig) -> None:
        resolved = OmegaConf.to_container(config, resolve=True)
        if isinstance(resolved, dict):
            self.recorder.config({str(k): v for k, v in resolved.items()})

    def close(self) -> None:
        """The last step and ``run_end`` (completed: recipes close after training)."""
        self.recorder.finish("completed")
