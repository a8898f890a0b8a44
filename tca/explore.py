"""App-level orchestration for the explorer, with no UI code: loading models on demand (with
the random-weights fallback), one Run from raw inputs, method comparison at one budget, the
keep-rate sweep of one image, per-session stream state, input signatures (to tell shown results
stale) and the JSON / PNG / GIF exports. ``tca.page`` turns a Run into what the page shows;
``app.py`` only wires these to Gradio.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import open_clip
from PIL import Image

from .config import DEFAULT_LAYERS, DEFAULT_LAYERS_TEXT, CondenseConfig, parse_layers
from .errors import ConfigError, InputError, LabelError, WeightsUnavailableError
from .images import load_image
from .models import (
    APP_MODELS,
    TEMPLATES,
    WEIGHTS_HELP,
    ClipModel,
    load_model,
    parse_labels,
    validate_labels,
)
from .pipeline import Prediction, RunResult, classify
from .reservoir import Reservoir, ReservoirConfig, preset

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
SWEEP_RATES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SWEEP_MAX_PASSES = 24  # condensed passes one sweep may run (3 methods x 8 rates)

# ----------------------------------------------------------------------------------- models

# a directory part of an absolute path ("/a/b/" of "/a/b/file"): cut from visitor-facing notes
_SERVER_PATH = re.compile(r"(?<![\w.:/])((?:/[^\s'\"/]+)+/)([^\s'\"/]*)")


@dataclass
class LoadedModel:
    """A cached model plus how its weights came about.

    requested: the pretrained tag or checkpoint asked for (None = random was asked for).
    note: why the weights are random although real ones were asked for, else None.
    """

    clip: ClipModel
    requested: str | None
    note: str | None = None

    @property
    def is_random(self) -> bool:
        return self.clip.is_random

    @property
    def name(self) -> str:
        return self.clip.name


class ModelCache:
    """Models loaded lazily on first use, at most ``max_models`` kept (least recently used go).

    pretrained: the tag every model is asked for (None / "none": random weights).
    checkpoint: a local weights file for ``checkpoint_model`` only (it fits one architecture).
    When real weights cannot be had, the model is loaded with random weights instead and
    ``LoadedModel.note`` says why and how to supply real ones. Thread-safe: one lock guards the
    dict, another serialises loading so a model is never loaded twice at once.
    """

    def __init__(
        self,
        pretrained: str | None = "openai",
        checkpoint: str | None = None,
        checkpoint_model: str | None = None,
        max_models: int = 2,
        seed: int = 0,
        loader: Callable[..., ClipModel] = load_model,
    ) -> None:
        if isinstance(pretrained, str) and pretrained.lower() in ("", "none", "random"):
            pretrained = None
        self.pretrained = pretrained
        self.checkpoint = checkpoint or None
        self.checkpoint_model = checkpoint_model
        self.max_models = max(1, max_models)
        self.seed = seed
        self._loader = loader
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._loading: set[str] = set()
        # The vision passes run one at a time (they use every core); text encoding runs beside
        # them, so a request with many new prompts never holds up another visitor's Run.
        self.image_lane = threading.Lock()

    def peek(self, name: str) -> LoadedModel | None:
        with self._lock:
            return self._models.get(name)

    def is_loading(self, name: str) -> bool:
        with self._lock:
            return name in self._loading

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
        with self._load_lock:
            with self._lock:
                if name in self._models:  # loaded while we waited
                    self._models.move_to_end(name)
                    return self._models[name]
                self._loading.add(name)
            try:
                entry = self._load(name)
            finally:
                with self._lock:
                    self._loading.discard(name)
            with self._lock:
                self._models[name] = entry
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            return entry

    def preload(self, name: str) -> threading.Thread:
        """Start loading ``name`` in a background thread (errors are left for ``get``)."""

        def work() -> None:
            try:
                self.get(name)
            except Exception:  # noqa: BLE001 - reported again on first use
                pass

        t = threading.Thread(target=work, name=f"preload-{name}", daemon=True)
        t.start()
        return t

    def _load(self, name: str) -> LoadedModel:
        checkpoint = (
            self.checkpoint if (self.checkpoint and name == self.checkpoint_model) else None
        )
        # visitors see the checkpoint's file name only, never its server path
        shown = Path(checkpoint).name if checkpoint else None
        requested = f"checkpoint {shown}" if checkpoint else self.pretrained
        if name not in open_clip.list_models():
            raise InputError(f"unknown model {name!r}")
        note = None
        if (
            checkpoint is None
            and self.pretrained is not None
            and self.pretrained not in open_clip.list_pretrained_tags_by_model(name)
        ):
            note = (
                f"{name} has no pretrained weights tagged {self.pretrained!r}, so it runs "
                f"on random weights. {WEIGHTS_HELP}"
            )
            clip = self._loader(name, None, seed=self.seed)
        else:
            try:
                clip = self._loader(name, self.pretrained, checkpoint, seed=self.seed)
            except WeightsUnavailableError as exc:
                note = str(exc).replace(str(checkpoint), shown or "") if checkpoint else str(exc)
                note = _SERVER_PATH.sub(lambda m: m.group(2), note)
                clip = self._loader(name, None, seed=self.seed)
            else:
                if checkpoint and isinstance(clip, ClipModel):
                    clip = dataclasses.replace(clip, pretrained=requested)
        return LoadedModel(clip, requested, note)


# ----------------------------------------------------------------------------------- visitors

BUSY = (
    "one request at a time per visitor: your previous Run or Compare is still running; "
    "try again when it has finished"
)


class SessionGate:
    """At most one model request running per visitor session: a second one while the first
    runs is refused at once (:data:`BUSY`), so one visitor never holds more than one of the
    server's model slots however many requests they send. Thread-safe."""

    def __init__(self) -> None:
        self._active: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._active)

    @contextlib.contextmanager
    def hold(self, session: str | None) -> Iterator[None]:
        if session is None:  # a direct call (tests, tools): nothing to bound
            yield
            return
        with self._lock:
            if session in self._active:
                raise InputError(BUSY)
            self._active.add(session)
        try:
            yield
        finally:
            with self._lock:
                self._active.discard(session)


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
    visual: Any = clip.model.visual  # open_clip's VisionTransformer
    size = visual.grid_size[0] * visual.conv1.kernel_size[0]
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
class RunState:
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
) -> RunState:
    """Validate raw app inputs and run baseline + condensed (+ stream) on one image.

    Raises :class:`tca.errors.UserError` with a message fit for the user.
    """
    say = progress or (lambda frac, desc: None)
    config = parse_settings(method, keep_rate, layers, merge_centers, score)
    pil, loaded, label_list, templates = _checked_inputs(
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
    return RunState(
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


def _checked_inputs(
    cache: ModelCache,
    image,
    labels,
    model: str,
    templates: str,
    max_labels: int,
    say: Callable[[float, str], None],
):
    """Validate the raw inputs shared by :func:`run` and :func:`compare`, load the model.
    Returns (image, loaded model, label list, templates)."""
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
    pil, loaded, labels, templates = _checked_inputs(
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


# ----------------------------------------------------------------------------------- sweep


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
    image,
    labels,
    model: str,
    method: str = "tca",
    layers: str | Sequence[int] = DEFAULT_LAYERS,
    merge_centers: int = 2,
    score: str = "mean",
    templates: str = "single",
    rates: Sequence[float] = SWEEP_RATES,
    methods: Sequence[str] | None = None,
    max_labels: int = MAX_LABELS,
    reuse: RunResult | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> Sweep:
    """Run ``method`` (or each of ``methods``) at every keep rate in ``rates`` on one image, as
    one job: inputs checked and the text encoded once, one baseline pass, then one untraced
    condensed pass per rate; a rate that removes nothing (R = 1) is the baseline itself and
    runs no pass. At most :data:`SWEEP_MAX_PASSES` condensed passes.

    reuse: a Run of the same image, labels, model and templates whose baseline is taken
    instead of a new baseline pass (the caller vouches that the inputs match).
    """
    say = progress or (lambda frac, desc: None)
    methods = tuple(methods) if methods else (method,)
    if any(m == "none" for m in methods):
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
        m: [parse_settings(m, r, layers, merge_centers, score) for r in rates] for m in methods
    }
    pil, loaded, label_list, templates = _checked_inputs(
        cache, image, labels, model, templates, max_labels, say
    )
    clip = loaded.clip
    encode_labels(clip, label_list, templates, say)  # beside the image lane, like a Run
    t0 = time.perf_counter()
    base = reuse if reuse is not None and reuse.labels == label_list else None
    points: dict[str, list[SweepPoint]] = {}
    total, done, passes = len(rates) * len(methods), 0, 0
    for m, cfgs in configs.items():
        points[m] = []
        for cfg in cfgs:
            say(
                0.1 + 0.88 * done / total,
                f"{METHOD_NAMES[m]} at R={cfg.keep_rate:g} ({done + 1} of {total})",
            )
            if cfg.is_identity and base is not None:
                probs, gmacs, final = (
                    base.baseline.probs,
                    base.flops_baseline.gmacs,
                    base.baseline_tokens[-1],
                )
            else:
                with cache.image_lane:  # one pass at a time, so other Runs interleave
                    r = classify(
                        clip,
                        pil,
                        label_list,
                        cfg,
                        templates=templates,
                        trace=False,
                        max_labels=max_labels,
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
        baseline_pass=reuse is None or base is not reuse,
    )


# ----------------------------------------------------------------------------------- exports


def _top(pred: Prediction, k: int) -> list[dict]:
    return [{"label": l, "prob": p} for l, p in pred.top(k)]


def summary(state: RunState, top_k: int = 5) -> dict:
    """The API answer of one Run: predictions, tokens per layer, GMACs, timings, settings."""
    r = state.result
    out = r.to_dict(include_trace=False)
    out["weights_note"] = state.weights_note
    out["templates"] = state.templates
    out["top"] = {"baseline": _top(r.baseline, top_k), "condensed": _top(r.condensed, top_k)}
    if r.corrected is not None:
        out["top"]["corrected"] = _top(r.corrected, top_k)
    out["final"] = "corrected" if r.corrected is not None else "condensed"
    return out


def export_dict(state: RunState) -> dict:
    """Everything about one Run for the JSON download: the summary plus the per-layer trace
    (fates, token of each patch) and the merged groups at every layer."""
    out = summary(state, top_k=len(state.result.labels))
    trace = state.trace
    if trace is not None:
        out["trace"] = trace.to_dict()
        for layer in out["trace"]["layers"]:
            layer["groups"] = [sorted(p) for p in trace.groups(layer["layer"]).values()]
        out["trace"]["patch_order"] = "row-major over grid (rows, cols)"
    out["flops"] = {
        "baseline": state.result.flops_baseline.to_dict(),
        "condensed": state.result.flops_condensed.to_dict(),
    }
    out["image"] = {
        "name": state.image_name,
        "content_key": state.signature[0] if state.signature else None,
        "model_view_px": list(state.view.shape[:2]),
    }
    return out


class ExportDir:
    """A private folder for generated downloads; files older than ``max_age_s`` are removed
    whenever a new one is written, so a long-running server does not fill its disk."""

    def __init__(
        self, root: str | os.PathLike | None = None, max_age_s: float = 3600.0, max_files: int = 200
    ) -> None:
        self.root = (
            Path(root) if root else Path(tempfile.gettempdir()) / f"tca-explorer-{os.getpid()}"
        )
        self.max_age_s = max_age_s
        self.max_files = max_files  # Gradio serves its own copy, so only recent ones are kept

    def path(self, stem: str, suffix: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self.prune()
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem)[:60]
        return self.root / f"{safe}-{uuid.uuid4().hex[:10]}{suffix}"

    def prune(self) -> None:
        """Remove files older than ``max_age_s`` and all but the newest ``max_files - 1``."""
        cutoff = time.time() - self.max_age_s
        files = []
        for f in self.root.glob("*"):
            try:
                if f.is_file():
                    files.append((f.stat().st_mtime, f))
            except OSError:
                pass
        files.sort(reverse=True)
        for i, (mtime, f) in enumerate(files):
            if mtime < cutoff or i >= self.max_files - 1:
                try:
                    f.unlink()
                except OSError:
                    pass

    def write_json(self, data: dict, stem: str = "tca-run") -> Path:
        p = self.path(stem, ".json")
        p.write_text(json.dumps(data, indent=1))
        return p

    def write_png(self, image: Image.Image, stem: str = "tca-layers") -> Path:
        p = self.path(stem, ".png")
        image.save(p, format="PNG", compress_level=1)
        return p

    def write_gif(
        self, frames: Sequence[Image.Image], stem: str = "tca-depth", ms_per_frame: int = 600
    ) -> Path:
        """An animated GIF (looping) of ``frames``, e.g. the map after every block."""
        p = self.path(stem, ".gif")
        frames[0].save(
            p,
            format="GIF",
            save_all=True,
            append_images=list(frames[1:]),
            duration=ms_per_frame,
            loop=0,
            optimize=False,
        )
        return p


__all__ = [
    "APP_MODELS",
    "COMPARE_METHODS",
    "METHOD_NAMES",
    "MAX_LABELS",
    "MAX_PROMPTS",
    "BUSY",
    "SessionGate",
    "check_prompt_count",
    "encode_labels",
    "InputError",
    "LoadedModel",
    "ModelCache",
    "StreamState",
    "RunState",
    "Comparison",
    "run",
    "compare",
    "summary",
    "export_dict",
    "ExportDir",
    "model_view",
    "open_image",
    "parse_settings",
    "APP_DEFAULTS",
    "SWEEP_RATES",
    "Sweep",
    "SweepPoint",
    "sweep",
    "kl_divergence",
    "input_signature",
    "image_key",
    "image_name",
]
