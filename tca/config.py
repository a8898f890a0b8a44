"""Condensation settings as data, and the token schedule they imply.

The schedule depends only on the settings and the ViT geometry, so token counts and FLOPs can be
known before (or without) running the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from . import methods
from .errors import ConfigError
from .plans import LayerPlan

METHODS = tuple(methods.METHODS)
SCORES = ("mean", "rank")
DEFAULT_LAYERS = (3, 6, 9)
# EViT's keep-rate locations, which the TCA release hard-codes: blocks depth/4 * {1, 2, 3}
# (0-based), i.e. 3/6/9 of 12. The release uses 3/6/9 for ViT-L/14 (24 blocks) too, so the
# paper's L/14 figures condense in the first half only; default_layers scales the rule instead.
LAYER_QUARTERS = (1, 2, 3)

# The paper's keep rate R against the released code's rate d (ViT-B/16, K=2, layers 3/6/9):
# R=0.9 is `Ours-0.035` (180/163/149 tokens) and R=0.7 is `Ours-0.1` (141/100/74).
# Between these points d is interpolated linearly; below R=0.7, d = (1 - R) / 3 (the tiers remove
# about 3m tokens per layer), which meets the last point at R=0.7 and stays below d = 1/3 where the
# tier-1 budget would run out.
RATE_POINTS: tuple[tuple[float, float], ...] = ((1.0, 0.0), (0.9, 0.035), (0.7, 0.1))


def keep_rate_to_rate(keep_rate: float) -> float:
    """Map the paper's keep rate R in (0, 1] to the released code's rate d."""
    if not 0.0 < keep_rate <= 1.0:
        raise ConfigError(f"keep rate must be in (0, 1], got {keep_rate}")
    for (r_hi, d_hi), (r_lo, d_lo) in zip(RATE_POINTS, RATE_POINTS[1:]):
        if r_lo <= keep_rate <= r_hi:
            t = (r_hi - keep_rate) / (r_hi - r_lo)
            return round(d_hi + t * (d_lo - d_hi), 10)
    return (1.0 - keep_rate) / 3.0


@dataclass(frozen=True)
class CondenseConfig:
    """What to condense and how much.

    method: ``tca`` (prune + merge, paper), ``evit`` (top-k + fuse), ``tome`` (ToMe's bipartite
    merging: head-mean keys, proportional attention), ``tome-paper`` (the released TCA code's ToMe
    baseline that produced the paper's ToMe rows: head-mean attention-probability rows as the
    metric, no proportional attention), ``ats`` (Adaptive Token Sampling: per-image token counts
    of at most ceil(R P)) or ``none`` (the unmodified model).
    keep_rate: the paper's R in (0, 1]; 1 means nothing is removed.
    rate: TCA only, the released code's raw rate d in [0, 1/3); overrides keep_rate.
    layers: 0-based block indices that condense. merge_centers: K coreset tokens (TCA tier 2).
    score: ``mean`` = head-mean CLS attention (released code), ``rank`` = cross-head average rank
    (paper text).
    center_seed: TCA only. None (default) starts the coreset at the most-attended tier-2 token,
    a rule; an integer draws each image's first centre at random from a generator seeded with
    it at every forward, as the released code does (reproducible for a given seed and batch).
    """

    method: str = "tca"
    keep_rate: float = 0.9
    rate: float | None = None
    layers: tuple[int, ...] = DEFAULT_LAYERS
    merge_centers: int = 2
    score: str = "mean"
    center_seed: int | None = None

    def __post_init__(self) -> None:
        methods.method(self.method)  # ConfigError naming the choices
        if self.score not in SCORES:
            raise ConfigError(f"unknown score {self.score!r}; choose one of {', '.join(SCORES)}")
        if not isinstance(self.keep_rate, (int, float)) or not 0.0 < self.keep_rate <= 1.0:
            raise ConfigError(f"keep rate must be in (0, 1], got {self.keep_rate}")
        if self.rate is not None and not 0.0 <= self.rate < 1.0 / 3.0:
            raise ConfigError(f"rate d must be in [0, 1/3), got {self.rate}")
        if not isinstance(self.merge_centers, int) or self.merge_centers < 1:
            raise ConfigError(
                f"merge centres K must be a positive integer, got {self.merge_centers}"
            )
        if self.center_seed is not None and (
            isinstance(self.center_seed, bool)
            or not isinstance(self.center_seed, int)
            or self.center_seed < 0
        ):
            raise ConfigError(
                f"centre seed must be a non-negative integer, got {self.center_seed!r}"
            )
        layers = tuple(sorted(set(int(i) for i in self.layers)))
        if any(i < 0 for i in layers):
            raise ConfigError(f"layer indices must be >= 0, got {list(self.layers)}")
        object.__setattr__(self, "layers", layers)

    @property
    def tca_rate(self) -> float:
        return self.rate if self.rate is not None else keep_rate_to_rate(self.keep_rate)

    @property
    def is_identity(self) -> bool:
        if methods.method(self.method).plan is None or not self.layers:
            return True
        if self.method == "tca":
            return self.tca_rate == 0.0
        return self.keep_rate >= 1.0

    def with_(self, **changes) -> CondenseConfig:
        return replace(self, **changes)

    def describe(self) -> str:
        if self.method == "none":
            return "none (unmodified CLIP)"
        extra = (
            f", d={self.tca_rate:g}, K={self.merge_centers}, score={self.score}"
            if self.method == "tca"
            else ""
        )
        if self.method == "tca" and self.center_seed is not None:
            extra += f", random first centre (seed {self.center_seed})"
        return f"{self.method} R={self.keep_rate:g}{extra}, layers {list(self.layers)}"


@dataclass(frozen=True)
class Schedule:
    """Per-block plan (None = plain block) and token counts at every block output.

    n_tokens: tokens entering block 0, ``prefix`` of them (the CLS token, or none) exempt from
    condensation. anchors: TCA prepends a domain anchor at condensing blocks > 0.
    """

    plans: tuple[LayerPlan | None, ...]
    tokens: tuple[int, ...]
    n_tokens: int
    anchors: bool = False
    prefix: int = 1

    @property
    def n_patches(self) -> int:
        return self.n_tokens - self.prefix

    @property
    def adaptive(self) -> bool:
        """Whether token counts depend on the image (``tokens`` are then upper bounds)."""
        return any(p is not None and p.adaptive for p in self.plans)

    def realised(self, tokens: Sequence[int]) -> Schedule:
        """This schedule with the token counts one image actually had (ATS), for FLOPs."""
        tokens = tuple(int(t) for t in tokens)
        if len(tokens) != len(self.plans):
            raise ValueError(f"{len(tokens)} token counts for {len(self.plans)} blocks")
        return replace(self, tokens=tokens)

    def attention_tokens(self, layer: int) -> int:
        """Tokens seen by block ``layer``'s attention (one more where a domain anchor is added)."""
        n_in = self.n_tokens if layer == 0 else self.tokens[layer - 1]
        return n_in + (1 if self.anchors and self.plans[layer] is not None and layer > 0 else 0)


def plan_layers(
    config: CondenseConfig, n_tokens: int, depth: int, anchors: bool = False, prefix: int = 1
) -> Schedule:
    """The token schedule of ``config`` for a ViT with ``n_tokens`` (``prefix`` of them CLS:
    1 for CLIP, 0 for towers without a CLS token) and ``depth`` blocks. Budgets depend on the
    patch count only, so a tower of P patches without CLS gets the tiers of a CLIP tower of P
    patches. Raises ConfigError for layers out of range or K larger than tier 2."""
    if prefix not in (0, 1):
        raise ConfigError(f"prefix must be 0 (no CLS token) or 1 (CLS token), got {prefix}")
    bad = [i for i in config.layers if i >= depth]
    if bad and not config.is_identity:
        raise ConfigError(
            f"layer index {bad[0]} is out of range: this model has {depth} blocks "
            f"(valid indices 0..{depth - 1})"
        )
    build = None if config.is_identity else methods.method(config.method).plan
    plans: list[LayerPlan | None] = []
    tokens: list[int] = []
    n = n_tokens
    for i in range(depth):
        plan = None
        if build is not None and i in config.layers:
            plan = build(config, n, i, prefix, depth)
        plans.append(plan)
        if plan is not None:
            n = plan.n_out
        tokens.append(n)
    return Schedule(
        tuple(plans),
        tuple(tokens),
        n_tokens,
        anchors=anchors and methods.method(config.method).anchors,
        prefix=prefix,
    )


def default_layers(depth: int) -> tuple[int, ...]:
    """The default condensing blocks of a ``depth``-block tower: depth * q / 4 for q = 1, 2, 3,
    rounded half up (0-based), so 3/6/9 of 12 blocks (the paper's, exactly), 6/12/18 of 24
    (ViT-L/14; the release keeps 3/6/9 there) and 2/4/6 of 8. Block 0 is left out where the
    tower has more (its CLS has not attended yet); duplicates of shallow towers collapse."""
    if depth < 1:
        raise ConfigError(f"a tower needs at least one block, got depth {depth}")
    low = 1 if depth > 1 else 0
    return tuple(
        sorted({max(low, min(depth - 1, int(depth * q / 4 + 0.5))) for q in LAYER_QUARTERS})
    )


def split_list(text: str) -> list[str]:
    """'a, b;c,' -> ['a', 'b', 'c']: the comma- (or semicolon-) separated items, blanks dropped.
    The one list syntax of the command line and the app's text fields (labels excepted: they
    may also be separated by newlines, see ``tca.labels.parse_labels``)."""
    return [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]


def format_layers(layers: Sequence[int]) -> str:
    """(3, 6, 9) -> '3,6,9', the text form :func:`parse_layers` reads."""
    return ",".join(str(int(i)) for i in layers)


DEFAULT_LAYERS_TEXT = format_layers(DEFAULT_LAYERS)


def parse_layers(text: str | Sequence[int]) -> tuple[int, ...]:
    """'3,6,9' -> (3, 6, 9), with a clear error for anything else."""
    if not isinstance(text, str):
        return tuple(int(i) for i in text)
    parts = split_list(text)
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"layers must be comma-separated integers like {DEFAULT_LAYERS_TEXT}, got {text!r}"
        ) from None
