"""Analytic MAC counts from the actual token counts.

Convention: 1 MAC = one multiply-accumulate. The token-reduction papers (EViT, ToMe, TCA) call a
MAC a "FLOP", so their "GFLOPs" are GMACs: ViT-B/16 @ 224 = 17.56 GMACs = 35.13 GFLOPs.

Per block with N_in tokens into attention (one more where TCA prepends a domain anchor) and N_out
into the MLP: 4·N_in·D² + 2·N_in²·D + 2·m·N_out·D² (qkv, QK^T, AV, output projection, MLP with
ratio m). Plus the patch embedding (N_p·3·P²·D) and the final projection (D·E). LayerNorm,
softmax, GELU and residual adds are not counted (as in the papers). Condensation overhead (CLS
attention row, coreset distances, fusing, ToMe matching) is reported separately.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import open_clip

from .config import CondenseConfig, Schedule, plan_layers
from .errors import UnknownModelError, UnsupportedModelError

CONVENTION = "GMACs (1 MAC = 1 multiply-add; the papers' \"GFLOPs\" are GMACs; FLOPs = 2 x MACs)"


@dataclass(frozen=True)
class Geometry:
    """The ViT shape that FLOPs depend on."""

    width: int
    depth: int
    heads: int
    patch: int
    image_size: int
    embed_dim: int
    mlp_ratio: float = 4.0

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def n_tokens(self) -> int:
        return self.grid ** 2 + 1

    @classmethod
    def from_name(cls, model_name: str) -> Geometry:
        cfg = open_clip.get_model_config(model_name)
        if cfg is None:
            raise UnknownModelError(f"unknown open_clip model {model_name!r}")
        v = cfg["vision_cfg"]
        if "timm_model_name" in v or not isinstance(v.get("layers"), int):
            raise UnsupportedModelError(f"{model_name} has no plain ViT vision tower with a CLS "
                                        f"token")
        size = v["image_size"] if isinstance(v["image_size"], int) else v["image_size"][0]
        return cls(v["width"], v["layers"], v["width"] // v.get("head_width", 64), v["patch_size"],
                   size, cfg["embed_dim"], v.get("mlp_ratio", 4.0))

    @classmethod
    def from_model(cls, model) -> Geometry:
        visual = getattr(model, "visual", model)
        block = visual.transformer.resblocks[0]
        patch = visual.conv1.kernel_size[0]
        return cls(visual.transformer.width, len(visual.transformer.resblocks), block.attn.num_heads,
                   patch, visual.grid_size[0] * patch,
                   visual.proj.shape[1] if visual.proj is not None else visual.transformer.width,
                   block.mlp.c_fc.out_features / visual.transformer.width)


@dataclass(frozen=True)
class LayerMacs:
    layer: int
    n_attention: int  # tokens entering attention (anchor included)
    n_mlp: int  # tokens entering the MLP
    attention: int
    mlp: int
    overhead: int

    @property
    def total(self) -> int:
        return self.attention + self.mlp


@dataclass(frozen=True)
class FlopReport:
    layers: tuple[LayerMacs, ...]
    patch_embed: int
    head: int

    @property
    def blocks(self) -> int:
        return sum(l.total for l in self.layers)

    @property
    def overhead(self) -> int:
        return sum(l.overhead for l in self.layers)

    @property
    def total(self) -> int:
        """Model MACs, condensation overhead included."""
        return self.patch_embed + self.blocks + self.head + self.overhead

    @property
    def model(self) -> int:
        """Model MACs without the (small) condensation overhead."""
        return self.patch_embed + self.blocks + self.head

    @property
    def gmacs(self) -> float:
        return self.total / 1e9

    def to_dict(self) -> dict:
        return {"convention": CONVENTION, "gmacs": self.gmacs, "gmacs_model": self.model / 1e9,
                "gmacs_overhead": self.overhead / 1e9, "patch_embed": self.patch_embed,
                "head": self.head, "layers": [asdict(l) | {"total": l.total} for l in self.layers]}


def count_macs(geom: Geometry, schedule: Schedule) -> FlopReport:
    """MACs of one image through a ViT that follows ``schedule``."""
    d, h = geom.width, geom.heads
    hidden = int(geom.mlp_ratio * d)
    layers = []
    for i, plan in enumerate(schedule.plans):
        n_in = schedule.attention_tokens(i)
        n_out = schedule.tokens[i]
        attention = 4 * n_in * d * d + 2 * n_in * n_in * d
        mlp = 2 * n_out * d * hidden
        layers.append(LayerMacs(i, n_in, n_out, attention, mlp, _overhead(plan, n_in, d, h)))
    patch_embed = geom.grid ** 2 * 3 * geom.patch ** 2 * d
    return FlopReport(tuple(layers), patch_embed, d * geom.embed_dim)


def _overhead(plan, n_in: int, d: int, h: int) -> int:
    if plan is None:
        return 0
    if plan.kind == "tome":
        na, nb = (n_in + 1) // 2, n_in // 2
        return na * nb * (d // h) + n_in * d  # cosine matching on head-mean keys + weighted merge
    cls_row = n_in * d  # one CLS query against every key, all heads
    coreset = plan.t2 * plan.t2 * d + plan.t2 * d if plan.t2 > plan.k else 0
    return cls_row + coreset + plan.t3 * d


def macs_for(geom: Geometry, config: CondenseConfig, anchors: bool = False) -> FlopReport:
    """The analytic report of ``config`` on ``geom``, without running a model."""
    return count_macs(geom, plan_layers(config, geom.n_tokens, geom.depth, anchors))


def saved_percent(baseline: FlopReport, condensed: FlopReport) -> float:
    return 100.0 * (1.0 - condensed.total / baseline.total)
