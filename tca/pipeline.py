"""Baseline vs condensed zero-shot classification of one image: what the CLI and app show."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .config import CondenseConfig
from .flops import CONVENTION, FlopReport, Geometry, count_macs, saved_percent
from .images import load_image
from .labels import parse_labels, validate_labels
from .models import ClipModel
from .patch import Encoded, encode, is_patched, patch
from .precision import precision_of
from .reservoir import Reservoir, stream_update
from .timing import elapsed_ms
from .trace import Trace

if TYPE_CHECKING:
    from .request import Request


@dataclass
class Prediction:
    labels: list[str]
    probs: list[float]
    logits: list[float]

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        order = sorted(range(len(self.probs)), key=lambda i: -self.probs[i])[:k]
        return [(self.labels[i], self.probs[i]) for i in order]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.labels, self.probs))


@dataclass
class RunResult:
    """Everything one Run produces (JSON via :meth:`to_dict`)."""

    labels: list[str]
    config: CondenseConfig
    model: str
    random_weights: bool
    baseline: Prediction
    condensed: Prediction
    tokens_per_layer: list[int]
    baseline_tokens: list[int]
    flops_baseline: FlopReport
    flops_condensed: FlopReport
    timings_ms: dict[str, float]
    trace: Trace | None = None
    corrected: Prediction | None = None  # after TCA's logits correction (stream mode)
    reservoir: dict | None = None
    anchors_used: bool = False
    cls_tokens: torch.Tensor | None = field(default=None, repr=False)
    precision: str = "fp32"  # the model's precision (tca.precision): fp32, bf16 or fp16

    @property
    def shift(self) -> dict[str, float]:
        final = self.final
        return {l: final.probs[i] - self.baseline.probs[i] for i, l in enumerate(self.labels)}

    @property
    def final(self) -> Prediction:
        return self.corrected or self.condensed

    @property
    def reference(self) -> Baseline:
        """This run's baseline as data, to pass to another :func:`classify` of the same image."""
        return Baseline(
            self.baseline,
            list(self.baseline_tokens),
            self.flops_baseline,
            self.timings_ms.get("baseline_ms", 0.0),
        )

    @property
    def saved_percent(self) -> float:
        return saved_percent(self.flops_baseline, self.flops_condensed)

    def to_dict(self, include_trace: bool = True) -> dict:
        out = {
            "model": self.model,
            "random_weights": self.random_weights,
            "precision": self.precision,
            "settings": {
                "method": self.config.method,
                "keep_rate": self.config.keep_rate,
                "rate": self.config.tca_rate if self.config.method == "tca" else None,
                "layers": list(self.config.layers),
                "merge_centers": self.config.merge_centers,
                "score": self.config.score,
                "center_seed": self.config.center_seed,
            },
            "labels": self.labels,
            "baseline": {"probs": self.baseline.probs, "logits": self.baseline.logits},
            "condensed": {"probs": self.condensed.probs, "logits": self.condensed.logits},
            "shift": self.shift,
            "tokens_per_layer": self.tokens_per_layer,
            "baseline_tokens_per_layer": self.baseline_tokens,
            "gmacs": {
                "baseline": self.flops_baseline.gmacs,
                "condensed": self.flops_condensed.gmacs,
                "saved_percent": self.saved_percent,
                "convention": CONVENTION,
                "per_layer_baseline": [l.total / 1e9 for l in self.flops_baseline.layers],
                "per_layer_condensed": [l.total / 1e9 for l in self.flops_condensed.layers],
                "overhead": self.flops_condensed.overhead / 1e9,
            },
            "timings_ms": self.timings_ms,
            "anchors_used": self.anchors_used,
        }
        if self.corrected is not None:
            out["corrected"] = {"probs": self.corrected.probs, "logits": self.corrected.logits}
        if self.reservoir is not None:
            out["reservoir"] = self.reservoir
        if include_trace and self.trace is not None:
            out["trace"] = self.trace.to_dict()
        return out


def _prediction(labels: list[str], logits: torch.Tensor) -> Prediction:
    logits = logits.float().cpu()
    return Prediction(labels, logits.softmax(-1).tolist(), logits.tolist())


def prepare_image(clip: ClipModel, image) -> torch.Tensor:
    """(1, 3, H, W) tensor from anything :func:`tca.images.load_image` accepts."""
    return clip.preprocess(load_image(image)).unsqueeze(0).to(clip.device, clip.dtype)


@dataclass(frozen=True)
class Baseline:
    """Plain CLIP (all tokens) on one image with one label set: what condensed runs are
    compared with. Computed once by :func:`baseline_of` and shared by every method run on the
    same image (``classify(..., baseline=...)``)."""

    prediction: Prediction
    tokens: list[int]  # tokens at every block output (all of them)
    flops: FlopReport
    ms: float  # time of its forward pass


def baseline_of(
    clip: ClipModel, pixels: torch.Tensor, labels: list[str], text: torch.Tensor
) -> Baseline:
    """Run unmodified CLIP on ``pixels`` (1, 3, H, W) against class embeddings ``text`` (C, E)."""
    _warm_up(clip, pixels)
    with torch.inference_mode():
        t0 = time.perf_counter()
        enc = encode(clip.model, pixels, CondenseConfig(method="none"))
        ms = elapsed_ms(t0, pixels.device)
    logits = clip.logits(enc.features.cpu(), text)  # the model's own scale (and SigLIP's bias)
    geom = Geometry.from_model(clip.model)
    schedule = geom.schedule(CondenseConfig(method="none"))
    return Baseline(
        _prediction(labels, logits[0]), list(schedule.tokens), count_macs(geom, schedule), ms
    )


def _warm_up(clip: ClipModel, pixels: torch.Tensor) -> None:
    """The first forward on a model pays one-time set-up costs: one untimed pass keeps them
    out of every timing."""
    if not is_patched(clip.model):
        patch(clip.model, CondenseConfig(method="none"))
    if not clip.warmed:
        with torch.inference_mode():
            encode(clip.model, pixels, CondenseConfig(method="none"))
        clip.warmed = True


def classify(
    clip: ClipModel,
    image,
    labels: str | Sequence[str],
    config: CondenseConfig,
    templates: str | Sequence[str] = "single",
    reservoir: Reservoir | None = None,
    trace: bool = True,
    max_labels: int | None = None,
    baseline: Baseline | None = None,
) -> RunResult:
    """Baseline CLIP vs the condensed model on one image.

    Runs plain CLIP once (not traced; skipped when ``baseline``, from :func:`baseline_of` or an
    earlier result's :attr:`RunResult.reference`, is given for the same image and labels), then
    the condensed model once (traced when ``trace``). The first call on a model adds one untimed
    warm-up pass.
    reservoir: TCA stream mode. Its anchors (if active) guide condensation, the image is filed
    into it, and ``corrected`` holds the logits-corrected prediction. Only ``tca`` uses it.
    """
    labels = validate_labels(
        parse_labels(labels), clip.tokenizer, templates, max_labels, clip.context_length
    )
    return classify_checked(
        clip, load_image(image), labels, config, templates, reservoir, trace, baseline
    )


def classify_request(
    clip: ClipModel,
    request: Request,
    config: CondenseConfig | None = None,
    reservoir: Reservoir | None = None,
    trace: bool = True,
    baseline: Baseline | None = None,
) -> RunResult:
    """:func:`classify` of a validated :class:`tca.request.Request` (its image decoded and its
    labels checked once, where it was built; ``config`` overrides the request's, as a sweep
    or a comparison does). The caller has checked the labels' token lengths for ``clip``
    (:meth:`Request.check_tokens`)."""
    return classify_checked(
        clip,
        request.image,
        list(request.labels),
        config if config is not None else request.config,
        request.templates,
        reservoir,
        trace,
        baseline,
    )


def classify_checked(
    clip: ClipModel,
    image: Image.Image,
    labels: list[str],
    config: CondenseConfig,
    templates: str | Sequence[str] = "single",
    reservoir: Reservoir | None = None,
    trace: bool = True,
    baseline: Baseline | None = None,
) -> RunResult:
    """:func:`classify` on a decoded image and a validated label list (nothing checked again)."""
    pixels = prepare_image(clip, image)
    if reservoir is not None and reservoir.num_classes != len(labels):
        raise ValueError(
            f"the reservoir was built for {reservoir.num_classes} labels, "
            f"got {len(labels)}; reset it when the labels change"
        )
    if baseline is not None and baseline.prediction.labels != labels:
        raise ValueError("the given baseline was computed for other labels")
    t0 = time.perf_counter()
    text = clip.encode_text(labels, templates)
    timings = {"text_ms": (time.perf_counter() - t0) * 1e3}
    base = baseline or baseline_of(clip, pixels, labels, text)
    timings["baseline_ms"] = base.ms
    use_reservoir = reservoir is not None and config.method == "tca"
    anchors = reservoir.anchors() if reservoir is not None and use_reservoir else None
    if (
        anchors is not None
    ):  # a reservoir is kept on the CPU (per-session state); the model may not be
        anchors = anchors.to(pixels.device)
    _warm_up(clip, pixels)
    with torch.inference_mode():
        t0 = time.perf_counter()
        enc: Encoded = encode(
            clip.model, pixels, config, anchors=anchors, trace=trace, record_cls=use_reservoir
        )
        timings["condensed_ms"] = elapsed_ms(t0, pixels.device)
    z = F.normalize(enc.features.float().cpu(), dim=-1)
    logits = clip.logits(enc.features.cpu(), text)  # the model's own scale (and SigLIP's bias)
    geom = Geometry.from_model(clip.model)
    result = RunResult(
        labels=labels,
        config=config,
        model=clip.weights_description,
        random_weights=clip.is_random,
        baseline=base.prediction,
        condensed=_prediction(labels, logits[0]),
        tokens_per_layer=enc.tokens_per_image[0],
        baseline_tokens=list(base.tokens),
        flops_baseline=base.flops,
        flops_condensed=count_macs(geom, enc.schedule.realised(enc.tokens_per_image[0])),
        timings_ms=timings,
        trace=enc.trace,
        anchors_used=enc.anchors_used,
        cls_tokens=enc.cls_tokens.cpu() if enc.cls_tokens is not None else None,
        precision=precision_of(clip),
    )
    if reservoir is not None and use_reservoir and result.cls_tokens is not None:
        corrected = stream_update(
            reservoir, result.cls_tokens, logits.detach(), z, clip.logit_scale
        )
        result.corrected = _prediction(labels, corrected[0])
        result.reservoir = reservoir.summary(labels)
    return result
