"""TS601's table of causes: how the end of a log names why a run died.

Each :class:`Cause` has a key, a label for people (the run's status reads
``failed (CUDA out of memory)``), the pattern that finds it in a line, and a
fix. Causes are tried in the order of :data:`CAUSES`, most specific first: a
launcher's ``ChildFailedError`` follows every worker's death, so the worker's
own error (out of memory, an NCCL timeout) names the cause before the
launcher's exit code does. The patterns are the messages of PyTorch, NCCL,
the torch elastic launcher, SLURM, Python and the ``datasets`` library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Cause:
    key: str
    label: str
    pattern: re.Pattern[str]
    fix: str
    info: bool = False  # not a fault (a person stopped the run)
    outside: bool = False  # stopped from outside, by whom the log does not say: a warning
    before_step_1: bool = False  # a setup error: nothing was trained when no step was reached
    in_traceback: bool = False  # only an exception line or a traceback frame names it


def _p(text: str) -> re.Pattern[str]:
    return re.compile(text, re.IGNORECASE)


CAUSES: tuple[Cause, ...] = (
    Cause(
        "cuda-oom",
        "CUDA out of memory",
        _p(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED"),
        "",  # built from the run's numbers and config (death.oom_fix)
    ),
    Cause(
        "non-finite",
        "non-finite loss",
        _p(
            r"\b(?:loss|grad(?:ient)?s?(?:[ _]norm)?)\b[^\n]{0,20}\b(?:is|was|became|are)\s+"
            r"(?:nan|inf)\b|non-?finite (?:loss|value|grad)|found inf|is not finite"
            r"|nan or inf found|detected (?:nan|inf)"
        ),
        "Restart from the last checkpoint before the step named here with a lower learning "
        "rate and gradient clipping (max_norm 1.0); prefer bf16 to fp16; look at the batch "
        "of that step (empty or fully masked labels); see TS001 for where it began.",
    ),
    Cause(
        "disk-full",
        "no space left on device",
        _p(
            r"No space left on device|Errno 28\]|Disk quota exceeded|Errno 122\]"
            r"|PytorchStreamWriter failed writing|file write failed"
        ),
        "Free space where checkpoints and caches go (output_dir, HF_HOME, /tmp), keep fewer "
        "checkpoints (save_total_limit 2), skip saving optimizer states you do not resume "
        "from (save_only_model), or write to a larger volume; then resume from the last "
        "complete checkpoint (the one being written is likely torn).",
    ),
    Cause(
        "nccl-timeout",
        "NCCL timeout",
        _p(
            r"Watchdog caught collective operation timeout|collective operation timeout"
            r"|NCCL (?:communicator|operation)[^\n]{0,40}time(?:d)? ?out|ProcessGroupNCCL[^\n]*Timeout"
            r"|DistBackendError[^\n]*[Tt]imeout"
        ),
        "A rank stopped joining collectives: look at the rank that logged least or hung "
        "first (TS301), at a data loader or checkpoint save on one rank only, and at the "
        "network (NCCL_DEBUG=INFO); raise the timeout (ddp_timeout, "
        "init_process_group(timeout=...)) only for long one-rank work such as saving.",
    ),
    Cause(
        "collective-mismatch",
        "collective mismatch",
        _p(
            r"mismatch between collectives|collective[^\n]{0,30}mismatch"
            r"|Detected mismatch|mismatched collective|different collective"
        ),
        "Ranks called different collectives (or the same one with other shapes): an "
        "all-reduce under a condition that differs between ranks, uneven batches in the last "
        "step, or ranks running different code; run with TORCH_DISTRIBUTED_DEBUG=DETAIL to "
        "name the call.",
    ),
    Cause(
        "nccl-error",
        "NCCL error",
        _p(
            r"NCCL error|ncclInternalError|ncclSystemError|ncclUnhandledCudaError"
            r"|ncclRemoteError|DistBackendError|NCCL WARN"
        ),
        "Check the node named in the error (its GPUs with nvidia-smi, its network links), "
        "run again with NCCL_DEBUG=INFO to see which link failed, and cordon a node that "
        "fails again.",
    ),
    Cause(
        "worker-lost",
        "a Ray worker died",
        _p(
            r"\b(?:ActorDiedError|ActorUnavailableError|RayActorError|WorkerCrashedError"
            r"|NodeDiedError|OwnerDiedError)\b|The actor died unexpectedly"
        ),
        "A Ray actor or its node went away: look at the worker's own log (ray logs, "
        "/tmp/ray/session_latest/logs) for its out-of-memory kill or crash, give the "
        "actors more host memory (Ray's memory monitor kills the largest), and resume "
        "from the last checkpoint.",
    ),
    Cause(
        "time-limit",
        "time limit",
        _p(r"DUE TO TIME LIMIT|time limit exceeded|TIMEOUT\b.*slurm|JOB TIME LIMIT"),
        "Ask for more time (sbatch --time), or save checkpoints more often and resume "
        "(resume_from_checkpoint); catch SIGTERM or use --signal=USR1@120 to save before "
        "the limit.",
    ),
    Cause(
        "preemption",
        "preempted",
        _p(r"DUE TO PREEMPTION|preempted|spot instance[^\n]{0,40}(?:terminat|reclaim)"),
        "Resume from the last checkpoint; save more often on preemptible nodes and catch "
        "SIGTERM to save before the node goes (requeue the job with --requeue).",
        outside=True,
    ),
    Cause(
        "cancelled",
        "cancelled by SLURM",
        _p(r"CANCELLED AT"),
        "Check the scheduler's record (sacct -j JOB) for who cancelled it; nothing to fix "
        "if it was cancelled on purpose (scancel); resume from the last checkpoint to go on.",
        outside=True,
    ),
    Cause(
        "import-error",
        "import error",
        _p(r"\b(?:ModuleNotFoundError|ImportError)\b"),
        "Install or fix the module named here in the training environment (the versions "
        "that the training script pins), and check that every node uses the same "
        "environment.",
        before_step_1=True,
        in_traceback=True,
    ),
    Cause(
        "cuda-setup",
        "CUDA toolkit or driver error",
        _p(
            r"nvrtc: error|no kernel image is available|CUDA driver version is insufficient"
            r"|not implemented for CUDA below version|requires CUDA \d|CUDA capability sm_\d+ "
            r"is not compatible|compiled with CUDA [\d.]+[^\n]{0,40}(?:driver|runtime) "
            r"(?:version )?[\d.]+|CUDA_ERROR_(?:NO_BINARY_FOR_GPU|INVALID_PTX|UNSUPPORTED_PTX)"
        ),
        "The CUDA toolkit, the driver and the framework's build disagree (the GPU's "
        "architecture, or a CUDA version the driver does not support): install the build "
        "of torch / jax / the kernel library made for this driver's CUDA version "
        "(nvidia-smi shows it) and the GPU's architecture; nothing was trained.",
        before_step_1=True,
    ),
    Cause(
        "device-mismatch",
        "tensors on different devices",
        _p(r"Expected all tensors to be on the same device"),
        "A tensor stayed on another device than the model (often the CPU): move the model "
        "and every input of the step to the same device (model.to(device), batch.to(device), "
        "buffers created with device=...), or let the launcher (accelerate, deepspeed) place "
        "them.",
        before_step_1=True,
        in_traceback=True,
    ),
    Cause(
        "config-error",
        "configuration error",
        _p(
            r"argparse|ArgumentError|HfArgumentParser|parse_args|__post_init__|"
            r"error: (?:unrecognized|the following) arguments|Some specified arguments are "
            r"not used|invalid choice"
        ),
        "Fix the argument named here (its spelling, value or combination) and rerun; "
        "nothing was trained.",
        before_step_1=True,
        in_traceback=True,
    ),
    Cause(
        "data-error",
        "data loading error",
        _p(
            r"\bdatasets\.|DatasetGenerationError|DataFilesNotFoundError|datasets/|"
            r"collat|tokeniz|dataloader|FileNotFoundError|KeyError|ArrowInvalid"
            r"|JSONDecodeError|UnicodeDecodeError|IndexError: index out of range"
        ),
        "Check the data named here: the file path, the column names the collator and "
        "template expect (e.g. 'labels', 'messages'), empty or malformed records; load "
        "and tokenise a few records alone to reproduce it before training.",
        before_step_1=True,
        in_traceback=True,
    ),
    Cause(
        "keyboard-interrupt",
        "KeyboardInterrupt",
        _p(r"\bKeyboardInterrupt\b"),
        "Nothing to fix if it was stopped on purpose; resume from the last checkpoint to go on.",
        info=True,
    ),
)

# What an exit code of a worker killed by a signal says (the elastic launcher
# prints -N for signal N).
SIGNALS: dict[int, tuple[str, str, str]] = {
    -9: (
        "SIGKILL",
        "a worker was killed by SIGKILL (exit code -9), most often by the host's "
        "out-of-memory killer",
        "Look for the OOM killer in the host's log (dmesg | grep -i kill, or the "
        "scheduler's 'oom-kill event'): lower host memory use (fewer dataloader workers, "
        "no dataset held in memory per rank, smaller pinned buffers, CPU offload "
        "off) or ask for more host memory.",
    ),
    -11: (
        "segmentation fault",
        "a worker crashed in native code (SIGSEGV, exit code -11)",
        "A native extension crashed: check that torch, CUDA, flash-attn, bitsandbytes "
        "and deepspeed versions match each other and the driver; rerun with "
        "CUDA_LAUNCH_BLOCKING=1 and faulthandler to find the call.",
    ),
    -6: (
        "SIGABRT",
        "a worker aborted (SIGABRT, exit code -6), raised by a native library (often "
        "NCCL's watchdog)",
        "Look above for the library that aborted (NCCL, CUDA, the allocator); rerun "
        "with NCCL_DEBUG=INFO if it is NCCL.",
    ),
    -7: (
        "bus error",
        "a worker hit a bus error (SIGBUS, exit code -7), most often a full /dev/shm",
        "Give the container more shared memory (docker --shm-size, a larger /dev/shm) "
        "or use fewer dataloader workers.",
    ),
    -15: (
        "preempted (SIGTERM)",
        "the workers got a SIGTERM from outside (the scheduler, a preemption or a person)",
        "Check the scheduler's record of the job (time limit, preemption, cancel); "
        "resume from the last checkpoint.",
    ),
}

EXIT_CODE = re.compile(r"exit ?code\s*[:=]\s*(-?\d+)|Signal (\d+) \(SIG", re.IGNORECASE)
TERMINATED = re.compile(
    r"death signal|received signal 15|SIGTERM received|received SIGTERM|got signal: 15",
    re.IGNORECASE,
)
EXCEPTION_LINE = re.compile(
    r"^(?:\[rank\d+\]:\s*)?([A-Za-z_][\w.]*(?:Error|Exception|Interrupt))\b:?(.*)$"
)
FRAME_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?File \"")
