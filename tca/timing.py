"""Wall-clock timing of model work on any device.

CUDA kernels run asynchronously: the clock is read only after the device has finished, so a
time covers the work itself and not just its launch.
"""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed_ms(t0: float, device: torch.device | str) -> float:
    """Milliseconds since ``time.perf_counter()`` returned ``t0``, once ``device`` is idle."""
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's parameters (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


__all__ = ["synchronize", "elapsed_ms", "model_device"]
