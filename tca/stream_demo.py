"""The one-click stream demo: feed a bundled sequence of images to TCA's reservoir until the
domain anchors switch on, then run one image with and without them.

The sequence (``assets/stream/stream.json``: labels, images in stream order, the probe image)
is plain data; :func:`run` is the whole demo and returns what a page shows: every stream step
(the label the image was filed under, how full the buckets are), and the probe's two runs.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from .config import CondenseConfig
from .errors import ConfigError
from .methods import METHODS
from .models import ClipModel
from .pipeline import RunResult, classify
from .reservoir import Reservoir, ReservoirConfig

STREAM_DIR = Path(__file__).resolve().parents[1] / "assets" / "stream"


@dataclass(frozen=True)
class StreamSpec:
    """labels: the demo's label set; images: the stream in order; probe: the image run with
    and without anchors at the end."""

    labels: tuple[str, ...]
    images: tuple[Path, ...]
    probe: Path


def load_spec(folder: Path = STREAM_DIR) -> StreamSpec:
    """The demo's sequence from ``folder/stream.json`` (paths relative to ``folder``)."""
    data = json.loads((folder / "stream.json").read_text())
    return StreamSpec(
        tuple(data["labels"]),
        tuple(folder / name for name in data["images"]),
        folder / data["probe"],
    )


@dataclass(frozen=True)
class StreamStep:
    """One image of the stream: its name, the label it was filed under (the condensed
    prediction), and the buckets' sizes and whether the anchors are on after it."""

    image: str
    filed_under: str
    bucket_sizes: tuple[int, ...]
    active: bool


@dataclass
class StreamDemo:
    steps: list[StreamStep]
    reservoir: Reservoir  # after the stream (the probe is not filed into it)
    with_anchors: RunResult | None  # None when the anchors never switched on
    without_anchors: RunResult

    @property
    def active(self) -> bool:
        return self.reservoir.active


def run(
    clip: ClipModel,
    spec: StreamSpec,
    config: CondenseConfig | None = None,
    reservoir_config: ReservoirConfig | None = None,
    passes: int = 2,
) -> StreamDemo:
    """Feed ``spec.images`` in order to a fresh reservoir, stopping as soon as the anchors
    switch on (a second pass, mirrored, if one pass is not enough; at most ``passes``), then
    run ``spec.probe`` with the anchors (and the logits correction; on a copy of the reservoir,
    so the probe is not filed) and without them (no reservoir), sharing one baseline."""
    config = config or CondenseConfig(method="tca", keep_rate=0.7)
    if not METHODS[config.method].anchors:
        users = [m.title for m in METHODS.values() if m.anchors]
        raise ConfigError(
            f"the stream demo needs a method with domain anchors ({', '.join(users)}), "
            f"got {METHODS[config.method].title}"
        )
    labels = list(spec.labels)
    reservoir = Reservoir(len(labels), reservoir_config or ReservoirConfig())
    steps: list[StreamStep] = []
    for p in range(passes):
        for path in spec.images:
            image = Image.open(path).convert("RGB")
            if p % 2:
                image = ImageOps.mirror(image)
            r = classify(clip, image, labels, config, reservoir=reservoir, trace=False)
            best = max(range(len(labels)), key=lambda i: r.condensed.logits[i])
            steps.append(
                StreamStep(
                    path.name + (" (mirrored)" if p % 2 else ""),
                    labels[best],
                    tuple(len(b) for b in reservoir.buckets),
                    reservoir.active,
                )
            )
            if reservoir.active:
                break
        if reservoir.active:
            break
    probe = Image.open(spec.probe).convert("RGB")
    without = classify(clip, probe, labels, config, trace=True)
    with_ = None
    if reservoir.active:
        with_ = classify(
            clip,
            probe,
            labels,
            config,
            reservoir=copy.deepcopy(reservoir),
            trace=True,
            baseline=without.reference,
        )
    return StreamDemo(steps, reservoir, with_, without)


__all__ = ["STREAM_DIR", "StreamDemo", "StreamSpec", "StreamStep", "load_spec", "run"]
