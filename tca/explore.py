"""The explorer's Runs from raw app inputs, with no UI code: the inputs checked with messages
naming the field, one Run (baseline + condensed + trace, and the reservoir in stream mode), the
method comparison at one budget, per-session stream state and input signatures (to tell shown
results stale). Models come from ``tca.serving``; the keep-rate sweep is ``tca.sweeps``, the
downloads ``tca.export``; ``tca.page`` turns a Run into what the page shows and ``app.py`` only
wires these to Gradio.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from .config import DEFAULT_LAYERS, DEFAULT_LAYERS_TEXT, CondenseConfig, parse_layers
from .errors import ConfigError, InputError, LabelError
from .images import load_image
from .models import (
    APP_MODELS,
    TEMPLATES,
    ClipModel,
    parse_labels,
    validate_labels,
)
from .pipeline import Prediction, RunResult, classify
from .reservoir import Reservoir, ReservoirConfig, preset
from .serving import LoadedModel, ModelCache
from .towers import tower_for

COMPARE_METHODS = ("tca", "evit", "tome")
METHOD_NAMES = {
    "tca": "TCA",
    "evit": "EViT",
    "tome": "ToMe",
    "tome-paper": "ToMe (paper)",
    "ats": "ATS",
    "none": "none (plain CLIP)",
}
MAX_LABELS = 100
# Prompts one request may encode (labels x templates): 15 labels with the 80 ImageNet prompts,
# or every one of MAX_LABELS with one prompt. Encoding them takes a few seconds here (README).
MAX_PROMPTS = 1200
MAX_LABELS_TEXT = 20_000  # characters of label text accepted before parsing
KEEP_RATE_RANGE = (0.1, 1.0)
MERGE_CENTERS_RANGE = (1, 16)
# The settings the page opens with (and the first screen is computed with).
APP_DEFAULTS = dict(
    method="tca",
    keep_rate=0.7,
    layers=DEFAULT_LAYERS_TEXT,
    merge_centers=2,
    score="mean",
    templates="single",
)

# ----------------------------------------------------------------------------------- inputs


def parse_settings(
    method: str,
    keep_rate: float,
    layers: str | Sequence[int],
    merge_centers: float | int,
    score: str,
) -> CondenseConfig:
    """A CondenseConfig from the app's controls, with range checks that name the control."""
    if keep_rate is None or not KEEP_RATE_RANGE[0] <= float(keep_rate) <= KEEP_RATE_RANGE[1]:
        raise ConfigError(
            f"keep rate R must be between {KEEP_RATE_RANGE[0]} and "
            f"{KEEP_RATE_RANGE[1]}, got {keep_rate}"
        )
    if (
        merge_centers is None
        or float(merge_centers) != int(float(merge_centers))
        or not MERGE_CENTERS_RANGE[0] <= int(float(merge_centers)) <= MERGE_CENTERS_RANGE[1]
    ):
        raise ConfigError(
            f"merge centres K must be a whole number from {MERGE_CENTERS_RANGE[0]} "
            f"to {MERGE_CENTERS_RANGE[1]}, got {merge_centers}"
        )
    layer_tuple = parse_layers(layers if layers is not None else "")
    if method != "none" and not layer_tuple:
        raise ConfigError(
            f"no condensing layers given: enter block indices like {DEFAULT_LAYERS_TEXT}"
        )
    return CondenseConfig(
        method=method,
        keep_rate=float(keep_rate),
        layers=layer_tuple,
        merge_centers=int(float(merge_centers)),
        score=score,
    )


def check_labels_text(labels: str | Sequence[str] | None) -> str | Sequence[str]:
    if labels is None:
        raise LabelError('no labels: type at least two candidate labels, e.g. "cat, dog"')
    if isinstance(labels, str) and len(labels) > MAX_LABELS_TEXT:
        raise LabelError(
            f"the labels text is {len(labels)} characters long (at most "
            f"{MAX_LABELS_TEXT}); use at most {MAX_LABELS} short labels"
        )
    return labels


def check_templates(templates: str) -> str:
    if templates not in TEMPLATES:
        raise InputError(
            f"unknown prompt templates {templates!r}; choose one of {', '.join(TEMPLATES)}"
        )
    return templates


def open_image(image) -> Image.Image:
    """The uploaded image as RGB, or ImageError / InputError naming the problem."""
    if image is None or (isinstance(image, str) and not image.strip()):
        raise InputError("no image: upload an image or pick one of the examples first")
    return load_image(image)


def model_view(clip: ClipModel, image: Image.Image) -> np.ndarray:
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

    result: RunResult
    view: np.ndarray  # the picture the model saw, (S, S, 3) uint8
    model: str
    weights_note: str | None
    templates: str
    stream: dict | None = None  # reservoir summary after this image, in stream mode
    stream_notice: str | None = None
    image_name: str | None = None  # the file name only (never a server path)
    signature: tuple | None = None  # the inputs that made it (see input_signature)

    @property
    def trace(self):
        return self.result.trace


def run(
    cache: ModelCache,
    image,
    labels,
    model: str,
    method: str = "tca",
    keep_rate: float = 0.9,
    layers: str | Sequence[int] = DEFAULT_LAYERS,
    merge_centers: int = 2,
    score: str = "mean",
    templates: str = "single",
    stream: StreamState | None = None,
    max_labels: int = MAX_LABELS,
    progress: Callable[[float, str], None] | None = None,
) -> ExplorerRun:
    """Validate raw app inputs and run baseline + condensed (+ stream) on one image.

    Raises :class:`tca.errors.UserError` with a message fit for the user.
    """
    say = progress or (lambda frac, desc: None)
    config = parse_settings(method, keep_rate, layers, merge_centers, score)
    pil, loaded, label_list, templates = checked_inputs(
        cache, image, labels, model, templates, max_labels, say
    )
    clip = loaded.clip
    reservoir = None
    if stream is not None and config.method == "tca":
        reservoir = stream.reservoir_for(clip.name, label_list)
    encode_labels(clip, label_list, templates, say)
    say(0.4, "running baseline and condensed CLIP")
    with cache.image_lane:
        result = classify(
            clip,
            pil,
            label_list,
            config,
            templates=templates,
            reservoir=reservoir,
            trace=True,
            max_labels=max_labels,
        )
    return ExplorerRun(
        result,
        model_view(clip, pil),
        clip.name,
        loaded.note,
        templates,
        stream=result.reservoir if reservoir is not None else None,
        stream_notice=stream.notice if stream is not None and reservoir is not None else None,
        image_name=image_name(image),
        signature=input_signature(
            image, labels, model, method, keep_rate, layers, merge_centers, score, templates
        ),
    )


def image_name(image) -> str | None:
    """The base name of an image given as a path (for exports), else None."""
    if isinstance(image, (str, os.PathLike)):
        return Path(image).name
    return getattr(image, "orig_name", None) or None


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime: float) -> str:
    with open(path, "rb") as f:
        return hashlib.blake2b(f.read(), digest_size=12).hexdigest()


def image_key(image) -> str | None:
    """A content key of an image input: the same picture gives the same key whatever the file
    path (the app's copy of an example vs the asset), so results can be told stale or current."""
    if image is None:
        return None
    if isinstance(image, (str, os.PathLike)):
        try:
            st = os.stat(image)
        except OSError:
            return f"missing:{image}"
        return _file_digest(str(image), st.st_size, st.st_mtime)
    if isinstance(image, Image.Image):
        return hashlib.blake2b(image.tobytes(), digest_size=12).hexdigest()
    if isinstance(image, np.ndarray):
        return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=12).hexdigest()
    return repr(image)


def input_signature(
    image, labels, model, method, keep_rate, layers, merge_centers, score, templates
) -> tuple:
    """Everything a Run depends on, normalised (labels parsed, numbers rounded), for telling
    whether the shown results still match the inputs on screen."""
    try:
        label_key: object = tuple(parse_labels(labels))
    except Exception:  # noqa: BLE001 - an unparsable text is compared as typed
        label_key = labels

    def num(v):
        try:
            return round(float(v), 6)
        except (TypeError, ValueError):
            return v

    layer_key = re.sub(r"\s+", "", str(layers)) if isinstance(layers, str) else tuple(layers)
    return (
        image_key(image),
        label_key,
        model,
        method,
        num(keep_rate),
        layer_key,
        num(merge_centers),
        score,
        templates,
    )


def checked_inputs(
    cache: ModelCache,
    image,
    labels,
    model: str,
    templates: str,
    max_labels: int,
    say: Callable[[float, str], None],
) -> tuple[Image.Image, LoadedModel, list[str], str]:
    """Validate the raw inputs shared by :func:`run`, :func:`compare` and the sweep, and load
    the model. Returns (image, loaded model, label list, templates)."""
    templates = check_templates(templates)
    labels = check_labels_text(labels)
    pil = open_image(image)
    say(0.1, "loading the model")
    loaded = cache.get(model)
    label_list = validate_labels(
        parse_labels(labels),
        loaded.clip.tokenizer,
        templates,
        max_labels,
        loaded.clip.context_length,
    )
    check_prompt_count(len(label_list), templates)
    return pil, loaded, label_list, templates


def check_prompt_count(n_labels: int, templates: str, max_prompts: int = MAX_PROMPTS) -> None:
    """LabelError if labels x templates exceeds what one request may encode."""
    n_temps = len(TEMPLATES[templates])
    if n_labels * n_temps > max_prompts:
        raise LabelError(
            f"too many prompts: {n_labels} labels x {n_temps} prompt templates = "
            f"{n_labels * n_temps}; one request may encode at most {max_prompts} (up to "
            f"{max_prompts // len(TEMPLATES['imagenet80'])} labels with the 80 ImageNet prompts, "
            f"up to {min(MAX_LABELS, max_prompts)} with one prompt)"
        )


def encode_labels(
    clip: ClipModel,
    labels: Sequence[str],
    templates: str,
    say: Callable[[float, str], None],
    start: float = 0.15,
    end: float = 0.4,
) -> None:
    """Encode (and cache) the labels' class embeddings, reporting progress between ``start``
    and ``end``; labels already cached cost nothing."""

    def step(done: int, total: int) -> None:
        say(start + (end - start) * done / total, f"encoding prompts: {done} of {total}")

    clip.encode_text(labels, templates, progress=step)


@dataclass
class Comparison:
    """Several methods on one image at one keep rate (``results`` in method order)."""

    view: np.ndarray
    baseline: Prediction
    results: dict[str, RunResult]
    model: str
    weights_note: str | None
    keep_rate: float


def compare(
    cache: ModelCache,
    image,
    labels,
    model: str,
    keep_rate: float = 0.7,
    layers: str | Sequence[int] = DEFAULT_LAYERS,
    merge_centers: int = 2,
    score: str = "mean",
    templates: str = "single",
    methods: Sequence[str] = COMPARE_METHODS,
    max_labels: int = MAX_LABELS,
    progress: Callable[[float, str], None] | None = None,
) -> Comparison:
    """Run each method on the same image, labels and keep rate R (the baseline only once)."""
    say = progress or (lambda frac, desc: None)
    configs = [parse_settings(m, keep_rate, layers, merge_centers, score) for m in methods]
    pil, loaded, labels, templates = checked_inputs(
        cache, image, labels, model, templates, max_labels, say
    )
    clip = loaded.clip
    encode_labels(clip, labels, templates, say)
    results: dict[str, RunResult] = {}
    baseline = None  # plain CLIP runs once; every method is compared with that same result
    for i, cfg in enumerate(configs):
        say(0.4 + 0.55 * i / len(configs), f"running {METHOD_NAMES.get(cfg.method, cfg.method)}")
        with cache.image_lane:
            results[cfg.method] = classify(
                clip,
                pil,
                labels,
                cfg,
                templates=templates,
                trace=True,
                max_labels=max_labels,
                baseline=baseline,
            )
        baseline = baseline or results[cfg.method].reference
    first = results[configs[0].method]
    return Comparison(
        model_view(clip, pil), first.baseline, results, clip.name, loaded.note, float(keep_rate)
    )


__all__ = [
    "APP_DEFAULTS",
    "APP_MODELS",
    "COMPARE_METHODS",
    "KEEP_RATE_RANGE",
    "MAX_LABELS",
    "MAX_PROMPTS",
    "METHOD_NAMES",
    "Comparison",
    "ExplorerRun",
    "StreamState",
    "check_prompt_count",
    "checked_inputs",
    "compare",
    "encode_labels",
    "image_key",
    "image_name",
    "input_signature",
    "model_view",
    "open_image",
    "parse_settings",
    "run",
]
