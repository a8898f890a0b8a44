"""The sweep of one image: one method (or several) at a range of keep rates, or every method
matched to a range of costs (equal GMACs, each method's R solved by ``tca.budget``), as one job;
each point's GMACs, top-1 (and whether it is the baseline's), the baseline top-1 label's
probability and the KL divergence from the baseline; a Run's baseline is reused when the sweep
follows a Run of the same inputs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from tca import budget
from tca.config import CondenseConfig
from tca.errors import ConfigError
from tca.flops import Geometry
from tca.methods import METHODS
from tca.pipeline import Prediction, classify_request
from tca.request import Request

from .request import KEEP_RATE_RANGE
from .runs import ALL_METHODS, ExplorerRun, encode_labels, load_for
from .serving import ModelCache

# The keep-rate slider's range, 0.1 to 1.0, in 8 points
SWEEP_RATES = (0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0)
# At equal GMACs: every method matched to these shares of the baseline's cost (TCA and EViT
# get to about a third at R = 0.1; ToMe's family stops near one half)
SWEEP_COST_FRACTIONS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
SWEEP_BY = ("rate", "gmacs")
# condensed passes one sweep may run: every method at every point
SWEEP_MAX_PASSES = len(ALL_METHODS) * len(SWEEP_RATES)


@dataclass
class SweepPoint:
    """One point of a sweep: its keep rate, cost and what it did to the prediction."""

    keep_rate: float
    gmacs: float
    final_tokens: int
    top1: str
    top1_prob: float
    base_label_prob: float  # probability of the baseline's top-1 label
    kl: float  # KL(baseline || condensed), nats
    target: float | None = None  # the GMACs it was matched to (equal-GMACs sweeps)
    top1_kept: bool = True  # the condensed top-1 is the baseline's
    floor: bool = False  # the target is cheaper than the method gets: it ran at its cheapest


@dataclass
class Sweep:
    """A sweep of one image (per method, points in ascending cost). by: ``rate`` (the keep
    rates given) or ``gmacs`` (every method matched to the same costs)."""

    model: str
    labels: list[str]
    baseline: Prediction
    gmacs_baseline: float
    points: dict[str, list[SweepPoint]]
    elapsed_ms: float = 0.0
    passes: int = 0  # condensed passes run
    baseline_pass: bool = True  # whether a baseline pass ran (else a Run's was reused)
    by: str = "rate"
    refused: dict[str, str] = field(default_factory=dict)  # method -> why it did not run

    @property
    def base_label(self) -> str:
        return self.baseline.top(1)[0][0]


def kl_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """KL(p || q) in nats for two probability vectors (terms with p = 0 contribute 0)."""
    return float(
        sum(pi * (math.log(pi) - math.log(max(qi, 1e-12))) for pi, qi in zip(p, q) if pi > 0)
    )


def plan_points(
    geom: Geometry,
    config: CondenseConfig,
    methods: Sequence[str],
    by: str,
    rates: Sequence[float],
    fractions: Sequence[float],
) -> tuple[dict[str, list[tuple[float, float | None, bool]]], dict[str, str]]:
    """Per method, the (keep rate, target GMACs or None, below the method's floor) of each
    point, and the methods that refuse the tower. By cost: each share of the baseline's
    analytic GMACs solved for R (``tca.budget``; among the R of one cost the mildest, so 100%
    is R = 1, the baseline itself); several shares that land on one R (a method's floor) run
    once."""
    if by == "rate":
        return {m: [(float(r), None, False) for r in rates] for m in methods}, {}
    base = budget.gmacs_at(geom, replace(config, method="none"))
    out: dict[str, list[tuple[float, float | None, bool]]] = {}
    refused: dict[str, str] = {}
    for m in methods:
        pts: list[tuple[float, float | None, bool]] = []
        for f in sorted(fractions):
            got = budget.solve(
                geom, replace(config, method=m), f * base, lo=KEEP_RATE_RANGE[0], prefer=1.0
            )
            if got.keep_rate is None:
                refused[m] = got.refusal or "no keep rate fits"
                break
            pts.append((got.keep_rate, got.target, got.floor))
        if m not in refused:
            out[m] = pts
    return out, refused


def sweep(
    cache: ModelCache,
    request: Request,
    methods: Sequence[str] | None = None,
    rates: Sequence[float] = SWEEP_RATES,
    reuse: ExplorerRun | None = None,
    progress: Callable[[float, str], None] | None = None,
    by: str = "rate",
    fractions: Sequence[float] = SWEEP_COST_FRACTIONS,
) -> Sweep:
    """Run the request's method (or each of ``methods``) at every keep rate in ``rates`` on its
    image (``by="rate"``), or at the keep rate whose GMACs match each share ``fractions`` of
    the baseline's (``by="gmacs"``), as one job: the text encoded once, one baseline pass,
    then one untraced condensed pass per distinct keep rate; a rate that removes nothing
    (R = 1) is the baseline itself and runs no pass. At most :data:`SWEEP_MAX_PASSES` condensed
    passes. A method that refuses the tower (ATS without CLS) is listed in ``refused``.

    reuse: the Run on screen; its baseline is taken instead of a new baseline pass when it was
    made from the same image, labels, model and prompts (:meth:`Request.same_inputs`).
    """
    say = progress or (lambda frac, desc: None)
    methods = tuple(methods) if methods else (request.config.method,)
    if any(METHODS[m].step is None for m in methods):
        raise ConfigError(
            'the keep-rate sweep needs a condensing method (TCA, EViT, ...), not "none"'
        )
    if by not in SWEEP_BY:
        raise ConfigError(f"sweep: match methods by one of {', '.join(SWEEP_BY)}, got {by!r}")
    rates = sorted({round(float(r), 6) for r in rates})
    if not rates or not fractions:
        raise ConfigError("the sweep needs at least one keep rate")
    n_points = len(rates) if by == "rate" else len(fractions)
    if n_points * len(methods) > SWEEP_MAX_PASSES:
        raise ConfigError(
            f"a sweep runs at most {SWEEP_MAX_PASSES} passes, asked for {n_points * len(methods)}"
        )
    loaded = load_for(cache, request, say)
    clip = loaded.clip
    plans, refused = plan_points(
        Geometry.from_model(clip.model), request.config, methods, by, rates, fractions
    )
    label_list = list(request.labels)
    encode_labels(clip, request, say)  # beside the image lane, like a Run
    t0 = time.perf_counter()
    base = reuse.result if reuse is not None and request.same_inputs(reuse.request) else None
    reused = base is not None
    points: dict[str, list[SweepPoint]] = {}
    total = sum(len(p) for p in plans.values())
    done, passes = 0, 0
    for m, todo in plans.items():
        points[m] = []
        ran: dict[float, tuple[list[float], float, int]] = {}  # keep rate -> probs, GMACs, tokens
        for rate, target, floor in todo:
            cfg = replace(request.config, method=m, keep_rate=float(rate))
            say(
                0.1 + 0.88 * done / total,
                f"{METHODS[m].title} at R={cfg.keep_rate:g} ({done + 1} of {total})",
            )
            done += 1
            if rate in ran:
                probs, gmacs, final = ran[rate]
            elif cfg.is_identity and base is not None:
                probs, gmacs, final = (
                    base.baseline.probs,
                    base.flops_baseline.gmacs,
                    base.baseline_tokens[-1],
                )
            else:
                try:
                    with cache.image_lane:  # one pass at a time, so other Runs interleave
                        r = classify_request(
                            clip,
                            request,
                            cfg,
                            trace=False,
                            baseline=base.reference if base is not None else None,
                        )
                except ConfigError as exc:  # the method refuses this tower or setting
                    refused[m] = str(exc)
                    break
                passes += 1
                if base is None:
                    base = r
                probs, gmacs, final = (
                    r.condensed.probs,
                    r.flops_condensed.gmacs,
                    r.tokens_per_layer[-1],
                )
            ran[rate] = (probs, gmacs, final)
            assert base is not None
            top = max(range(len(probs)), key=probs.__getitem__)
            bi = max(range(len(probs)), key=base.baseline.probs.__getitem__)
            points[m].append(
                SweepPoint(
                    cfg.keep_rate,
                    gmacs,
                    final,
                    label_list[top],
                    probs[top],
                    probs[bi],
                    kl_divergence(base.baseline.probs, probs),
                    target,
                    top == bi,
                    floor,
                )
            )
        if m in refused:
            del points[m]
    if base is None:
        raise ConfigError(f"no method can run with these settings: {next(iter(refused.values()))}")
    return Sweep(
        clip.name,
        label_list,
        base.baseline,
        base.flops_baseline.gmacs,
        points,
        (time.perf_counter() - t0) * 1e3,
        passes=passes,
        baseline_pass=not reused,
        by=by,
        refused=refused,
    )


__all__ = [
    "SWEEP_BY",
    "SWEEP_COST_FRACTIONS",
    "SWEEP_MAX_PASSES",
    "SWEEP_RATES",
    "Sweep",
    "SweepPoint",
    "kl_divergence",
    "plan_points",
    "sweep",
]
