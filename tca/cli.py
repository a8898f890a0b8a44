"""Command line: ``python -m tca {predict,flops,eval,bench} ...``.

All argument parsing lives here; the sub-commands call library code (``tca.pipeline``,
``tca.flops``, ``tca.eval``, ``tca.bench``), which never imports this module. Any
:class:`tca.errors.UserError` is printed as one ``error: ...`` line with exit status 2; every
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from .config import (
    ADAPTIVE_METHODS,
    DEFAULT_LAYERS_TEXT,
    METHODS,
    SCORES,
    CondenseConfig,
    parse_layers,
    split_list,
)
from .errors import CliError, UserError
from .flops import CONVENTION, Geometry, macs_for, saved_percent
from .images import load_image
from .models import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    PRECISIONS,
    TEMPLATES,
    ClipModel,
    load_model,
    parse_labels,
    validate_labels,
)
from .prompts import PRESET_TEMPLATES, templates_for
from .reservoir import PRESETS


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"open_clip model name (default {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--pretrained",
        default=DEFAULT_PRETRAINED,
        help="open_clip pretrained tag, or 'none' for random weights (default openai)",
    )
    p.add_argument(
        "--checkpoint",
        default=os.environ.get("TCA_CHECKPOINT") or None,
        help="local .safetensors / state-dict file (default: $TCA_CHECKPOINT)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random initialisation")
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device to run on, e.g. cpu, cuda, cuda:1 (default cpu)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="fp32, or open_clip's mixed fp16 / bf16 (half-precision weights, "
        "LayerNorms, distances and logits in float32; default fp32)",
    )


def add_condense_args(p: argparse.ArgumentParser, method_default: str = "tca") -> None:
    p.add_argument("--method", default=method_default, choices=METHODS)
    p.add_argument("--keep-rate", type=float, default=0.9, help="the paper's keep rate R in (0, 1]")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="TCA only: the released code's raw rate d (overrides --keep-rate)",
    )
    p.add_argument(
        "--layers", default=DEFAULT_LAYERS_TEXT, help="condensing block indices, 0-based"
    )
    p.add_argument("--merge-centers", type=int, default=2, help="TCA coreset centres K")
    p.add_argument("--score", default="mean", choices=SCORES)
    p.add_argument(
        "--center-seed",
        type=int,
        default=None,
        help="TCA only: draw each image's first coreset centre at random with this "
        "seed, as the released code does (default: the most-attended tier-2 token)",
    )


def config_from_args(args: argparse.Namespace) -> CondenseConfig:
    return CondenseConfig(
        method=args.method,
        keep_rate=args.keep_rate,
        rate=args.rate,
        layers=parse_layers(args.layers),
        merge_centers=args.merge_centers,
        score=args.score,
        center_seed=getattr(args, "center_seed", None),
    )


def load_from_args(args: argparse.Namespace) -> ClipModel:
    return load_model(
        args.model,
        args.pretrained,
        args.checkpoint,
        device=_device(args.device),
        seed=args.seed,
        precision=args.precision,
    )


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise CliError(
            f"--device {text!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {text}: CUDA is not available on this machine")
    return str(device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tca", description="Training-free token condensation for CLIP."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="baseline vs condensed zero-shot prediction for one image")
    p.add_argument("image")
    p.add_argument("--labels", required=True, help='candidate labels, e.g. "cat,dog,car"')
    add_model_args(p)
    add_condense_args(p)
    p.add_argument(
        "--templates",
        default=None,
        choices=tuple(TEMPLATES),
        metavar="NAME",
        help="prompt templates, one of: "
        + ", ".join(TEMPLATES)
        + " (default: the preset's, else 'single')",
    )
    p.add_argument(
        "--preset",
        default=None,
        choices=tuple(PRESET_TEMPLATES),
        metavar="NAME",
        help="dataset preset: implies its prompt templates (the paper's per-dataset "
        "prompts) unless --templates is given",
    )
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("flops", help="analytic GMACs table, without running the model")
    p.add_argument("--model", default=DEFAULT_MODEL)
    add_condense_args(p)
    p.add_argument("--anchors", action="store_true", help="count TCA's domain anchor token")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_flops)

    _add_eval_parser(sub)
    _add_bench_parser(sub)
    return parser


def cmd_predict(args: argparse.Namespace) -> int:
    from .pipeline import classify

    config = config_from_args(args)
    image = load_image(args.image)  # fail fast, before the model loads
    validate_labels(parse_labels(args.labels))
    macs_for(Geometry.from_name(args.model), config)  # layers / K against this architecture
    clip = load_from_args(args)
    templates = templates_for(args.preset, args.templates)
    result = classify(clip, image, args.labels, config, templates=templates, trace=True)
    if args.json:
        d = result.to_dict(include_trace=False)
        d["templates"] = templates
        d["gmacs"]["saved_percent"] = round(d["gmacs"]["saved_percent"], 3)
        print(json.dumps(d))
        return 0
    k = max(1, args.top_k)
    if clip.is_random:
        print("WARNING: random weights (--pretrained none): predictions are meaningless.")
    print(f"model: {result.model}")
    print(f"condensation: {config.describe()}")
    print(f"prompt templates: {templates} ({len(TEMPLATES[templates])})")
    print(f"\n{'label':<28}{'baseline':>10}{'condensed':>11}{'shift':>9}")
    for label, _ in result.condensed.top(k):
        i = result.labels.index(label)
        print(
            f"{label[:27]:<28}{result.baseline.probs[i]:>10.4f}{result.condensed.probs[i]:>11.4f}"
            f"{result.shift[label]:>+9.4f}"
        )
    print(f"\ntokens per layer: {result.tokens_per_layer}")
    print(
        f"GMACs baseline {result.flops_baseline.gmacs:.3f}  condensed "
        f"{result.flops_condensed.gmacs:.3f}  saved {result.saved_percent:.1f}%  [{CONVENTION}]"
    )
    t = result.timings_ms
    print(f"time: baseline {t.get('baseline_ms', 0):.0f} ms, condensed {t['condensed_ms']:.0f} ms")
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    geom = Geometry.from_name(args.model)
    base = macs_for(geom, CondenseConfig(method="none"))
    cond = macs_for(geom, config, anchors=args.anchors)
    if args.json:
        print(
            json.dumps(
                {
                    "model": args.model,
                    "convention": CONVENTION,
                    "gmacs": {
                        "baseline": base.gmacs,
                        "condensed": cond.gmacs,
                        "saved_percent": saved_percent(base, cond),
                        "overhead": cond.overhead / 1e9,
                    },
                    "tokens_per_layer": [l.n_mlp for l in cond.layers],
                    "adaptive": config.method in ADAPTIVE_METHODS,
                    "layers": [
                        {
                            "layer": l.layer,
                            "tokens_in": l.n_attention,
                            "tokens_out": l.n_mlp,
                            "gmacs": l.total / 1e9,
                        }
                        for l in cond.layers
                    ],
                }
            )
        )
        return 0
    print(f"{args.model}: {config.describe()}   [{CONVENTION}]")
    print(f"{'layer':>5}{'tokens in':>11}{'tokens out':>12}{'GMACs base':>12}{'GMACs cond':>12}")
    for b, c in zip(base.layers, cond.layers):
        print(
            f"{c.layer:>5}{c.n_attention:>11}{c.n_mlp:>12}{b.total / 1e9:>12.3f}{c.total / 1e9:>12.3f}"
        )
    print(
        f"total (patch embed + blocks + head + overhead): baseline {base.gmacs:.3f}, "
        f"condensed {cond.gmacs:.3f} GMACs, saved {saved_percent(base, cond):.1f}%"
    )
    if config.method in ADAPTIVE_METHODS:
        print(
            f"{config.method}: token counts vary per image (duplicate samples collapse); these "
            f"are its budget, an upper bound. predict and eval report each image's own."
        )
    return 0


# ------------------------------------------------------------------------------------ eval


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


def _add_eval_parser(sub) -> None:
    from .eval import DEFAULT_KEEP_RATES, DEFAULT_METHODS, default_workers

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
    from . import eval as ev

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


# ----------------------------------------------------------------------------------- bench


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


def _add_bench_parser(sub) -> None:
    from .bench import (
        BENCH_METHODS,
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
        "--statistic",
        choices=tuple(STATISTICS),
        default="median",
        help="per-row summary of the repeats (default median; min = least disturbed)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

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
    )
    result["random_weights"] = clip.is_random
    print(json.dumps(result) if args.json else bench.format_table(result))
    return 0


# ------------------------------------------------------------------------------- the command


def register_model_configs() -> None:
    """Extra open_clip model configs (JSON files) from $TCA_MODEL_CONFIGS, a directory."""
    folder = os.environ.get("TCA_MODEL_CONFIGS")
    if folder:
        if not os.path.isdir(folder):
            raise CliError(f"TCA_MODEL_CONFIGS={folder!r} is not a directory")
        import open_clip

        open_clip.add_model_config(folder)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        register_model_configs()
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = [
    "main",
    "build_parser",
    "add_model_args",
    "add_condense_args",
    "config_from_args",
    "load_from_args",
    "CliError",
    "cmd_predict",
    "cmd_flops",
    "cmd_eval",
    "cmd_bench",
]
