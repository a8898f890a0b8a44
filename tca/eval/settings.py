"""What one evaluation runs: its options (validated once), settings and stream orders.

:class:`EvalOptions` is the single place the evaluation's options are checked: the CLI builds one
before the (slow) model load, :func:`tca.eval.evaluate` builds one from its keyword arguments.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from ..config import DEFAULT_LAYERS, METHODS, CondenseConfig
from ..errors import ConfigError, EvalError
from ..methods import COMPARED, method
from ..prompts import resolve_templates, templates_for
from ..reservoir import ReservoirConfig
from ..reservoir import preset as reservoir_preset

DEFAULT_METHODS = ("none", *COMPARED)
DEFAULT_KEEP_RATES = (0.9, 0.7)
# --templates value: the data set's own templates (clip_benchmark's), not a named set.
BENCHMARK_TEMPLATES = "clip_benchmark"


@dataclass(frozen=True)
class Setting:
    """One evaluated configuration: a method at a keep rate (``none`` has no keep rate)."""

    method: str
    keep_rate: float | None
    config: CondenseConfig

    @property
    def key(self) -> str:
        return "none" if self.method == "none" else f"{self.method}-R{self.keep_rate:g}"

    @property
    def name(self) -> str:
        return "none (CLIP)" if self.method == "none" else f"{self.method} R={self.keep_rate:g}"

    @property
    def stream(self) -> bool:
        """Stateful (depends on the stream order): methods guided by domain anchors (TCA)."""
        return method(self.method).anchors


def make_settings(
    methods: Sequence[str] = DEFAULT_METHODS,
    keep_rates: Sequence[float] = DEFAULT_KEEP_RATES,
    layers: Sequence[int] = DEFAULT_LAYERS,
    merge_centers: int = 2,
    score: str = "mean",
) -> list[Setting]:
    """Every method at every keep rate (``none`` once); raises ConfigError / EvalError."""
    methods = list(dict.fromkeys(m.strip().lower() for m in methods if m.strip()))
    if not methods:
        raise EvalError("no methods given; choose from " + ", ".join(METHODS))
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    rates = list(dict.fromkeys(float(r) for r in keep_rates))
    if not rates and any(m != "none" for m in methods):
        raise EvalError("no keep rates given")
    out = []
    for m in methods:
        if m == "none":
            out.append(Setting("none", None, CondenseConfig(method="none")))
            continue
        for r in rates:
            out.append(
                Setting(
                    m,
                    r,
                    CondenseConfig(
                        method=m,
                        keep_rate=r,
                        layers=tuple(layers),
                        merge_centers=merge_centers,
                        score=score,
                    ),
                )
            )
    return out


def stream_orders(
    n: int, shuffle_seed: int | None = 0, repeats: int = 1, limit: int | None = None
) -> list[list[int]]:
    """The image order of each repeat (dataset indices).

    Repeat 0 is the file order shuffled with ``shuffle_seed`` (unshuffled if None); ``limit``
    keeps its first N images, the same subset in every repeat; repeat r > 0 reshuffles that
    subset with seed ``shuffle_seed + r``."""
    if repeats < 1:
        raise EvalError(f"--repeats must be >= 1, got {repeats}")
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be >= 1, got {limit}")
    if shuffle_seed is None:
        if repeats > 1:
            raise EvalError("--repeats N > 1 needs shuffled orders: give --shuffle-seed")
        return [list(range(n))[:limit]]
    base = list(range(n))
    random.Random(shuffle_seed).shuffle(base)
    base = base[:limit] if limit is not None else base
    orders = [base]
    for r in range(1, repeats):
        again = list(base)
        random.Random(shuffle_seed + r).shuffle(again)
        orders.append(again)
    return orders


@dataclass(frozen=True)
class EvalOptions:
    """The protocol of one evaluation, checked on construction (ConfigError / EvalError).

    methods x keep_rates (+ layers, merge_centers, score) give the settings; batch_size images
    per forward; templates: prompt templates; preset: TCA's reservoir hyperparameters;
    shuffle_seed / repeats / limit: the stream orders (see :func:`stream_orders`).
    """

    methods: tuple[str, ...] = DEFAULT_METHODS
    keep_rates: tuple[float, ...] = DEFAULT_KEEP_RATES
    layers: tuple[int, ...] = DEFAULT_LAYERS
    merge_centers: int = 2
    score: str = "mean"
    batch_size: int = 8
    templates: str | None = None  # None: the set the preset implies (tca.prompts)
    preset: str = "default"
    shuffle_seed: int | None = 0
    repeats: int = 1
    limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("methods", "keep_rates", "layers"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.settings  # noqa: B018 - builds (and so checks) every CondenseConfig
        if self.batch_size < 1:
            raise EvalError(f"--batch-size must be >= 1, got {self.batch_size}")
        stream_orders(0, self.shuffle_seed, self.repeats, self.limit)  # checks the order options
        reservoir_preset(self.preset)
        if self.template_set != BENCHMARK_TEMPLATES:  # the data set's own: checked in run()
            resolve_templates(self.template_set)

    @property
    def settings(self) -> list[Setting]:
        return make_settings(
            self.methods, self.keep_rates, self.layers, self.merge_centers, self.score
        )

    @property
    def template_set(self) -> str:
        """The prompt-template set: ``templates`` if given, else the one the preset implies."""
        return templates_for(self.preset, self.templates)

    @property
    def reservoir(self) -> ReservoirConfig:
        return reservoir_preset(self.preset)

    def orders(self, n: int) -> list[list[int]]:
        """The stream order of each repeat over a data set of ``n`` images."""
        return stream_orders(n, self.shuffle_seed, self.repeats, self.limit)


__all__ = [
    "EvalOptions",
    "Setting",
    "make_settings",
    "stream_orders",
    "DEFAULT_METHODS",
    "DEFAULT_KEEP_RATES",
    "BENCHMARK_TEMPLATES",
]
