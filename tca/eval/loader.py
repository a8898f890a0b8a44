"""Image loading for evaluation: DataLoader workers decode while the model runs.

Every failure to read one image (undecodable, missing, a dangling link, a link loop) becomes that
image's error message in :class:`Batch`; the evaluation reports, skips and counts it. Images are
files, or members of WebDataset tar shards read by offset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import torch

from ..errors import ImageError
from ..images import load_image
from .datasets import TarMember, link_problem


class Batch(NamedTuple):
    """One loaded batch. ks: stream positions in it; ok_ks: the readable ones, in order;
    pixels: (len(ok_ks), 3, H, W) on the CPU, or None when none was readable; errors: stream
    position -> why that image could not be read."""

    ks: list[int]
    ok_ks: list[int]
    pixels: torch.Tensor | None
    errors: dict[int, str]


def default_workers() -> int:
    """DataLoader workers: one fewer than the cores (at least 0, at most 4); 1 on a 2-core CPU."""
    cpus = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    return max(0, min(4, cpus - 1))


class _Images(torch.utils.data.Dataset):
    def __init__(self, items: list[tuple[int, Path | TarMember]], preprocess: Callable) -> None:
        self.items = items
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int):
        k, path = self.items[j]
        if isinstance(path, Path) and (problem := link_problem(path)) is not None:
            return k, None, problem
        try:
            if isinstance(path, TarMember):
                try:
                    data = path.read()
                except OSError as exc:
                    return k, None, f"{path.tar.name}: {exc.strerror or exc}"
                image = load_image(data)
            else:
                image = load_image(path)  # any unusable file: ImageError
        except ImageError as exc:
            return k, None, str(exc)
        return k, self.preprocess(image), None  # a failure here is a bug: it keeps its traceback


def _collate(items) -> Batch:
    ks = [k for k, _, _ in items]
    ok = [(k, x) for k, x, _ in items if x is not None]
    errors = {k: e for k, _, e in items if e is not None}
    pixels = torch.stack([x for _, x in ok]) if ok else None
    return Batch(ks, [k for k, _ in ok], pixels, errors)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def batches(
    items: list[tuple[int, Path | TarMember]],
    preprocess: Callable,
    batch_size: int,
    workers: int,
) -> Iterable[Batch]:
    """(stream position, path) items in order, ``batch_size`` at a time, decoded by
    ``workers`` processes (0: in this process)."""
    data = _Images(items, preprocess)
    if workers > 0:
        return torch.utils.data.DataLoader(
            data,
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            worker_init_fn=_worker_init,
            prefetch_factor=2,
        )
    return torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=_collate
    )


__all__ = ["Batch", "batches", "default_workers"]
