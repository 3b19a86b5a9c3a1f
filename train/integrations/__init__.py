"""Loggers for other trainers: tunescope's per-rank event log written from
accelerate (:mod:`.accelerate_tracker`), Lightning (:mod:`.lightning_logger`)
and torchtune (:mod:`.torchtune_logger`), each a thin adapter over one
:class:`~tunescope.train.integrations.recorder.StepRecorder`."""
