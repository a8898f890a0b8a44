"""The keep-rate sweep of one image: one method (or several) at a range of keep rates as one
job, each point's GMACs, top-1, the baseline top-1 label's probability and the KL divergence
from the baseline; a Run's baseline is reused when the sweep follows a Run of the same inputs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from tca.errors import ConfigError
from tca.methods import METHODS
from tca.pipeline import Prediction, classify_request
from tca.request import Request

from .runs import ExplorerRun, encode_labels, load_for
from .serving import ModelCache

# The keep-rate slider's range, 0.1 to 1.0, in 8 points (3 methods x 8 = SWEEP_MAX_PASSES)
SWEEP_RATES = (0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0)
SWEEP_MAX_PASSES = 24  # condensed passes one sweep may run (3 methods x 8 rates)


@dataclass
class SweepPoint:
    """One keep rate of a sweep: cost and what it did to the prediction."""

    keep_rate: float
    gmacs: float
    final_tokens: int
    top1: str
    top1_prob: float
    base_label_prob: float  # probability of the baseline's top-1 label
    kl: float  # KL(baseline || condensed), nats


@dataclass
class Sweep:
    """A keep-rate sweep of one image (per method, points in keep-rate order)."""

    model: str
    labels: list[str]
    baseline: Prediction
    gmacs_baseline: float
    points: dict[str, list[SweepPoint]]
    elapsed_ms: float = 0.0
    passes: int = 0  # condensed passes run
    baseline_pass: bool = True  # whether a baseline pass ran (else a Run's was reused)

    @property
    def base_label(self) -> str:
        return self.baseline.top(1)[0][0]


def kl_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """KL(p || q) in nats for two probability vectors (terms with p = 0 contribute 0)."""
    return float(
        sum(pi * (math.log(pi) - math.log(max(qi, 1e-12))) for pi, qi in zip(p, q) if pi > 0)
    )


def sweep(
    cache: ModelCache,
    request: Request,
    methods: Sequence[str] | None = None,
    rates: Sequence[float] = SWEEP_RATES,
    reuse: ExplorerRun | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> Sweep:
    """Run the request's method (or each of ``methods``) at every keep rate in ``rates`` on its
    image, as one job: the text encoded once, one baseline pass, then one untraced condensed
    pass per rate; a rate that removes nothing (R = 1) is the baseline itself and runs no pass.
    At most :data:`SWEEP_MAX_PASSES` condensed passes.

    reuse: the Run on screen; its baseline is taken instead of a new baseline pass when it was
    made from the same image, labels, model and prompts (:meth:`Request.same_inputs`).
    """
    say = progress or (lambda frac, desc: None)
    methods = tuple(methods) if methods else (request.config.method,)
    if any(METHODS[m].step is None for m in methods):
        raise ConfigError(
            'the keep-rate sweep needs a condensing method (TCA, EViT or ToMe), not "none"'
        )
    rates = sorted({round(float(r), 6) for r in rates})
    if not rates:
        raise ConfigError("the sweep needs at least one keep rate")
    if len(rates) * len(methods) > SWEEP_MAX_PASSES:
        raise ConfigError(
            f"a sweep runs at most {SWEEP_MAX_PASSES} passes, asked for {len(rates) * len(methods)}"
        )
    configs = {
        m: [replace(request.config, method=m, keep_rate=float(r)) for r in rates] for m in methods
    }
    loaded = load_for(cache, request, say)
    clip = loaded.clip
    label_list = list(request.labels)
    encode_labels(clip, request, say)  # beside the image lane, like a Run
    t0 = time.perf_counter()
    base = reuse.result if reuse is not None and request.same_inputs(reuse.request) else None
    reused = base is not None
    points: dict[str, list[SweepPoint]] = {}
    total, done, passes = len(rates) * len(methods), 0, 0
    for m, cfgs in configs.items():
        points[m] = []
        for cfg in cfgs:
            say(
                0.1 + 0.88 * done / total,
                f"{METHODS[m].title} at R={cfg.keep_rate:g} ({done + 1} of {total})",
            )
            if cfg.is_identity and base is not None:
                probs, gmacs, final = (
                    base.baseline.probs,
                    base.flops_baseline.gmacs,
                    base.baseline_tokens[-1],
                )
            else:
                with cache.image_lane:  # one pass at a time, so other Runs interleave
                    r = classify_request(
                        clip,
                        request,
                        cfg,
                        trace=False,
                        baseline=base.reference if base is not None else None,
                    )
                passes += 1
                if base is None:
                    base = r
                probs, gmacs, final = (
                    r.condensed.probs,
                    r.flops_condensed.gmacs,
                    r.tokens_per_layer[-1],
                )
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
                )
            )
            done += 1
    assert base is not None
    return Sweep(
        clip.name,
        label_list,
        base.baseline,
        base.flops_baseline.gmacs,
        points,
        (time.perf_counter() - t0) * 1e3,
        passes=passes,
        baseline_pass=not reused,
    )


__all__ = ["SWEEP_MAX_PASSES", "SWEEP_RATES", "Sweep", "SweepPoint", "kl_divergence", "sweep"]
