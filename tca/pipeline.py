"""Baseline vs condensed zero-shot classification of one image: what the CLI and app show."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from .config import CondenseConfig
from .flops import CONVENTION, FlopReport, Geometry, count_macs, saved_percent
from .images import load_image
from .models import ClipModel, parse_labels, validate_labels
from .patch import Encoded, encode, is_patched, patch
from .reservoir import Reservoir, stream_update
from .trace import Trace


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

    @property
    def shift(self) -> dict[str, float]:
        final = self.final
        return {l: final.probs[i] - self.baseline.probs[i] for i, l in enumerate(self.labels)}

    @property
    def final(self) -> Prediction:
        return self.corrected or self.condensed

    @property
    def saved_percent(self) -> float:
        return saved_percent(self.flops_baseline, self.flops_condensed)

    def to_dict(self, include_trace: bool = True) -> dict:
        out = {
            "model": self.model,
            "random_weights": self.random_weights,
            "settings": {"method": self.config.method, "keep_rate": self.config.keep_rate,
                         "rate": self.config.tca_rate if self.config.method == "tca" else None,
                         "layers": list(self.config.layers),
                         "merge_centers": self.config.merge_centers, "score": self.config.score,
                         "center_seed": self.config.center_seed},
            "labels": self.labels,
            "baseline": {"probs": self.baseline.probs, "logits": self.baseline.logits},
            "condensed": {"probs": self.condensed.probs, "logits": self.condensed.logits},
            "shift": self.shift,
            "tokens_per_layer": self.tokens_per_layer,
            "baseline_tokens_per_layer": self.baseline_tokens,
            "gmacs": {"baseline": self.flops_baseline.gmacs, "condensed": self.flops_condensed.gmacs,
                      "saved_percent": self.saved_percent, "convention": CONVENTION,
                      "per_layer_baseline": [l.total / 1e9 for l in self.flops_baseline.layers],
                      "per_layer_condensed": [l.total / 1e9 for l in self.flops_condensed.layers],
                      "overhead": self.flops_condensed.overhead / 1e9},
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


def classify(clip: ClipModel, image, labels: str | Sequence[str], config: CondenseConfig,
             templates: str | Sequence[str] = "single", reservoir: Reservoir | None = None,
             trace: bool = True, max_labels: int | None = None, baseline: bool = True) -> RunResult:
    """Run baseline CLIP and the condensed model on one image, in one traced pass each.

    reservoir: TCA stream mode. Its anchors (if active) guide condensation, the image is filed
    into it, and ``corrected`` holds the logits-corrected prediction. Only ``tca`` uses it.
    """
    labels = validate_labels(parse_labels(labels), clip.tokenizer, templates, max_labels,
                             clip.context_length)
    pixels = prepare_image(clip, image)
    if reservoir is not None and reservoir.num_classes != len(labels):
        raise ValueError(f"the reservoir was built for {reservoir.num_classes} labels, "
                         f"got {len(labels)}; reset it when the labels change")
    if not is_patched(clip.model):
        patch(clip.model, CondenseConfig(method="none"))
    t0 = time.perf_counter()
    text = clip.encode_text(labels, templates)
    timings = {"text_ms": (time.perf_counter() - t0) * 1e3}
    use_reservoir = reservoir is not None and config.method == "tca"
    anchors = reservoir.anchors() if use_reservoir else None
    with torch.inference_mode():
        if not clip.warmed:  # the first forward pays one-time set-up costs; keep them out of timings
            encode(clip.model, pixels, CondenseConfig(method="none"))
            clip.warmed = True
        base_enc = None
        if baseline:
            t0 = time.perf_counter()
            base_enc = encode(clip.model, pixels, CondenseConfig(method="none"))
            timings["baseline_ms"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        enc: Encoded = encode(clip.model, pixels, config, anchors=anchors, trace=trace,
                              record_cls=use_reservoir)
        timings["condensed_ms"] = (time.perf_counter() - t0) * 1e3
    z = F.normalize(enc.features.float().cpu(), dim=-1)
    logits = clip.logits(enc.features.cpu(), text)  # the model's own scale (and SigLIP's bias)
    base_logits = clip.logits(base_enc.features.cpu(), text) if base_enc is not None else logits
    geom = Geometry.from_model(clip.model)
    base_schedule = geom.schedule(CondenseConfig(method="none"))
    result = RunResult(
        labels=labels, config=config, model=clip.weights_description, random_weights=clip.is_random,
        baseline=_prediction(labels, base_logits[0]), condensed=_prediction(labels, logits[0]),
        tokens_per_layer=enc.tokens_per_layer, baseline_tokens=list(base_schedule.tokens),
        flops_baseline=count_macs(geom, base_schedule), flops_condensed=count_macs(geom, enc.schedule),
        timings_ms=timings, trace=enc.trace, anchors_used=enc.anchors_used,
        cls_tokens=enc.cls_tokens)
    if use_reservoir:
        corrected = stream_update(reservoir, enc.cls_tokens, logits.detach(), z)
        result.corrected = _prediction(labels, corrected[0])
        result.reservoir = reservoir.summary(labels)
    return result
