"""``bench``: timing of the methods on one machine (``tca.bench`` does the work)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

import torch

from ..config import (
    split_list,
)
from ..errors import CliError
from .common import add_model_args, load_from_args


def _list_of(convert: Callable[[str], float], what: str) -> Callable[[str], list]:
    """An argparse type: a comma-separated list of ``what``, each read by ``convert``."""

    def parse(text: str) -> list:
        try:
            values = [convert(p) for p in split_list(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None
        if not values or (convert is int and any(v < 1 for v in values)):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        return values

    return parse


def _names(text: str) -> list[str]:
    return [p.lower() for p in split_list(text)]


def add_bench_parser(sub) -> None:
    from ..bench import (
        BENCH_METHODS,
        CLOCKS,
        DEFAULT_BATCH_SIZES,
        DEFAULT_KEEP_RATES,
        DEFAULT_METHODS,
        STATISTICS,
    )

    p = sub.add_parser(
        "bench",
        help="interleaved speed benchmark: condensed vs unpatched open_clip",
        description="Times unpatched open_clip encode_image and every condensation setting "
        "interleaved in one process (round-robin per repeat) and prints medians, the "
        "speed-up over unpatched and the GMACs ratio (the FLOP-ideal). Random weights "
        "by default: timing does not depend on them.",
    )
    add_model_args(p)
    p.set_defaults(pretrained="none")
    for action in p._actions:  # same option as everywhere, another default here
        if action.dest == "pretrained":
            action.help = "open_clip pretrained tag (default none: random weights)"
    p.add_argument(
        "--batch-sizes",
        type=_list_of(int, "positive integers"),
        default=list(DEFAULT_BATCH_SIZES),
        help=f"comma-separated (default {','.join(map(str, DEFAULT_BATCH_SIZES))})",
    )
    p.add_argument(
        "--keep-rates",
        type=_list_of(float, "numbers"),
        default=list(DEFAULT_KEEP_RATES),
        help=f"comma-separated keep rates R (default {','.join(map(str, DEFAULT_KEEP_RATES))})",
    )
    p.add_argument(
        "--methods",
        type=_names,
        default=list(DEFAULT_METHODS),
        help=f"comma-separated, from {', '.join(BENCH_METHODS)} (default "
        f"{', '.join(DEFAULT_METHODS)})",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median; default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--trace", action="store_true", help="also time tca with tracing on")
    p.add_argument(
        "--no-limits",
        dest="limits",
        action="store_false",
        help="skip the zero-overhead limit rows (the tower's own blocks on each setting's "
        "token counts, tokens sliced, no scoring; timed by default)",
    )
    p.add_argument(
        "--statistic",
        choices=tuple(STATISTICS),
        default="median",
        help="per-row summary of the repeats (default median; min = least disturbed)",
    )
    p.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall (default): elapsed time; cpu: CPU time of the timing thread, which leaves "
        "out waiting for a core on a loaded machine (use with --threads 1, on the CPU)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from .. import bench

    if args.threads is not None and args.threads < 1:
        raise CliError(f"--threads must be >= 1, got {args.threads}")
    rows = bench.check_options(
        args.batch_sizes,
        args.methods,
        args.keep_rates,
        args.repeats,
        args.warmup,
        args.trace,
        args.statistic,
        args.limits,
    )  # before the model loads
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    clip = load_from_args(args)
    say = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    say(
        f"timing {len(rows)} rows x {args.warmup + args.repeats} rounds ({args.warmup} warm-up) ..."
    )
    result = bench.run_bench(
        clip.model,
        args.batch_sizes,
        args.methods,
        args.keep_rates,
        args.repeats,
        args.warmup,
        args.trace,
        seed=args.seed,
        name=clip.weights_description,
        statistic=args.statistic,
        progress=say,
        limits=args.limits,
        clock=args.clock,
    )
    result["random_weights"] = clip.is_random
    print(json.dumps(result) if args.json else bench.format_table(result))
    return 0


__all__ = [
    "add_bench_parser",
    "cmd_bench",
]
