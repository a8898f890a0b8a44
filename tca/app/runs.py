"""The explorer's Runs from a validated request, with no UI code: one Run (baseline + condensed
+ trace, and the reservoir in stream mode), the method comparison at one budget and the
per-session stream state. Requests come from ``tca.app.request``, models from
``tca.app.serving``; the keep-rate sweep is ``tca.app.sweeps``; ``tca.app.page`` turns a Run
into what the page shows and ``app.py`` only wires these to Gradio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from tca import budget
from tca.budget import Match
from tca.errors import ConfigError
from tca.flops import Geometry
from tca.methods import METHODS
from tca.models import APP_MODELS, ClipModel
from tca.pipeline import Prediction, RunResult, classify_request
from tca.request import Request
from tca.reservoir import Reservoir, ReservoirConfig, preset
from tca.towers import tower_for

from .request import KEEP_RATE_RANGE
from .serving import LoadedModel, ModelCache


def seen_picture(clip: ClipModel, image: Image.Image) -> np.ndarray:
    """(S, S, 3) uint8: the picture the model actually sees (its resize and centre crop)."""
    out = image
    for t in getattr(clip.preprocess, "transforms", ()):
        if "tensor" in type(t).__name__.lower():
            break
        out = t(out)
    if not isinstance(out, Image.Image):  # unknown preprocessing: resize + centre crop
        out = image
    visual: Any = clip.model.visual
    size = tower_for(visual).image_size(visual)[0]
    out = out.convert("RGB")
    if out.size != (size, size):
        w, h = out.size
        s = min(w, h)
        out = out.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        out = out.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.uint8).copy()


# ----------------------------------------------------------------------------------- stream


@dataclass
class StreamState:
    """One browser session's stream: the reservoir and what it is tied to (model + labels).

    The reservoir holds one bucket per label of one model's CLS tokens, so a different label
    list or model starts a fresh one (``notice`` says so).
    """

    config: ReservoirConfig = field(default_factory=lambda: preset("default"))
    model: str | None = None
    labels: tuple[str, ...] = ()
    reservoir: Reservoir | None = None
    notice: str | None = None

    def reservoir_for(self, model: str, labels: Sequence[str]) -> Reservoir:
        labels = tuple(labels)
        self.notice = None
        if self.reservoir is None or self.model != model or self.labels != labels:
            if self.reservoir is not None and self.reservoir.steps:
                what = "model" if self.model != model else "labels"
                self.notice = (
                    f"The {what} changed, so the reservoir started again "
                    f"(it keeps one bucket per label)."
                )
            self.reservoir = Reservoir(len(labels), self.config)
            self.model, self.labels = model, labels
        return self.reservoir

    def reset(self) -> None:
        if self.reservoir is not None:
            self.reservoir.reset()
        self.notice = "Reservoir cleared."

    def summary(self) -> dict | None:
        if self.reservoir is None:
            return None
        return self.reservoir.summary(list(self.labels))


# ----------------------------------------------------------------------------------- runs


@dataclass
class ExplorerRun:
    """One Run, cached per session so display-only controls re-render without the model."""

    request: Request  # what made it (the outdated-results check compares with it)
    result: RunResult
    seen: np.ndarray  # the picture the model saw, (S, S, 3) uint8
    model: str
    weights_note: str | None
    stream: dict | None = None  # reservoir summary after this image, in stream mode
    stream_notice: str | None = None

    @property
    def trace(self):
        return self.result.trace

    @property
    def image_name(self) -> str | None:
        return self.request.image_name

    @property
    def templates(self) -> str:
        return self.request.templates


Say = Callable[[float, str], None]


def _quiet(frac: float, desc: str) -> None:
    pass


def load_for(cache: ModelCache, request: Request, say: Say) -> LoadedModel:
    """The request's model, with the labels' token lengths checked against its text encoder."""
    say(0.1, "loading the model")
    loaded = cache.get(request.model)
    request.check_tokens(loaded.clip.tokenizer, loaded.clip.context_length)
    return loaded


def run(
    cache: ModelCache,
    request: Request,
    stream: StreamState | None = None,
    progress: Say | None = None,
) -> ExplorerRun:
    """Baseline + condensed (+ stream) on the request's image."""
    say = progress or _quiet
    loaded = load_for(cache, request, say)
    clip = loaded.clip
    reservoir = None
    if stream is not None and METHODS[request.config.method].anchors:
        reservoir = stream.reservoir_for(clip.name, request.labels)
    encode_labels(clip, request, say)
    say(0.4, "running baseline and condensed CLIP")
    with cache.image_lane:
        result = classify_request(clip, request, reservoir=reservoir, trace=True)
    return ExplorerRun(
        request,
        result,
        seen_picture(clip, request.image),
        clip.name,
        loaded.note,
        stream=result.reservoir if reservoir is not None else None,
        stream_notice=stream.notice if stream is not None and reservoir is not None else None,
    )


def encode_labels(
    clip: ClipModel, request: Request, say: Say, start: float = 0.15, end: float = 0.4
) -> None:
    """Encode (and cache) the labels' class embeddings, reporting progress between ``start``
    and ``end``; labels already cached cost nothing."""

    def step(done: int, total: int) -> None:
        say(start + (end - start) * done / total, f"encoding prompts: {done} of {total}")

    clip.encode_text(list(request.labels), request.templates, progress=step)


# Compare's choices of how methods are matched: the same keep rate R, or the same GMACs (TCA's
# cost at R, or a number), each method's R solved for it (``tca.budget``).
MATCHES = ("rate", "tca", "gmacs")
# Every condensing method of the registry, in its display order: what Compare and the
# all-methods sweep run (a method that refuses the tower is listed with its reason).
ALL_METHODS: tuple[str, ...] = tuple(m for m, rec in METHODS.items() if rec.plan is not None)


@dataclass(frozen=True)
class Matching:
    """How Compare matches the methods. by: ``rate`` (every method at the request's R), ``tca``
    (every method at TCA's GMACs at that R) or ``gmacs`` (at ``gmacs``)."""

    by: str = "tca"
    gmacs: float | None = None

    def __post_init__(self) -> None:
        if self.by not in MATCHES:
            raise ConfigError(f"match methods by: unknown choice {self.by!r}")
        if self.by == "gmacs" and (
            self.gmacs is None or not math.isfinite(self.gmacs) or self.gmacs <= 0
        ):
            raise ConfigError(f"target GMACs must be a positive number, got {self.gmacs}")


def solve_rates(
    geom: Geometry, request: Request, methods: Sequence[str], matching: Matching
) -> tuple[float | None, dict[str, Match], dict[str, str]]:
    """(the target GMACs or None, each method's match, each refusing method's reason) on a
    tower of geometry ``geom``. R is searched in the app's keep-rate range."""
    if matching.by == "rate":
        return None, {}, {}
    config = request.config
    if matching.by == "tca":
        target = budget.gmacs_at(geom, replace(config, method="tca"))
    else:
        target = float(matching.gmacs)  # type: ignore[arg-type]
    matches: dict[str, Match] = {}
    refused: dict[str, str] = {}
    for m in methods:
        cfg = replace(config, method=m)
        prefer = config.keep_rate  # a method already at the target's cost keeps the page's R
        got = budget.solve(geom, cfg, target, lo=KEEP_RATE_RANGE[0], prefer=prefer)
        if got.keep_rate is None:
            refused[m] = got.refusal or "no keep rate fits"
        else:
            matches[m] = got
    return target, matches, refused


@dataclass
class Comparison:
    """Several methods on one image (``results`` in method order), each at the request's keep
    rate or at the keep rate solved for an equal cost (``matches``)."""

    request: Request
    seen: np.ndarray
    baseline: Prediction
    results: dict[str, RunResult]
    model: str
    weights_note: str | None
    matching: Matching = field(default_factory=lambda: Matching("rate"))
    target: float | None = None  # GMACs every method was matched to (None: equal keep rate)
    matches: dict[str, Match] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # method -> why it did not run

    @property
    def keep_rate(self) -> float:
        return self.request.config.keep_rate

    def same(self, request: Request | None, matching: Matching | None) -> bool:
        """Whether the page's controls still make this comparison (the Explore method aside:
        Compare runs every method anyway)."""
        if request is None or matching != self.matching:
            return False
        return replace_method(request, "tca") == replace_method(self.request, "tca")


def compare(
    cache: ModelCache,
    request: Request,
    methods: Sequence[str] | None = None,
    progress: Say | None = None,
    matching: Matching | None = None,
) -> Comparison:
    """Each method (default: every condensing method of the registry) on the request's image,
    at its keep rate or at the keep rate that matches the cost ``matching`` asks for (the
    baseline once). A method that refuses the tower or the settings is listed in ``refused``
    with the reason and not run."""
    say = progress or _quiet
    matching = matching or Matching("rate")
    methods = tuple(methods) if methods else ALL_METHODS
    loaded = load_for(cache, request, say)
    clip = loaded.clip
    geom = Geometry.from_model(clip.model)
    target, matches, refused = solve_rates(geom, request, methods, matching)
    encode_labels(clip, request, say)
    results: dict[str, RunResult] = {}
    baseline = None  # plain CLIP runs once; every method is compared with that same result
    todo = [m for m in methods if m not in refused]
    for i, m in enumerate(todo):
        solved = matches[m].keep_rate if m in matches else None
        rate = solved if solved is not None else request.config.keep_rate
        req = request.with_config(replace(request.config, method=m, keep_rate=rate))
        say(0.4 + 0.55 * i / len(todo), f"running {METHODS[m].title}")
        try:
            with cache.image_lane:
                results[m] = classify_request(clip, req, trace=True, baseline=baseline)
        except ConfigError as exc:  # e.g. ATS on a tower without CLS, TCA's K > tier 2
            refused[m] = str(exc)
            continue
        baseline = baseline or results[m].reference
    if baseline is None:
        raise ConfigError(f"no method can run with these settings: {next(iter(refused.values()))}")
    first = next(iter(results.values()))
    return Comparison(
        request,
        seen_picture(clip, request.image),
        first.baseline,
        results,
        clip.name,
        loaded.note,
        matching,
        target,
        matches,
        refused,
    )


def replace_method(request: Request, method: str) -> Request:
    """The same request with another method (its keep rate, blocks, K and score kept)."""
    return request.with_config(replace(request.config, method=method))


__all__ = [
    "ALL_METHODS",
    "APP_MODELS",
    "MATCHES",
    "Comparison",
    "Matching",
    "solve_rates",
    "ExplorerRun",
    "StreamState",
    "compare",
    "encode_labels",
    "load_for",
    "run",
    "seen_picture",
]
