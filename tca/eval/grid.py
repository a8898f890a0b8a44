"""The evaluation grid: every (data set, method, keep rate, stream order) cell on its own, in
this process or on Ray.

A :class:`Job` is one data set with its options and records folder; its cells are its settings
on their stream orders (order-independent baselines on repeat 0 only). A cell writes the very
record files the whole job writes (:func:`tca.eval.loop.execute` with ``only_repeats``), so a
crashed cell resumes from its records, a finished one is not recomputed, and the cells' runs,
put back together in the job's order, summarise to the sequential run's result.

On Ray (``--ray``) each worker is an actor holding one model; cells are handed to free workers.
A worker that dies is restarted and its cell retried, resuming from the records. The records
folder must be reachable by every worker (one machine, or a shared file system on a cluster).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import EvalError, UserError
from ..models import ClipModel, load_model
from .datasets import Dataset, load_dataset
from .loop import Executed, ModelFacts, execute
from .records import Run
from .report import summarise
from .settings import EvalOptions, Setting
from .suites import SuiteDataset, load_suite_dataset


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads its model (picklable). config_dir: extra open_clip model configs."""

    name: str
    pretrained: str | None
    checkpoint: str | None = None
    device: str = "cpu"
    seed: int = 0
    precision: str = "fp32"
    config_dir: str | None = None

    def load(self) -> ClipModel:
        from ..precision import resolve as resolve_precision

        if self.config_dir:
            import open_clip

            open_clip.add_model_config(self.config_dir)
        return load_model(
            self.name,
            self.pretrained,
            self.checkpoint,
            device=self.device,
            seed=self.seed,
            # "auto" is resolved here, on the worker: its own CPU decides (tca.precision)
            precision=resolve_precision(self.precision, self.device),
        )


@dataclass(frozen=True)
class DataSpec:
    """How a worker finds a data set (picklable): a folder / manifest path, a clip_benchmark
    name with its root, or a suite entry with its root."""

    source: str
    benchmark: str | None = None
    suite_entry: SuiteDataset | None = None

    def load(self) -> Dataset:
        if self.suite_entry is not None:
            return load_suite_dataset(self.suite_entry, Path(self.source))
        if self.benchmark is not None:
            from .benchmark import load_benchmark

            return load_benchmark(self.benchmark, self.source)
        return load_dataset(self.source)


@dataclass(frozen=True)
class Job:
    """One data set evaluated with ``options``, its records in ``records``."""

    key: str
    data: DataSpec
    options: EvalOptions
    records: str


@dataclass(frozen=True)
class Cell:
    """One setting of job ``job`` (an index) on stream order ``repeat``."""

    job: int
    setting: Setting
    repeat: int

    @property
    def name(self) -> str:
        return f"{self.setting.key} rep{self.repeat}"


def cells(jobs: list[Job]) -> list[Cell]:
    """Every cell of every job, in the order the sequential run meets them."""
    out = []
    for j, job in enumerate(jobs):
        for r in range(job.options.repeats):
            out += [Cell(j, s, r) for s in job.options.settings if r == 0 or s.stream]
    return out


def run_cell(clip: ClipModel, job: Job, dataset: Dataset, cell: Cell) -> Executed:
    """One cell: the job's options narrowed to the cell's setting, its stream order alone."""
    s = cell.setting
    options = replace(
        job.options,
        methods=(s.method,),
        keep_rates=(s.keep_rate,) if s.keep_rate is not None else job.options.keep_rates,
    )
    return execute(
        clip,
        dataset,
        options,
        num_workers=0,
        records_dir=job.records,
        progress=False,
        echo=lambda line: print(f"[{job.key} {cell.name}] {line}", file=sys.stderr),
        only_repeats=[cell.repeat],
    )


def assemble(
    jobs: list[Job], datasets: list[Dataset], done: dict[Cell, Executed], facts: ModelFacts
) -> list[dict]:
    """Each job's result from its cells' runs, put back in the sequential run's order."""
    results = []
    for j, dataset in enumerate(datasets):
        mine = [c for c in cells(jobs) if c.job == j]
        runs: list[Run] = []
        for c in sorted(mine, key=lambda c: c.repeat):  # stable: settings in job order
            runs += done[c].runs
        first = done[mine[0]]
        used = first.used | {"num_workers": 0}
        wall = sum(done[c].wall for c in mine)
        results.append(summarise(facts, dataset, runs, first.geom, used, wall))
    return results


def run_sequential(
    clip: ClipModel, jobs: list[Job], datasets: list[Dataset], echo: Callable[[str], None]
) -> list[dict]:
    """The grid cell by cell in this process (what ``--ray`` distributes)."""
    done = {}
    for c in cells(jobs):
        echo(f"{jobs[c.job].key}: {c.name}")
        done[c] = run_cell(clip, jobs[c.job], datasets[c.job], c)
    return assemble(jobs, datasets, done, ModelFacts.of(clip))


class _Worker:
    """A Ray actor: one model, loaded once, evaluating cells handed to it."""

    def __init__(self, model: ModelSpec, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.clip = model.load()
        self.datasets: dict[int, Dataset] = {}

    def pid(self) -> int:
        return os.getpid()

    def run(self, jobs: list[Job], cell: Cell) -> tuple[Cell, Executed, ModelFacts]:
        if cell.job not in self.datasets:
            self.datasets[cell.job] = jobs[cell.job].data.load()
        done = run_cell(self.clip, jobs[cell.job], self.datasets[cell.job], cell)
        return cell, done, ModelFacts.of(self.clip)


@dataclass(frozen=True)
class RaySpec:
    """Where and how wide the grid runs. address: None starts a local Ray (``ray.init()``),
    else a running cluster's address (``auto`` or ``ray://host:10001``); workers: actors (None:
    one per GPU when the model runs on CUDA, else one per CPU); retries: restarts of a dead
    worker (each resumes its cell from the records)."""

    address: str | None = None
    workers: int | None = None
    num_cpus: int | None = None  # a local Ray's CPUs (None: all)
    retries: int = 3


def _ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray phones home unless told not to
    try:
        import ray
    except ImportError as exc:
        raise EvalError(f"--ray needs the ray package ({exc}); pip install ray") from None
    return ray


def start_ray(spec: RaySpec) -> Any:
    """ray.init() for ``spec`` (local by default); returns the ray module."""
    ray = _ray()
    if not ray.is_initialized():
        if spec.address is None:
            ray.init(
                num_cpus=spec.num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            ray.init(address=spec.address, log_to_driver=False)
    return ray


def start_workers(ray: Any, model: ModelSpec, spec: RaySpec) -> list[Any]:
    """The actors, each with one model; a GPU each when the model runs on CUDA."""
    resources = ray.cluster_resources()
    gpu = model.device.startswith("cuda")
    if gpu and not resources.get("GPU"):
        raise EvalError(f"--device {model.device}: the Ray cluster has no GPUs")
    n = spec.workers or int(resources.get("GPU" if gpu else "CPU", 1))
    cpus = 1 if gpu else max(1, int(resources.get("CPU", 1)) // n)
    actor = ray.remote(
        num_cpus=cpus,
        num_gpus=1 if gpu else 0,
        max_restarts=spec.retries,
        max_task_retries=spec.retries,
    )(_Worker)
    return [
        actor.remote(replace(model, device="cuda" if gpu else model.device), cpus) for _ in range(n)
    ]


def run_on_ray(
    model: ModelSpec,
    jobs: list[Job],
    datasets: list[Dataset],
    spec: RaySpec,
    echo: Callable[[str], None],
    on_workers: Callable[[list[Any]], None] | None = None,
) -> list[dict]:
    """The grid's cells on Ray workers; the same results as :func:`run_sequential`."""
    ray = start_ray(spec)
    workers = start_workers(ray, model, spec)
    if on_workers is not None:
        on_workers(workers)
    todo = cells(jobs)
    echo(f"ray: {len(todo)} cell(s) on {len(workers)} worker(s)")
    done: dict[Cell, Executed] = {}
    facts: list[ModelFacts] = []
    t0 = time.perf_counter()
    try:
        for cell, executed, fact in _pool(ray, workers, jobs, todo):
            done[cell] = executed
            facts.append(fact)
            echo(
                f"done {len(done)}/{len(todo)}: {jobs[cell.job].key} {cell.name} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    finally:
        for w in workers:  # free their CPUs / GPUs (and models) for whatever runs next
            ray.kill(w)
    return assemble(jobs, datasets, done, facts[0])


def _pool(ray: Any, workers: list[Any], jobs: list[Job], todo: list[Cell]) -> Iterable[tuple]:
    """Hand cells to free workers, cell i < len(workers) to worker i first; yields (cell,
    Executed, ModelFacts) as they finish."""
    jobs_ref = ray.put(jobs)
    queue = list(reversed(todo))
    running: dict[Any, Any] = {}  # object ref -> worker
    for w in workers:
        if queue:
            running[w.run.remote(jobs_ref, queue.pop())] = w
    while running:
        (ref,), _ = ray.wait(list(running), num_returns=1)
        w = running.pop(ref)
        try:
            done = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # a user's mistake stays one line
            if isinstance(exc.cause, UserError):
                raise exc.cause from None
            raise
        yield done
        if queue:
            running[w.run.remote(jobs_ref, queue.pop())] = w


__all__ = [
    "Cell",
    "DataSpec",
    "Job",
    "ModelSpec",
    "RaySpec",
    "assemble",
    "cells",
    "run_cell",
    "run_on_ray",
    "run_sequential",
    "start_ray",
]
