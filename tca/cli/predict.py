"""``predict`` (baseline vs condensed zero-shot prediction of one image) and ``flops`` (the
analytic GMACs table, without running the model).
"""

from __future__ import annotations

import argparse
import json

from .. import budget
from ..budget import Match
from ..config import (
    CondenseConfig,
)
from ..errors import ConfigError
from ..flops import CONVENTION, Geometry, macs_for, saved_percent
from ..methods import method
from ..models import DEFAULT_MODEL
from ..prompts import PRESET_TEMPLATES, TEMPLATES, templates_for
from ..request import Request
from .common import add_condense_args, add_model_args, config_from_args, load_from_args


def add_predict_parser(sub) -> None:
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


def add_flops_parser(sub) -> None:
    p = sub.add_parser("flops", help="analytic GMACs table, without running the model")
    p.add_argument("--model", default=DEFAULT_MODEL)
    add_condense_args(p)
    p.add_argument("--anchors", action="store_true", help="count TCA's domain anchor token")
    p.add_argument(
        "--match-gmacs",
        default=None,
        metavar="TARGET",
        help="equal cost: replace --keep-rate by the R (0.001 steps) at which --method's GMACs "
        "are nearest TARGET: a number, or 'tca' for TCA's GMACs at --keep-rate",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_flops)


def matched(args: argparse.Namespace, geom: Geometry, config: CondenseConfig) -> Match | None:
    """--match-gmacs: the method's keep rate for the target (None without the option)."""
    if args.match_gmacs is None:
        return None
    if args.match_gmacs == "tca":
        target = budget.gmacs_at(geom, config.with_(method="tca", rate=None), args.anchors)
    else:
        try:
            target = float(args.match_gmacs)
        except ValueError:
            raise ConfigError(
                f"--match-gmacs must be a number of GMACs or 'tca', got {args.match_gmacs!r}"
            ) from None
    m = budget.solve(geom, config.with_(rate=None), target, anchors=args.anchors)
    if m.keep_rate is None:
        raise ConfigError(m.refusal or f"{config.method} runs at no keep rate on {args.model}")
    return m


def cmd_predict(args: argparse.Namespace) -> int:
    from ..pipeline import classify_request

    templates = templates_for(args.preset, args.templates)
    # the one request, checked (image decoded, labels parsed) before the model loads
    request = Request.build(args.image, args.labels, args.model, templates, config_from_args(args))
    config = request.config
    macs_for(Geometry.from_name(args.model), config)  # layers / K against this architecture
    clip = load_from_args(args)
    request.check_tokens(clip.tokenizer, clip.context_length)
    result = classify_request(clip, request, trace=True)
    if args.json:
        d = result.to_dict(include_trace=False)
        d["templates"] = templates
        d["gmacs"]["saved_percent"] = round(d["gmacs"]["saved_percent"], 3)
        print(json.dumps(d))
        return 0
    k = max(1, args.top_k)
    if clip.is_random:
        print("WARNING: random weights (--pretrained none): predictions are meaningless.")
    print(f"model: {result.model} ({result.precision})")
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
    match = matched(args, geom, config)
    if match is not None:
        config = config.with_(keep_rate=match.keep_rate, rate=None)
    base = macs_for(geom, CondenseConfig(method="none"))
    cond = macs_for(geom, config, anchors=args.anchors)
    if args.json:
        print(
            json.dumps(
                {
                    "model": args.model,
                    "keep_rate": config.keep_rate,
                    "match": None
                    if match is None
                    else {
                        "target_gmacs": match.target,
                        "keep_rate": match.keep_rate,
                        "gmacs": match.gmacs,
                        "error_percent": 100 * match.relative_error,
                        "lowest_gmacs": match.lowest,
                        "reachable": not match.floor and not match.ceiling,
                    },
                    "convention": CONVENTION,
                    "gmacs": {
                        "baseline": base.gmacs,
                        "condensed": cond.gmacs,
                        "saved_percent": saved_percent(base, cond),
                        "overhead": cond.overhead / 1e9,
                    },
                    "tokens_per_layer": [l.n_mlp for l in cond.layers],
                    "adaptive": method(config.method).adaptive,
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
    if match is not None:
        reach = (
            f"; it cannot go below {match.lowest:.3f}"
            if match.floor
            else "; it cannot cost more"
            if match.ceiling
            else ""
        )
        print(
            f"equal GMACs: {config.method} at R={match.keep_rate:g} costs {match.gmacs:.3f} for "
            f"a target of {match.target:.3f} ({100 * match.relative_error:+.2f}%){reach}"
        )
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
    if method(config.method).adaptive:
        print(
            f"{config.method}: token counts vary per image (duplicate samples collapse); these "
            f"are its budget, an upper bound. predict and eval report each image's own."
        )
    return 0


__all__ = [
    "add_flops_parser",
    "add_predict_parser",
    "cmd_flops",
    "cmd_predict",
]
