"""Patching a CLIP vision tower in place (the open_clip plumbing).

``patch(model, config)`` swaps the class of ``model.visual`` for a subclass whose forward runs
the tower block by block, condensing between the attention residual and the MLP of the planned
blocks (weights untouched); ``unpatch(model)`` swaps it back. The blocks themselves are not
touched: plain blocks are called as they are, condensing blocks are computed from their weights
(``tca.block``).

State flows one way. :func:`encode` builds a :class:`RunState` for one forward (config, token
schedule with its typed plans, domain anchors, trace recorder, whether to record CLS tokens and
whether to use explicit attention), passes it to :func:`forward`, and gets a :class:`Forward`
back (features, token counts, CLS tokens). Nothing is parked on the model between or during
calls, so concurrent callers never see each other's anchors or traces. Plain
``model.encode_image`` builds a default RunState from the patched config.

Only condensing blocks (and, once ToMe has merged, blocks needing proportional attention, or once
ATS has left images of one batch with different token counts, blocks masking the padding) take
the explicit path; every other block runs the tower's own fused forward unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .block import RunState, condensing_block
from .config import CondenseConfig, Schedule, plan_layers
from .errors import ConfigError, UnsupportedModelError
from .methods import method
from .towers import Tower, tower_for
from .trace import Trace, TraceRecorder


@dataclass
class Encoded:
    """Output of :func:`encode`.

    features: (B, E) image embeddings (not normalised, like ``encode_image``).
    tokens_per_layer: token count at every block output (with per-image counts, i.e. ATS in a
    batch: the padded width, the largest count).
    tokens_per_image: (B, L) each image's own token count at every block output; FLOPs per image
    come from these (``Schedule.realised``).
    cls_tokens: (B, L, D) float32 raw residual-stream CLS after every block, if recorded.
    trace: the one-pass trace, if requested. anchors_used: whether domain anchors were prepended.
    """

    features: torch.Tensor
    tokens_per_layer: list[int]
    schedule: Schedule
    cls_tokens: torch.Tensor | None = None
    trace: Trace | None = None
    anchors_used: bool = False
    tokens_per_image: list[list[int]] = field(default_factory=list)


@dataclass
class Forward:
    """What one vision forward returns. cls_tokens: per block (B, D) float32, if recorded.
    image_counts: block -> (B,) per-image token counts, at the blocks where they differ (ATS)."""

    features: Any  # (B, E); (pooled, tokens) when the tower has output_tokens
    tokens_per_layer: list[int]
    cls_tokens: list[torch.Tensor] = field(default_factory=list)
    image_counts: dict[int, torch.Tensor] = field(default_factory=dict)

    def tokens_per_image(self, batch: int) -> list[list[int]]:
        """(B, L) token counts: the padded width wherever every image has the same count."""
        rows = [
            self.image_counts[i].tolist() if i in self.image_counts else [n] * batch
            for i, n in enumerate(self.tokens_per_layer)
        ]
        return [list(r) for r in zip(*rows)] if rows else [[] for _ in range(batch)]


class _Patched:
    """What ``patch`` leaves on the tower: its adapter, and the config plain ``encode_image``
    uses."""

    def __init__(self, tower: type[Tower], config: CondenseConfig) -> None:
        self.tower = tower
        self.config = config


def check_supported(model: torch.nn.Module) -> torch.nn.Module:
    """The model's vision tower, or UnsupportedModelError saying why it cannot be condensed."""
    visual = getattr(model, "visual", model)
    tower_for(visual)
    return visual


def is_patched(model: torch.nn.Module) -> bool:
    return hasattr(getattr(model, "visual", model), "_tca")


def patch(
    model: torch.nn.Module, config: CondenseConfig | None = None, **settings
) -> torch.nn.Module:
    """Make ``model.encode_image`` run condensed. Settings as in :class:`CondenseConfig`
    (``method``, ``keep_rate``, ``rate``, ``layers``, ``merge_centers``, ``score``).
    Patching an already patched model only replaces its config. Returns the model."""
    config = config.with_(**settings) if config is not None else CondenseConfig(**settings)
    visual: Any = getattr(model, "visual", model)
    tower = tower_for(visual)
    schedule_for(visual, config, tower=tower)  # validate layers / K against this model now
    if is_patched(model):
        visual._tca.config = config
        return model
    visual._tca = _Patched(tower, config)
    visual._tca_original_class = visual.__class__
    visual.__class__ = _subclass(visual.__class__, CondensingTower)
    return model


def unpatch(model: torch.nn.Module) -> torch.nn.Module:
    """Restore the original class; the model then behaves exactly as before patching."""
    visual: Any = getattr(model, "visual", model)
    if not hasattr(visual, "_tca"):
        return model
    visual.__class__ = visual._tca_original_class
    del visual._tca, visual._tca_original_class
    return model


_SUBCLASSES: dict[tuple[type, type], type] = {}


def _subclass(base: type, mixin: type) -> type:
    """A class deriving from both ``mixin`` and ``base`` (cached)."""
    if issubclass(base, mixin):
        return base
    key = (base, mixin)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"{mixin.__name__}[{base.__name__}]", (mixin, base), {})
    return _SUBCLASSES[key]


def schedule_for(
    visual: Any, config: CondenseConfig, anchors: bool = False, tower: type[Tower] | None = None
) -> Schedule:
    """The token schedule of ``config`` on this tower (ConfigError if it does not fit)."""
    family: type[Tower] = tower or visual._tca.tower
    rows, cols = family.grid(visual)
    prefix = family.prefix(visual)
    return plan_layers(config, rows * cols + prefix, len(family.blocks(visual)), anchors, prefix)


def run_state(
    visual: Any,
    images: torch.Tensor,
    config: CondenseConfig,
    anchors: torch.Tensor | None = None,
    trace: bool = False,
    record_cls: bool = False,
    explicit: bool = False,
) -> RunState:
    """The :class:`RunState` of one forward of ``images`` (B, 3, H, W) through a patched tower.
    Anchors only guide ``tca``; other methods run without them."""
    tower: type[Tower] = visual._tca.tower
    anchors = anchors if method(config.method).anchors else None
    recorder = None
    if trace:
        rows, cols = tower.grid(visual)
        recorder = TraceRecorder(images.shape[0], rows * cols, images.device, tower.prefix(visual))
    generator = None
    if config.center_seed is not None:  # only a coreset step (TCA's) draws from it
        generator = torch.Generator().manual_seed(config.center_seed)
    return RunState(
        tower,
        config,
        schedule_for(visual, config, anchors is not None),
        anchors,
        recorder,
        record_cls,
        explicit,
        generator,
    )


def encode(
    model: torch.nn.Module,
    images: torch.Tensor,
    config: CondenseConfig | None = None,
    anchors: torch.Tensor | None = None,
    trace: bool = False,
    record_cls: bool = False,
    explicit_attention: bool = False,
) -> Encoded:
    """Encode ``images`` (B, 3, H, W) with a patched model, in one forward pass.

    config: overrides the patched config for this call only.
    anchors: (C, L, D) class anchors (TCA's domain anchors, see ``tca.reservoir``); used by
    ``tca`` at condensing layers > 0.
    trace: also return the per-layer :class:`Trace`. record_cls: also return the CLS token (or
    the pooled token standing in for it) after every block (the reservoir's keys).
    explicit_attention: compute softmax(QK^T)V with plain matmuls everywhere (FLOP counters).
    """
    visual: Any = getattr(model, "visual", model)  # a patched tower
    if not hasattr(visual, "_tca"):
        raise ValueError("model is not patched: call tca.patch(model) first")
    run = run_state(
        visual, images, config or visual._tca.config, anchors, trace, record_cls, explicit_attention
    )
    result = forward(visual, images, run)
    out = Encoded(
        result.features,
        result.tokens_per_layer,
        run.schedule,
        anchors_used=run.anchors is not None,
        tokens_per_image=result.tokens_per_image(images.shape[0]),
    )
    if record_cls:
        out.cls_tokens = torch.stack(result.cls_tokens, dim=1)
    if run.recorder is not None:
        out.trace = run.recorder.finish(
            result.tokens_per_layer,
            run.tower.grid(visual),
            tuple(i for i, p in enumerate(run.schedule.plans) if p),
            out.tokens_per_image if result.image_counts else None,
        )
    return out


def forward(visual: Any, images: torch.Tensor, run: RunState) -> Forward:
    """One vision forward of ``images`` following ``run``: the tower's own forward (embed,
    blocks, pool, project) with the planned blocks condensing."""
    tower = run.tower
    weight = tower.patch_embed_weight(visual)
    x = tower.embed(visual, images.to(weight.device, weight.dtype))
    size: torch.Tensor | None = None  # (B, N) patches per token, once ToMe has merged
    # (B, N) bool, False for padding, once ATS has left the images with different counts
    valid: torch.Tensor | None = None
    proportional = run.method.proportional  # tome-paper merges without it
    counts: list[int] = []
    image_counts: dict[int, torch.Tensor] = {}
    cls_tokens: list[torch.Tensor] = []
    for layer, block in enumerate(tower.blocks(visual)):
        plan = run.schedule.plans[layer]
        if run.recorder is not None:
            run.recorder.block_input(x, valid)
        if (
            plan is None
            and (size is None or not proportional)
            and valid is None
            and not run.explicit
        ):
            x = block(x)
        else:
            x, size, valid = condensing_block(visual, block, layer, x, size, plan, run, valid)
        if valid is not None:
            image_counts[layer] = valid.sum(dim=1).cpu()
        counts.append(x.shape[1])
        if run.record_cls:
            cls_tokens.append(tower.pooled_token(visual, x).float())
        if run.recorder is not None:
            run.recorder.end_block()
    return Forward(
        tower.head(visual, x, size if proportional else None), counts, cls_tokens, image_counts
    )


class CondensingTower(torch.nn.Module):
    """Mixed into the tower's class by ``patch``: its plain forward condenses with the patched
    config."""

    _tca: _Patched

    def forward(self, x: torch.Tensor):
        return forward(self, x, run_state(self, x, self._tca.config)).features


__all__ = [
    "patch",
    "unpatch",
    "encode",
    "forward",
    "is_patched",
    "check_supported",
    "Encoded",
    "RunState",
    "Forward",
    "UnsupportedModelError",
    "ConfigError",
    "schedule_for",
    "run_state",
]
