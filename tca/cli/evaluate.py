"""``eval``: accuracy and GMACs of the methods over a folder or a named data set
(``tca.eval`` does the work).
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
    from ..eval import DEFAULT_KEEP_RATES, DEFAULT_METHODS, default_workers

    p = sub.add_parser(
        "eval",
        help="accuracy / GMACs / speed of CLIP vs TCA, EViT, ToMe over a labelled folder",
        description="Evaluate CLIP zero-shot classification with and without token condensation "
        "over a labelled image folder (ImageFolder layout: DATA_DIR/<label>/<image>, "
        "'_' in folder names becomes a space) or a CSV/JSON manifest of path,label. "
        "tca runs as a stream (fresh reservoir, anchors + logits correction); the "
        "baselines get no correction. Rerun the same command to resume.",
    )
    p.add_argument("data", help="ImageFolder directory, or a .csv / .json manifest of path,label")
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
        default="default",
        choices=tuple(PRESETS),
        metavar="NAME",
        help="TCA reservoir hyperparameters (M, sigma, lambda, beta), one of: "
        f"{', '.join(PRESETS)} (default = ImageNet's)",
    )
    p.add_argument(
        "--templates",
        default=None,
        choices=tuple(TEMPLATES),
        metavar="NAME",
        help="prompt templates, one of: " + ", ".join(TEMPLATES) + " (default: the "
        "preset's dataset templates, 'single' for the default preset)",
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
    p.add_argument("--csv", default=None, help="write one row per setting as CSV")
    p.add_argument("--plot", default=None, help="write accuracy vs GMACs as a PNG")
    p.add_argument(
        "--records",
        default=None,
        help="folder of per-image JSONL records used to resume (default: OUT with "
        ".records instead of .json, else ./results.records)",
    )
    p.add_argument("--fresh", action="store_true", help="ignore and overwrite existing records")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from .. import eval as ev

    dataset = ev.load_dataset(args.data)  # fail on a bad folder or option before the model loads
    options = ev.EvalOptions(
        methods=tuple(split_list(args.methods)),
        keep_rates=tuple(_eval_numbers(args.keep_rates)),
        layers=parse_layers(args.layers),
        merge_centers=args.merge_centers,
        score=args.score,
        batch_size=args.batch_size,
        templates=args.templates,
        preset=args.preset,
        shuffle_seed=args.shuffle_seed,
        repeats=args.repeats,
        limit=args.limit,
    )
    if args.records:
        records = Path(args.records)
    elif args.out:
        records = Path(args.out).with_suffix(".records")
    else:
        records = Path("results.records")
    clip = load_from_args(args)
    if clip.is_random:
        print(ev.RANDOM_NOTE, file=sys.stderr)
    print(
        f"evaluating {len(options.settings)} setting(s) on {dataset.source}; per-image records "
        f"in {records}/ (rerun the same command to resume)",
        file=sys.stderr,
    )
    result = ev.run(
        clip,
        dataset,
        options,
        num_workers=args.workers,
        records_dir=records,
        fresh=args.fresh,
        progress=not args.no_progress,
    )
    print(ev.format_table(result))
    writers: tuple[tuple[str | None, Callable[[dict, str], None]], ...] = (
        (args.out, ev.write_json),
        (args.csv, ev.write_csv),
        (args.plot, ev.plot),
    )
    for path, writer in writers:
        if path:
            writer(result, path)
            print(f"wrote {path}")
    return 0


__all__ = [
    "add_eval_parser",
    "cmd_eval",
]
