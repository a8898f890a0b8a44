"""Command line: ``python -m tca {predict,flops,eval,bench} ...``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from .config import METHODS, ConfigError, CondenseConfig, parse_layers
from .flops import CONVENTION, Geometry, macs_for, saved_percent
from .images import ImageError, load_image
from .models import (DEFAULT_MODEL, DEFAULT_PRETRAINED, PRECISIONS, TEMPLATES, LabelError,
                     WeightsUnavailableError, load_model, parse_labels, validate_labels)
from .errors import UserError
from .patch import UnsupportedModelError


class CliError(UserError):
    """A user error: printed as one line, exit status 2."""


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"open_clip model name (default {DEFAULT_MODEL})")
    p.add_argument("--pretrained", default=DEFAULT_PRETRAINED,
                   help="open_clip pretrained tag, or 'none' for random weights (default openai)")
    p.add_argument("--checkpoint", default=os.environ.get("TCA_CHECKPOINT") or None,
                   help="local .safetensors / state-dict file (default: $TCA_CHECKPOINT)")
    p.add_argument("--seed", type=int, default=0, help="seed for random initialisation")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32, or open_clip's mixed fp16 / bf16 (half-precision weights, "
                        "LayerNorms, distances and logits in float32; default fp32)")


def add_condense_args(p: argparse.ArgumentParser, method_default: str = "tca") -> None:
    p.add_argument("--method", default=method_default, choices=METHODS)
    p.add_argument("--keep-rate", type=float, default=0.9, help="the paper's keep rate R in (0, 1]")
    p.add_argument("--rate", type=float, default=None,
                   help="TCA only: the released code's raw rate d (overrides --keep-rate)")
    p.add_argument("--layers", default="3,6,9", help="condensing block indices, 0-based")
    p.add_argument("--merge-centers", type=int, default=2, help="TCA coreset centres K")
    p.add_argument("--score", default="mean", choices=("mean", "rank"))
    p.add_argument("--center-seed", type=int, default=None,
                   help="TCA only: draw each image's first coreset centre at random with this "
                        "seed, as the released code does (default: the most-attended tier-2 token)")


def config_from_args(args: argparse.Namespace) -> CondenseConfig:
    return CondenseConfig(method=args.method, keep_rate=args.keep_rate, rate=args.rate,
                          layers=parse_layers(args.layers), merge_centers=args.merge_centers,
                          score=args.score, center_seed=getattr(args, "center_seed", None))


def load_from_args(args: argparse.Namespace):
    return load_model(args.model, args.pretrained, args.checkpoint, seed=args.seed,
                      precision=args.precision)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tca",
                                     description="Training-free token condensation for CLIP.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="baseline vs condensed zero-shot prediction for one image")
    p.add_argument("image")
    p.add_argument("--labels", required=True, help='candidate labels, e.g. "cat,dog,car"')
    add_model_args(p)
    add_condense_args(p)
    p.add_argument("--templates", default="single", choices=tuple(TEMPLATES))
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("flops", help="analytic GMACs table, without running the model")
    p.add_argument("--model", default=DEFAULT_MODEL)
    add_condense_args(p)
    p.add_argument("--anchors", action="store_true", help="count TCA's domain anchor token")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_flops)

    from . import bench, evaluate  # noqa: WPS433 (sub-commands with heavier imports)
    evaluate.add_parser(sub)
    bench.add_parser(sub)
    return parser


def cmd_predict(args: argparse.Namespace) -> int:
    from .pipeline import classify
    config = config_from_args(args)
    image = load_image(args.image)  # fail fast, before the model loads
    validate_labels(parse_labels(args.labels))
    macs_for(Geometry.from_name(args.model), config)  # layers / K against this architecture
    clip = load_from_args(args)
    result = classify(clip, image, args.labels, config, templates=args.templates, trace=True)
    if args.json:
        d = result.to_dict(include_trace=False)
        d["gmacs"]["saved_percent"] = round(d["gmacs"]["saved_percent"], 3)
        print(json.dumps(d))
        return 0
    k = max(1, args.top_k)
    if clip.is_random:
        print("WARNING: random weights (--pretrained none): predictions are meaningless.")
    print(f"model: {result.model}")
    print(f"condensation: {config.describe()}")
    print(f"\n{'label':<28}{'baseline':>10}{'condensed':>11}{'shift':>9}")
    for label, _ in result.condensed.top(k):
        i = result.labels.index(label)
        print(f"{label[:27]:<28}{result.baseline.probs[i]:>10.4f}{result.condensed.probs[i]:>11.4f}"
              f"{result.shift[label]:>+9.4f}")
    print(f"\ntokens per layer: {result.tokens_per_layer}")
    print(f"GMACs baseline {result.flops_baseline.gmacs:.3f}  condensed "
          f"{result.flops_condensed.gmacs:.3f}  saved {result.saved_percent:.1f}%  [{CONVENTION}]")
    t = result.timings_ms
    print(f"time: baseline {t.get('baseline_ms', 0):.0f} ms, condensed {t['condensed_ms']:.0f} ms")
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    geom = Geometry.from_name(args.model)
    base = macs_for(geom, CondenseConfig(method="none"))
    cond = macs_for(geom, config, anchors=args.anchors)
    if args.json:
        print(json.dumps({
            "model": args.model, "convention": CONVENTION,
            "gmacs": {"baseline": base.gmacs, "condensed": cond.gmacs,
                      "saved_percent": saved_percent(base, cond),
                      "overhead": cond.overhead / 1e9},
            "tokens_per_layer": [l.n_mlp for l in cond.layers],
            "layers": [{"layer": l.layer, "tokens_in": l.n_attention, "tokens_out": l.n_mlp,
                        "gmacs": l.total / 1e9} for l in cond.layers]}))
        return 0
    print(f"{args.model}: {config.describe()}   [{CONVENTION}]")
    print(f"{'layer':>5}{'tokens in':>11}{'tokens out':>12}{'GMACs base':>12}{'GMACs cond':>12}")
    for b, c in zip(base.layers, cond.layers):
        print(f"{c.layer:>5}{c.n_attention:>11}{c.n_mlp:>12}{b.total / 1e9:>12.3f}{c.total / 1e9:>12.3f}")
    print(f"total (patch embed + blocks + head + overhead): baseline {base.gmacs:.3f}, "
          f"condensed {cond.gmacs:.3f} GMACs, saved {saved_percent(base, cond):.1f}%")
    return 0


def register_model_configs() -> None:
    """Extra open_clip model configs (JSON files) from $TCA_MODEL_CONFIGS, a directory."""
    folder = os.environ.get("TCA_MODEL_CONFIGS")
    if folder:
        if not os.path.isdir(folder):
            raise CliError(f"TCA_MODEL_CONFIGS={folder!r} is not a directory")
        import open_clip
        open_clip.add_model_config(folder)


USER_ERRORS = (ConfigError, LabelError, ImageError, WeightsUnavailableError,
               UnsupportedModelError, CliError, ValueError, FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        register_model_configs()
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main", "build_parser", "add_model_args", "add_condense_args", "config_from_args",
           "load_from_args", "CliError"]
