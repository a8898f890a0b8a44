"""TCA's domain-aware token reservoir, domain anchors and logits correction (§1.7, §1.8).

A :class:`Reservoir` is plain caller-owned state: one per stream (dataset, browser session).
Nothing is stored on the model or at module level, so two users never share anchors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from .errors import ConfigError

EVICTIONS = ("diversity", "similarity", "uncertainty", "fifo")
# The released correction adds λ Σ exp(-β(1 - a)) to 100 * cosine logits; the presets assume it.
RELEASED_LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class ReservoirConfig:
    """size: M entries per class; scale: σ, the layer-weight temperature (small = late layers);
    lambd: λ, weight of the correction; beta: β, sharpness of the affinity kernel;
    min_per_class: anchors switch on once every class holds at least this many entries;
    eviction: which entry leaves a full bucket (``diversity`` is the released default)."""

    size: int = 3
    scale: float = 0.1
    lambd: float = 3.0
    beta: float = 5.0
    min_per_class: int = 2
    eviction: str = "diversity"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"reservoir size M must be >= 1, got {self.size}")
        if self.scale <= 0:
            raise ConfigError(f"scale σ must be > 0, got {self.scale}")
        if self.min_per_class < 1:
            raise ConfigError(f"min_per_class must be >= 1, got {self.min_per_class}")
        if self.eviction not in EVICTIONS:
            raise ConfigError(
                f"eviction must be one of {', '.join(EVICTIONS)}, got {self.eviction!r}"
            )


# The released per-dataset configs (ViT-B/16): (M, σ, λ, β). "default" is ImageNet's, the most
# general of them.
PRESETS: dict[str, ReservoirConfig] = {
    name: ReservoirConfig(size=m, scale=s, lambd=l, beta=b)
    for name, (m, s, l, b) in {
        "default": (3, 0.1, 3.0, 5.0),
        "caltech101": (3, 1.0, 7.0, 6.0),
        "dtd": (3, 1.0, 2.0, 6.0),
        "eurosat": (2, 5.0, 8.0, 7.0),
        "fgvc_aircraft": (3, 0.02, 2.0, 2.0),
        "food101": (3, 0.01, 2.0, 5.0),
        "oxford_flowers": (3, 0.01, 7.0, 7.0),
        "oxford_pets": (3, 5.5, 2.0, 6.0),
        "stanford_cars": (3, 0.1, 1.5, 8.0),
        "sun397": (3, 0.01, 4.0, 3.0),
        "ucf101": (3, 0.01, 6.0, 8.0),
        "imagenet": (3, 0.1, 3.0, 5.0),
        "imagenet_a": (3, 0.01, 3.0, 5.0),
        "imagenet_v2": (3, 0.1, 4.0, 9.0),
        "imagenet_r": (3, 0.1, 3.0, 8.0),
        "imagenet_sketch": (3, 0.1, 4.0, 8.0),
    }.items()
}


def preset(name: str, **overrides) -> ReservoirConfig:
    """A named preset (``tca.reservoir.PRESETS``), optionally with fields overridden."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


@dataclass
class Entry:
    cls_tokens: torch.Tensor  # (L, D) float32 raw CLS after every block
    entropy: float
    embedding: torch.Tensor | None = None  # (E,) normalised image embedding (kept for inspection)
    step: int = 0  # stream position, for FIFO and display


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Prediction entropy (natural log) of logits (..., C)."""
    logp = logits.float().log_softmax(dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def layer_weights(depth: int, scale: float) -> torch.Tensor:
    """w_l = softmax_l(l / ((L - 1) σ)), l = 0..L-1: small σ puts the weight on late layers."""
    l = torch.arange(depth, dtype=torch.float64)
    return torch.softmax(l / (max(depth - 1, 1) * scale), dim=0).float()


def layer_affinity(query: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """a_i = Σ_l w_l cos(v^l, v_i^l). query: (L, D); keys: (M, L, D); weights: (L,) -> (M,)."""
    cos = F.cosine_similarity(query.unsqueeze(0), keys, dim=-1)  # (M, L)
    return cos @ weights


def choose_eviction(bucket: list[Entry], rule: str) -> int:
    """Index of the entry to evict from an over-full bucket."""
    if rule == "fifo":
        return min(range(len(bucket)), key=lambda i: bucket[i].step)
    h = torch.tensor([e.entropy for e in bucket])
    if rule == "uncertainty":
        return int(h.argmax())
    tau = F.normalize(torch.stack([e.cls_tokens.mean(dim=0) for e in bucket]), dim=-1)
    sim = tau @ tau.T
    n = len(bucket)
    mean_sim = (sim.sum(dim=1) - sim.diagonal()) / max(n - 1, 1)
    if rule == "diversity":  # uncertain and redundant leaves first
        return int((h + mean_sim).argmax())
    dissim = 1.0 - mean_sim
    spread = float(dissim.max() - dissim.min())
    w = int((float(h.max() - h.min())) / spread) if spread > 0 else 0
    return int((h + w * dissim).argmax())


@dataclass
class Reservoir:
    """Per-class buckets of past test images' CLS tokens.

    ``update`` files an image under its predicted class (before correction), evicts when a
    bucket exceeds M, and keeps buckets sorted by entropy. ``anchors`` returns per-class means
    (C, L, D) once every class holds ``min_per_class`` entries, else None. ``correction`` gives
    λ Σ_{i in R_c} exp(-β (1 - a_i)) per class.
    """

    num_classes: int
    config: ReservoirConfig = field(default_factory=ReservoirConfig)
    buckets: list[list[Entry]] = field(init=False)
    steps: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError("a reservoir needs at least one class")
        self.reset()

    def reset(self) -> None:
        self.buckets = [[] for _ in range(self.num_classes)]
        self.steps = 0

    @property
    def active(self) -> bool:
        return all(len(b) >= self.config.min_per_class for b in self.buckets)

    def anchors(self) -> torch.Tensor | None:
        if not self.active:
            return None
        return torch.stack(
            [torch.stack([e.cls_tokens for e in b]).mean(dim=0) for b in self.buckets]
        )

    def update(
        self, cls_tokens: torch.Tensor, logits: torch.Tensor, embedding: torch.Tensor | None = None
    ) -> int:
        """Insert one image (cls_tokens (L, D), logits (C,)) under its predicted class."""
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"logits have {logits.shape[-1]} classes, reservoir has {self.num_classes}"
            )
        pred = int(logits.argmax())
        self.steps += 1
        entry = Entry(
            cls_tokens.detach().float().cpu(),
            float(entropy(logits)),
            None if embedding is None else embedding.detach().float().cpu(),
            self.steps,
        )
        bucket = self.buckets[pred]
        bucket.append(entry)
        if len(bucket) > self.config.size:
            bucket.pop(choose_eviction(bucket, self.config.eviction))
        bucket.sort(key=lambda e: e.entropy)
        return pred

    def correction(self, cls_tokens: torch.Tensor) -> torch.Tensor:
        """The logits correction (C,) for an image with CLS tokens (L, D); one batched product
        over every stored entry, so it stays cheap with hundreds of classes."""
        out = torch.zeros(self.num_classes)
        entries = [(c, e) for c, bucket in enumerate(self.buckets) for e in bucket]
        if not entries:
            return out
        query = cls_tokens.detach().float().cpu()
        keys = torch.stack([e.cls_tokens for _, e in entries])  # (M_total, L, D)
        a = layer_affinity(query, keys, layer_weights(query.shape[0], self.config.scale))
        votes = self.config.lambd * torch.exp(-self.config.beta * (1.0 - a))
        return out.index_add_(0, torch.tensor([c for c, _ in entries]), votes)

    def state_dict(self) -> dict:
        """Plain tensors and numbers (safe for ``torch.save`` / ``torch.load(weights_only=True)``)."""
        return {
            "num_classes": self.num_classes,
            "steps": self.steps,
            "buckets": [
                [
                    {"cls": e.cls_tokens, "entropy": e.entropy, "emb": e.embedding, "step": e.step}
                    for e in b
                ]
                for b in self.buckets
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (the config stays this reservoir's own)."""
        if (
            int(state["num_classes"]) != self.num_classes
            or len(state["buckets"]) != self.num_classes
        ):
            raise ValueError(
                f"state is for {state['num_classes']} classes, reservoir has {self.num_classes}"
            )
        self.buckets = [
            [Entry(e["cls"], float(e["entropy"]), e["emb"], int(e["step"])) for e in b]
            for b in state["buckets"]
        ]
        self.steps = int(state["steps"])

    def summary(self, labels: list[str] | None = None) -> dict:
        """JSON-ready view of the buckets (for the app and reports)."""
        names = labels or [str(i) for i in range(self.num_classes)]
        return {
            "active": self.active,
            "images_seen": self.steps,
            "min_per_class": self.config.min_per_class,
            "size": self.config.size,
            "buckets": {
                n: [{"step": e.step, "entropy": round(e.entropy, 4)} for e in b]
                for n, b in zip(names, self.buckets)
            },
        }


def stream_update(
    reservoir: Reservoir,
    cls_tokens: torch.Tensor,
    logits: torch.Tensor,
    embeddings: torch.Tensor | None = None,
    logit_scale: float | None = None,
) -> torch.Tensor:
    """The released TCA loop for a batch, image by image in order: insert into the reservoir,
    then correct with the updated reservoir (so an image votes for its own class, as in the
    code). cls_tokens: (B, L, D); logits: (B, C). Returns corrected logits (B, C).

    logit_scale: the scale s the logits were computed at (s * cosine; the model's own
    ``logit_scale.exp()``). The presets' λ were tuned against the release's fixed 100 * cosine, so
    the reservoir sees the logits at 100 (the same entropies and predictions as the release) and
    the correction is returned at the logits' own scale: s * cos + (s / 100) * λ Σ exp(...).
    The corrected argmax is then the release's for any s, and the probabilities keep the model's
    temperature. None: the logits are already at 100.
    """
    ratio = 1.0 if logit_scale is None else float(logit_scale) / RELEASED_LOGIT_SCALE
    if ratio <= 0:
        raise ValueError(f"logit scale must be > 0, got {logit_scale}")
    out = logits.detach().float().cpu().clone()
    at_release = out / ratio
    for b in range(logits.shape[0]):
        reservoir.update(
            cls_tokens[b], at_release[b], None if embeddings is None else embeddings[b]
        )
        out[b] += ratio * reservoir.correction(cls_tokens[b])
    return out


__all__ = [
    "Reservoir",
    "ReservoirConfig",
    "PRESETS",
    "preset",
    "stream_update",
    "layer_weights",
    "layer_affinity",
    "choose_eviction",
    "entropy",
    "EVICTIONS",
    "RELEASED_LOGIT_SCALE",
]
