"""Where and how the app's model passes run: the device ($TCA_DEVICE), the precision
($TCA_PRECISION), ZeroGPU's ``spaces.GPU`` around every model pass, results brought back to the
CPU, and torch's CPU threads from the container's CPU quota.

ZeroGPU (Hugging Face Spaces): the server process never touches CUDA. A function decorated with
``spaces.GPU(duration=...)`` runs in a forked worker that holds a GPU for at most ``duration``
seconds; its arguments and result are pickled across, so it takes plain data (a request, a
stream state), never callbacks, and returns CPU tensors only. Off ZeroGPU (``SPACES_ZERO_GPU``
unset) ``spaces.GPU`` returns the function itself, so the same code runs unchanged on a CPU or
an ordinary CUDA machine. Models are loaded once on the CPU; on a CUDA machine they then move
to the GPU for good, on ZeroGPU they stay on the CPU in the server and each worker moves its
copy (a worker forked later sees every model the server has loaded by then).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import torch

from tca.errors import ConfigError
from tca.precision import AUTO, PRECISION_CHOICES, CpuBf16, bf16_support, resolve

try:  # imported before any model loads: on ZeroGPU it patches torch's CUDA calls
    import spaces
except ImportError:  # pragma: no cover - a project dependency; the app runs without it
    spaces = None

DEVICE_ENV = "TCA_DEVICE"
PRECISION_ENV = "TCA_PRECISION"
DEVICE_CHOICES = ("auto", "cpu", "cuda")
# The longest a model request may hold a ZeroGPU GPU, in seconds (shorter bounds queue
# first there). A Run is about a second on a GPU; the rest is room for a worker's start-up, a
# model's move to the GPU and up to 1,200 prompts; a sweep runs up to 3 methods x 10 keep rates.
GPU_SECONDS: dict[str, int] = {"run": 30, "compare": 40, "sweep": 90, "stream_demo": 40}

F = TypeVar("F", bound=Callable[..., Any])


def on_zero_gpu(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a ZeroGPU Space (the ``spaces`` package's own test)."""
    return env.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


@dataclass(frozen=True)
class Placement:
    """Where the app's model passes run and in which precision.

    device: ``cpu`` or ``cuda``. precision: a concrete one (fp32, bf16, fp16); choice: what was
    asked for (``auto`` or a precision). zero_gpu: on a ZeroGPU Space (models stay on the CPU
    in the server; each GPU worker moves its copy). support: this CPU's native bfloat16.
    """

    device: str = "cpu"
    precision: str = "fp32"
    choice: str = AUTO
    zero_gpu: bool = False
    support: CpuBf16 = CpuBf16((), "none")

    @property
    def home(self) -> str:
        """Where loaded models live in the server process between requests."""
        return "cpu" if self.zero_gpu else self.device

    def describe(self) -> str:
        """One short line for the page, e.g. "bf16 (native on this CPU: AMX) · switch:
        TCA_PRECISION=fp32"."""
        if self.device == "cuda":
            why = "ZeroGPU" if self.zero_gpu else "CUDA"
        elif self.precision == "bf16":
            why = (
                f"native on this CPU: {', '.join(self.support.features)}"
                if self.support.native
                else "emulated on this CPU, slower than fp32"
            )
        elif self.precision == "fp32":
            why = "exact, as in the paper" if self.support.native else "no native bf16 here"
        else:
            why = f"{PRECISION_ENV}={self.choice}"
        if self.precision != "fp32":
            switch = f"{PRECISION_ENV}=fp32 (exact, as in the paper)"
        elif self.device == "cpu" and self.support.native:
            switch = f"{PRECISION_ENV}=bf16 (about 3x faster here)"
        else:
            return f"{self.precision} ({why})"
        return f"{self.precision} ({why}) · switch: {switch}"


def placement_from_env(
    env: Mapping[str, str] = os.environ,
    support: CpuBf16 | None = None,
    cuda_available: bool | None = None,
) -> Placement:
    """The app's placement from $TCA_DEVICE (auto, cpu or cuda; auto: CUDA when there is a GPU
    or on ZeroGPU) and $TCA_PRECISION (auto, fp32, bf16, fp16; auto: bf16 on a CPU with native
    bfloat16, fp32 elsewhere and on CUDA). A ConfigError names the variable."""
    zero = on_zero_gpu(env)
    asked = (env.get(DEVICE_ENV) or "auto").strip().lower()
    if asked not in DEVICE_CHOICES:
        raise ConfigError(f"{DEVICE_ENV} must be one of {', '.join(DEVICE_CHOICES)}, got {asked!r}")
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if asked == "cuda" and not (has_cuda or zero):
        raise ConfigError(f"{DEVICE_ENV}=cuda, but torch finds no CUDA device here")
    device = "cuda" if asked == "cuda" or (asked == "auto" and (has_cuda or zero)) else "cpu"
    choice = (env.get(PRECISION_ENV) or AUTO).strip().lower()
    if choice not in PRECISION_CHOICES:
        raise ConfigError(
            f"{PRECISION_ENV} must be one of {', '.join(PRECISION_CHOICES)}, got {choice!r}"
        )
    support = support or bf16_support()
    return Placement(device, resolve(choice, device, support), choice, zero, support)


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it on the CPU: tensors, lists, tuples, dicts and dataclass
    instances (frozen ones too) are walked; anything else is kept as it is. What holds no
    tensor off the CPU is returned itself (nothing is copied on a CPU machine)."""
    if isinstance(value, torch.Tensor):
        return value if value.device.type == "cpu" else value.cpu()
    if isinstance(value, (list, tuple)):
        items = [to_cpu(v) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return type(value)(items) if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        moved = {k: to_cpu(v) for k, v in value.items()}
        if all(moved[k] is value[k] for k in value):
            return value
        out = copy.copy(value)  # keeps the dict's own type (e.g. an OrderedDict)
        out.update(moved)
        return out
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = {}
        for f in dataclasses.fields(value):
            old = getattr(value, f.name)
            new = to_cpu(old)
            if new is not old:
                changed[f.name] = new
        if not changed:
            return value
        clone = copy.copy(value)
        for name, new in changed.items():
            object.__setattr__(clone, name, new)  # frozen dataclasses too
        return clone
    return value


def gpu_task(fn: F, duration_s: int, prepare: Callable[[], None] | None = None) -> F:
    """``fn`` as a GPU task: inside ``spaces.GPU(duration=duration_s)`` (a no-op off ZeroGPU),
    ``prepare`` first (e.g. the model cache moving its models to the GPU in a ZeroGPU
    worker), its result moved to the CPU. The bound is kept as ``gpu_duration_s``; on
    ZeroGPU the arguments must pickle (no callbacks)."""

    @functools.wraps(fn)
    def on_device(*args: Any, **kwargs: Any) -> Any:
        if prepare is not None:
            prepare()
        return to_cpu(fn(*args, **kwargs))

    task: Any = spaces.GPU(duration=duration_s)(on_device) if spaces is not None else on_device
    task.gpu_duration_s = duration_s
    return task


# ---------------------------------------------------------------------------- CPU threads

CGROUP = Path("/sys/fs/cgroup")


def _quota_v2(root: Path) -> float | None:
    """CPUs allowed by cgroup v2's ``cpu.max`` ("max 100000" or "<quota> <period>")."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
    except OSError:
        return None
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def _quota_v1(root: Path) -> float | None:
    """CPUs allowed by cgroup v1's CFS quota (-1: none)."""
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        try:
            quota = int((root / folder / "cpu.cfs_quota_us").read_text())
            period = int((root / folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def cpu_threads(affinity: int | None = None, cgroup: Path = CGROUP) -> int:
    """The CPUs this process may really use: those it is pinned to (``os.sched_getaffinity``),
    capped by the container's CPU quota (cgroup v2 ``cpu.max``, else v1's CFS quota), rounded
    up, at least 1. A container often sees every core of its host but may use only a few."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # macOS, Windows
            affinity = os.cpu_count() or 1
    quota = _quota_v2(cgroup)
    if quota is None:
        quota = _quota_v1(cgroup)
    n = affinity if quota is None else min(affinity, math.ceil(quota))
    return max(1, n)


def set_torch_threads(env: Mapping[str, str] = os.environ) -> int:
    """torch's intra-op threads from :func:`cpu_threads`, unless $OMP_NUM_THREADS sets them
    (then that wins, as torch reads it itself); one on ZeroGPU (see :func:`in_worker`).
    Returns the count in use."""
    if on_zero_gpu(env):
        torch.set_num_threads(1)
    elif not env.get("OMP_NUM_THREADS"):
        torch.set_num_threads(cpu_threads())
    return torch.get_num_threads()


def in_worker(placement: Placement) -> None:
    """The first step of every GPU task. On ZeroGPU the task runs in a process forked from the
    server, and an OpenMP thread pool the server used does not survive a fork (the child's
    first parallel CPU operation, e.g. the image's conversion to a tensor, hangs): the worker
    computes on one CPU thread, which keeps torch out of OpenMP. Elsewhere nothing changes."""
    if placement.zero_gpu:
        torch.set_num_threads(1)


__all__ = [
    "DEVICE_CHOICES",
    "DEVICE_ENV",
    "GPU_SECONDS",
    "PRECISION_ENV",
    "Placement",
    "cpu_threads",
    "gpu_task",
    "in_worker",
    "on_zero_gpu",
    "placement_from_env",
    "set_torch_threads",
    "to_cpu",
]
