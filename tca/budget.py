"""Equal cost: the keep rate R at which a method's GMACs best match a target.

The cost of a setting is the analytic count of ``tca.flops`` (``macs_for``: patch embedding,
blocks, head and the method's own overhead; exactly what ``python -m tca flops`` prints). R moves
token counts in whole tokens, so GMACs(R) is a step function: flat over ranges of R, and nearly
monotone (just below R = 1 a method can pay its scoring overhead while removing no token yet, so
its cost sits a hair above the baseline's). It is therefore scanned, not bisected: every R of
the grid ``step, 2 step, ..., 1`` inside [lo, hi] is counted once (about 20 us each on
ViT-B/16) and the best one taken by these rules, in order:

1. the smallest |GMACs - target|;
2. on a tie between two costs (one above, one below), the cheaper one: the budget is not
   exceeded where that can be helped;
3. among the R of one cost (one step), the R nearest ``prefer`` (default 1.0: the mildest R with
   that cost; the request's own R where it lies on the step, so a method matched to its own
   cost keeps its R).

R where the method refuses the settings (a ConfigError: TCA's K larger than tier 2 at that R,
ATS on a tower without CLS) are skipped; a method that refuses every R is reported with the
refusal's message. A method whose plans cap its saving (ToMe and the methods built on its
matching merge at most half of a block's tokens) cannot reach a target below its cheapest
setting: the match then says so (``floor``) and gives that reachable minimum.

ATS keeps a different number of tokens in every image; its schedule, and so its cost here,
holds the budget ceil(R P) (an upper bound, as the flops command prints). An image's run may
cost less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from .config import CondenseConfig
from .errors import ConfigError
from .flops import Geometry, macs_for

GRID_STEP = 0.001  # the keep-rate resolution of the scan
# A match is "equal cost" when it is within this share of the target (the app marks the rest).
# Around TCA's R = 0.7 on ViT-B/16 neighbouring costs are 0.01-0.07 GMACs apart, but the steps
# are coarser near R = 1 (the first tokens removed; TCA's tiers move several tokens at once: up
# to 2.9% of the cost) and on ViT-B/32's 49 patches (up to 8%): there the nearest cost can miss
# 1%, and the match carries the step (``step``) that makes it miss.
TOLERANCE = 0.01


@dataclass(frozen=True)
class Match:
    """A method's keep rate for a target cost.

    keep_rate: the chosen R (None: the method refuses every R; ``refusal`` says why).
    gmacs: its cost, the analytic GMACs of ``python -m tca flops`` at that R. target: the
    asked cost. lowest / highest: the cheapest and dearest cost the method reaches in the
    scanned range of R.
    """

    method: str
    target: float
    keep_rate: float | None
    gmacs: float
    lowest: float
    highest: float
    refusal: str | None = None
    step: float = float("nan")  # the gap between the reachable costs either side of the target

    @property
    def error(self) -> float:
        """Achieved minus target, GMACs (NaN when refused)."""
        return self.gmacs - self.target

    @property
    def relative_error(self) -> float:
        return self.error / self.target if self.target else float("nan")

    @property
    def floor(self) -> bool:
        """The target is cheaper than anything the method reaches: it runs at its minimum."""
        return self.keep_rate is not None and self.target < self.lowest

    @property
    def ceiling(self) -> bool:
        """The target is dearer than anything the method reaches (above the baseline)."""
        return self.keep_rate is not None and self.target > self.highest

    @property
    def within(self) -> bool:
        """|achieved - target| <= TOLERANCE x target."""
        return self.keep_rate is not None and abs(self.error) <= TOLERANCE * self.target


def grid(lo: float = GRID_STEP, hi: float = 1.0, step: float = GRID_STEP) -> tuple[float, ...]:
    """The scanned keep rates: the multiples of ``step`` in [lo, hi], ascending (rounded to 6
    digits, so 0.7 is exactly 0.7)."""
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"keep-rate range must satisfy 0 < lo <= hi <= 1, got [{lo}, {hi}]")
    first = max(1, math.ceil(lo / step - 1e-9))
    last = math.floor(hi / step + 1e-9)
    return tuple(round(k * step, 6) for k in range(first, last + 1))


@lru_cache(maxsize=256)
def cost_curve(
    geom: Geometry, config: CondenseConfig, rates: tuple[float, ...], anchors: bool = False
) -> tuple[tuple[tuple[float, float], ...], str | None]:
    """((R, GMACs) for every R of ``rates`` the method accepts, the first refusal's message or
    None). ``config`` gives the method, blocks, K and score; its keep rate is replaced. A method
    that refuses every R that would condense (ATS without CLS) gets no points at all."""
    points: list[tuple[float, float]] = []
    refusal = None
    condenses = False  # whether any accepted R removes tokens (R = 1 never refuses)
    for r in rates:
        cfg = replace(config, keep_rate=r, rate=None)  # R is what is solved: no raw d
        try:
            points.append((r, macs_for(geom, cfg, anchors).gmacs))
        except ConfigError as exc:
            refusal = refusal or str(exc)
            continue
        condenses = condenses or not cfg.is_identity
    if refusal is not None and not condenses:
        return (), refusal  # only the unmodified model left: the method refuses this tower
    return tuple(points), refusal


def pick(
    points: tuple[tuple[float, float], ...] | list[tuple[float, float]],
    target: float,
    prefer: float = 1.0,
) -> tuple[float, float]:
    """The (R, GMACs) of ``points`` that best matches ``target`` by the module's rules: nearest
    cost, then the cheaper of two equally near costs, then the R nearest ``prefer``."""
    if not points:
        raise ValueError("no points to pick from")
    return min(points, key=lambda p: (abs(p[1] - target), p[1], abs(p[0] - prefer)))


def solve(
    geom: Geometry,
    config: CondenseConfig,
    target: float,
    lo: float = GRID_STEP,
    hi: float = 1.0,
    prefer: float | None = None,
    anchors: bool = False,
) -> Match:
    """The keep rate in [lo, hi] at which ``config``'s method costs nearest ``target`` GMACs
    on ``geom`` (see the module's rules). prefer: the R to keep among equal costs (default
    the config's own keep rate)."""
    if not target > 0:
        raise ConfigError(f"target GMACs must be positive, got {target}")
    points, refusal = cost_curve(geom, config, grid(lo, hi), anchors)
    if not points:
        nan = float("nan")
        return Match(config.method, target, None, nan, nan, nan, refusal or "no keep rate")
    r, g = pick(points, target, config.keep_rate if prefer is None else prefer)
    costs = [c for _, c in points]
    below = [c for c in costs if c <= target]
    above = [c for c in costs if c >= target]
    step = min(above) - max(below) if below and above else float("nan")
    return Match(config.method, target, r, g, min(costs), max(costs), step=step)


def gmacs_at(geom: Geometry, config: CondenseConfig, anchors: bool = False) -> float:
    """The analytic GMACs of ``config`` on ``geom`` (``python -m tca flops``'s total)."""
    return macs_for(geom, config, anchors).gmacs


__all__ = ["GRID_STEP", "TOLERANCE", "Match", "cost_curve", "gmacs_at", "grid", "pick", "solve"]
