"""``eval``: accuracy and GMACs of the methods over a folder, a clip_benchmark data set or one of
the paper's suites, in this process or on Ray (``tca.eval`` does the work).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from ..config import (
    DEFAULT_LAYERS_TEXT,
    METHODS,
    SCORES,
    parse_layers,
    split_list,
)
from ..errors import CliError
from ..prompts import TEMPLATES
from ..reservoir import PRESETS
from .common import add_model_args, load_from_args


def _eval_numbers(values: Sequence[str]) -> list[float]:
    out = []
    for part in (p for v in values for p in split_list(str(v))):
        try:
            out.append(float(part))
        except ValueError:
            raise CliError(f"keep rates must be numbers like 0.9, got {part!r}") from None
    return out


def _seed(text: str) -> int | None:
    if text.strip().lower() in ("none", "off", "no"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def add_eval_parser(sub) -> None:
    from ..eval import BENCHMARK_TEMPLATES, DEFAULT_KEEP_RATES, DEFAULT_METHODS, default_workers
    from ..eval.suites import SUITES

    p = sub.add_parser(
        "eval",
        help="accuracy / GMACs / speed of CLIP vs the condensation methods over a labelled folder, "
        "a clip_benchmark data set or a suite of the paper's data sets",
        description="Evaluate CLIP zero-shot classification with and without token condensation "
        "over a labelled image folder (ImageFolder layout: DATA_DIR/<label>/<image>, "
        "'_' in folder names becomes a space) or a CSV/JSON manifest of path,label. "
        "tca runs as a stream (fresh reservoir, anchors + logits correction); the "
        "baselines get no correction. Rerun the same command to resume.",
    )
    p.add_argument(
        "data",
        nargs="?",
        default=None,
        help="ImageFolder directory, a .csv / .json manifest of path,label, or with --dataset "
        "the clip_benchmark data set's root",
    )
    p.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="a clip_benchmark data set name (cars, eurosat, imagenet-r, wds/NAME, ...) "
        "stored under DATA, read with its class names and templates; never downloaded",
    )
    p.add_argument("--split", default="test", help="clip_benchmark split (default test)")
    p.add_argument(
        "--suite",
        default=None,
        choices=tuple(SUITES),
        help="the paper's data sets, with its numbers beside ours: " + ", ".join(SUITES),
    )
    p.add_argument(
        "--datasets",
        default=None,
        help="with --suite: only these of its data sets (comma-separated keys)",
    )
    p.add_argument(
        "--dataset-root",
        default=None,
        metavar="TEMPLATE",
        help="with --suite: where each data set lives; {dataset} is its clip_benchmark name "
        "(default DATA/{dataset})",
    )
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, from {', '.join(METHODS)} (default: all)",
    )
    p.add_argument(
        "--keep-rate",
        "--keep-rates",
        dest="keep_rates",
        nargs="+",
        default=[",".join(f"{r:g}" for r in DEFAULT_KEEP_RATES)],
        metavar="R",
        help="keep rates R in (0, 1], space- or comma-separated (default "
        f"{' '.join(f'{r:g}' for r in DEFAULT_KEEP_RATES)})",
    )
    add_model_args(p)
    p.add_argument(
        "--layers",
        default=DEFAULT_LAYERS_TEXT,
        help=f"condensing block indices (default {DEFAULT_LAYERS_TEXT})",
    )
    p.add_argument("--merge-centers", type=int, default=2, help="TCA coreset centres K (default 2)")
    p.add_argument("--score", default="mean", choices=SCORES)
    p.add_argument(
        "--preset",
        default=None,
        choices=tuple(PRESETS),
        metavar="NAME",
        help="TCA reservoir hyperparameters (M, sigma, lambda, beta), one of: "
        f"{', '.join(PRESETS)} (default: ImageNet's; with --suite each data set's own)",
    )
    p.add_argument(
        "--templates",
        default=None,
        choices=(*TEMPLATES, BENCHMARK_TEMPLATES),
        metavar="NAME",
        help="prompt templates, one of: " + ", ".join(TEMPLATES) + f", or {BENCHMARK_TEMPLATES} "
        "(the data set's own) (default: the preset's dataset templates, as in the paper; "
        "'single' for the default preset)",
    )
    p.add_argument(
        "--shuffle-seed",
        type=_seed,
        default=0,
        help="stream order seed (default 0; 'none' = file order); repeat r uses S + r",
    )
    p.add_argument("--repeats", type=int, default=1, help="stream orders to average (mean ± std)")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="evaluate a random sample of N images (the same N in every repeat)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="images per forward (default 8; tca anchors refresh once per batch)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"DataLoader processes decoding images (default {default_workers()} here)",
    )
    p.add_argument("--out", default=None, help="write the full results as JSON")
    p.add_argument(
        "--csv", default=None, help="write one row per setting (suite: per data set) as CSV"
    )
    p.add_argument(
        "--plot", default=None, help="write accuracy vs GMACs as a PNG (suite: a panel each)"
    )
    p.add_argument("--table", default=None, help="with --suite: write its table as Markdown")
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run every (data set, method, R, stream order) cell as a Ray task, one model per "
        "worker: a local Ray (ray.init()) or a cluster's ADDRESS ('auto', ray://host:10001); "
        "records must be on a file system every worker sees",
    )
    p.add_argument(
        "--ray-workers", type=int, default=None, help="Ray workers (default: one per GPU/CPU)"
    )
    p.add_argument(
        "--records",
        default=None,
        help="folder of per-image JSONL records used to resume (default: OUT with "
        ".records instead of .json, else ./results.records)",
    )
    p.add_argument("--fresh", action="store_true", help="ignore and overwrite existing records")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def _records_dir(args: argparse.Namespace) -> Path:
    from ..eval import check_records_dir

    if args.records:
        records = Path(args.records)
    elif args.out:
        records = Path(args.out).with_suffix(".records")
    else:
        records = Path("results.records")
    return check_records_dir(records)


def _jobs(args: argparse.Namespace, options, records: Path) -> list:
    """The data sets to evaluate, each with its options and records folder (before the model
    loads: a missing folder or bad option fails fast)."""
    from dataclasses import replace

    from ..eval.grid import DataSpec, Job
    from ..eval.suites import dataset_root, suite_datasets

    if args.suite:
        if args.dataset:
            raise CliError("give --suite or --dataset, not both")
        template = args.dataset_root or (str(Path(args.data) / "{dataset}") if args.data else None)
        if template is None:
            raise CliError("--suite needs DATA (a folder holding the data sets) or --dataset-root")
        only = split_list(args.datasets) if args.datasets else None
        return [
            Job(
                e.key,
                DataSpec(str(dataset_root(template, e)), suite_entry=e),
                options if args.preset or args.templates else replace(options, preset=e.preset),
                str(records / e.key),
            )
            for e in suite_datasets(args.suite, only)
        ]
    if args.datasets or args.dataset_root:
        raise CliError("--datasets and --dataset-root go with --suite")
    if args.data is None:
        raise CliError("give DATA (a folder or manifest), --dataset NAME with its root, or --suite")
    key = args.dataset or Path(args.data).name
    return [Job(key, DataSpec(args.data, benchmark=args.dataset), options, str(records))]


def cmd_eval(args: argparse.Namespace) -> int:
    from .. import eval as ev

    options = ev.EvalOptions(
        methods=tuple(split_list(args.methods)),
        keep_rates=tuple(_eval_numbers(args.keep_rates)),
        layers=parse_layers(args.layers),
        merge_centers=args.merge_centers,
        score=args.score,
        batch_size=args.batch_size,
        templates=args.templates,
        preset=args.preset or "default",
        shuffle_seed=args.shuffle_seed,
        repeats=args.repeats,
        limit=args.limit,
    )
    records = _records_dir(args)
    jobs = _jobs(args, options, records)
    # every data set is read (and so checked) before the (slow) model load
    datasets = [job.data.load() for job in jobs]
    if args.ray:
        results = _run_ray(args, jobs, datasets)
    else:
        clip = load_from_args(args)
        if clip.is_random:
            print(ev.RANDOM_NOTE, file=sys.stderr)
        results = []
        for job, dataset in zip(jobs, datasets):
            print(
                f"evaluating {len(job.options.settings)} setting(s) on {dataset.source}; "
                f"per-image records in {job.records}/ (rerun the same command to resume)",
                file=sys.stderr,
            )
            results.append(
                ev.run(
                    clip,
                    dataset,
                    job.options,
                    num_workers=args.workers,
                    records_dir=job.records,
                    fresh=args.fresh,
                    progress=not args.no_progress,
                )
            )
    for result in results:
        print(ev.format_table(result))
    if args.suite:
        return _write_suite(args, jobs, results)
    if args.table:
        raise CliError("--table goes with --suite")
    writers: tuple[tuple[str | None, Callable[[dict, str], None]], ...] = (
        (args.out, ev.write_json),
        (args.csv, ev.write_csv),
        (args.plot, ev.plot),
    )
    for path, writer in writers:
        if path:
            writer(results[0], path)
            print(f"wrote {path}")
    return 0


def _run_ray(args: argparse.Namespace, jobs: list, datasets: list) -> list[dict]:
    import os

    from ..eval.grid import ModelSpec, RaySpec, run_on_ray
    from .common import parse_device

    if args.fresh:
        raise CliError("--fresh is not offered with --ray: delete the records folder instead")
    model = ModelSpec(
        args.model,
        args.pretrained,
        args.checkpoint,
        device=parse_device(args.device) if args.ray == "local" else args.device,
        seed=args.seed,
        precision=args.precision,
        config_dir=os.environ.get("TCA_MODEL_CONFIGS") or None,
    )
    spec = RaySpec(address=None if args.ray == "local" else args.ray, workers=args.ray_workers)
    return run_on_ray(model, jobs, datasets, spec, lambda line: print(line, file=sys.stderr))


def _write_text(text: str, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text + "\n", encoding="utf-8")


def _write_suite(args: argparse.Namespace, jobs: list, results: list[dict]) -> int:
    from .. import eval as ev
    from ..eval.suites import format_suite_table, plot_suite, write_suite_csv

    suite = {
        "suite": args.suite,
        "model": results[0]["model"],
        "random_weights": results[0]["random_weights"],
        "datasets": {job.key: result for job, result in zip(jobs, results)},
    }
    table = format_suite_table(suite)
    print(table)
    writers: tuple[tuple[str | None, Callable[[dict, str], None]], ...] = (
        (args.out, ev.write_json),
        (args.csv, write_suite_csv),
        (args.plot, plot_suite),
        (args.table, lambda _, path: _write_text(table, path)),
    )
    for path, writer in writers:
        if path:
            writer(suite, path)
            print(f"wrote {path}")
    return 0


__all__ = [
    "add_eval_parser",
    "cmd_eval",
]
