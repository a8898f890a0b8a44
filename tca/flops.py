"""Analytic MAC counts from the actual token counts.

Convention: 1 MAC = one multiply-accumulate. The token-reduction papers (EViT, ToMe, TCA) call a
MAC a "FLOP", so their "GFLOPs" are GMACs: ViT-B/16 @ 224 = 17.56 GMACs = 35.13 GFLOPs.

Per block with N_in tokens into attention (one more where TCA prepends a domain anchor) and N_out
into the MLP: 4·N_in·D² + 2·N_in²·D + 2·m·N_out·D² (qkv, QK^T, AV, output projection, MLP with
ratio m). Plus the patch embedding (N_p·3·P²·D) and the head: the final projection (D·E) for
CLS pooling; for an attention pool (SigLIP's MAP head, one learned query over the N final
tokens) also its query (D²), keys and values (2·N·D²), attention (2·N·D), output projection
(D²) and MLP (2·D·hidden). LayerNorm, softmax, GELU and residual adds are not counted (as in the
papers). Condensation overhead (CLS attention row, or the pool query's row for towers without
CLS, coreset distances, fusing, ToMe matching, ATS value norms) is reported separately.
ATS keeps a different number of tokens in every image: its schedule holds the budget (an upper
bound) and :func:`macs_per_image` counts each image from its actual counts.

Towers without a CLS token (``prefix=0``) have N = N_p tokens and condense all of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import open_clip
import torch

from .config import CondenseConfig, Schedule, plan_layers
from .errors import UnknownModelError, UnsupportedModelError
from .towers import tower_for

CONVENTION = 'GMACs (1 MAC = 1 multiply-add; the papers\' "GFLOPs" are GMACs; FLOPs = 2 x MACs)'


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
    prefix: int = 1  # tokens before the patches: 1 = CLS, 0 = none (SigLIP)
    pool: str = "tok"  # "tok" (CLS / token pooling) or "map" (attention pool, one query)
    pool_hidden: int = 0  # MLP width of the attention pool ("map")
    proj: bool = True  # a final D x E projection after pooling

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def n_tokens(self) -> int:
        return self.grid**2 + self.prefix

    def schedule(self, config: CondenseConfig, anchors: bool = False) -> Schedule:
        """The token schedule of ``config`` on this geometry."""
        return plan_layers(config, self.n_tokens, self.depth, anchors, self.prefix)

    @classmethod
    def from_name(cls, model_name: str) -> Geometry:
        cfg = open_clip.get_model_config(model_name)
        if cfg is None:
            raise UnknownModelError(f"unknown open_clip model {model_name!r}")
        v = cfg["vision_cfg"]
        if v.get("timm_model_name"):
            return cls._from_timm_cfg(cfg)
        if not isinstance(v.get("layers"), int):
            raise UnsupportedModelError(
                f"{model_name} has no ViT vision tower (ResNets have no tokens to condense)"
            )
        size = v["image_size"] if isinstance(v["image_size"], int) else v["image_size"][0]
        return cls(
            v["width"],
            v["layers"],
            v["width"] // v.get("head_width", 64),
            v["patch_size"],
            size,
            cfg["embed_dim"],
            v.get("mlp_ratio", 4.0),
        )

    @classmethod
    def _from_timm_cfg(cls, cfg: dict) -> Geometry:
        """A timm tower's geometry, read from the tower built on the meta device (no memory, no
        weights, no download)."""
        from open_clip.timm_model import TimmModel

        v = cfg["vision_cfg"]
        with torch.device("meta"):
            visual = TimmModel(
                v["timm_model_name"],
                cfg["embed_dim"],
                image_size=v.get("image_size", 224),
                pool=v.get("timm_pool", "avg"),
                proj=v.get("timm_proj", "linear"),
                proj_bias=v.get("timm_proj_bias", False),
            )
        return cls.from_model(visual)

    @classmethod
    def from_model(cls, model) -> Geometry:
        visual = getattr(model, "visual", model)
        if not hasattr(visual, "transformer"):
            return cls._from_timm(visual)
        block = visual.transformer.resblocks[0]
        patch = visual.conv1.kernel_size[0]
        return cls(
            visual.transformer.width,
            len(visual.transformer.resblocks),
            block.attn.num_heads,
            patch,
            visual.grid_size[0] * patch,
            visual.proj.shape[1] if visual.proj is not None else visual.transformer.width,
            block.mlp.c_fc.out_features / visual.transformer.width,
        )

    @classmethod
    def _from_timm(cls, visual) -> Geometry:
        tower = tower_for(visual)  # refuses towers it cannot condense, with the reason
        trunk = visual.trunk
        block = trunk.blocks[0]
        width = trunk.embed_dim
        pool = trunk.attn_pool
        linears = [m for m in visual.head.modules() if isinstance(m, torch.nn.Linear)]
        if len(linears) > 1 or not isinstance(trunk.head, torch.nn.Identity):
            raise UnsupportedModelError(
                "timm towers with an MLP or classifier head are not counted"
            )
        embed = linears[0].out_features if linears else width
        return cls(
            width,
            len(trunk.blocks),
            block.attn.num_heads,
            trunk.patch_embed.patch_size[0],
            trunk.patch_embed.img_size[0],
            embed,
            block.mlp.fc1.out_features / width,
            prefix=tower.prefix(visual),
            pool="map" if pool is not None else "tok",
            pool_hidden=pool.mlp.fc1.out_features if pool is not None else 0,
            proj=bool(linears),
        )


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
        return {
            "convention": CONVENTION,
            "gmacs": self.gmacs,
            "gmacs_model": self.model / 1e9,
            "gmacs_overhead": self.overhead / 1e9,
            "patch_embed": self.patch_embed,
            "head": self.head,
            "layers": [asdict(l) | {"total": l.total} for l in self.layers],
        }


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
        pool_row = geom.pool == "map" and geom.prefix == 0
        overhead = plan.overhead(n_in, d, h, pool_row) if plan is not None else 0
        layers.append(LayerMacs(i, n_in, n_out, attention, mlp, overhead))
    patch_embed = geom.grid**2 * 3 * geom.patch**2 * d
    return FlopReport(tuple(layers), patch_embed, _head(geom, schedule.tokens[-1]))


def _head(geom: Geometry, n: int) -> int:
    """Pooling and projection of the ``n`` final tokens."""
    d = geom.width
    macs = d * geom.embed_dim if geom.proj else 0
    if geom.pool == "map":  # query, keys+values, q·k and attention·v, output projection, MLP
        macs += d * d + 2 * n * d * d + 2 * n * d + d * d + 2 * d * geom.pool_hidden
    return macs


def macs_per_image(
    geom: Geometry, schedule: Schedule, tokens_per_image: Sequence[Sequence[int]]
) -> list[FlopReport]:
    """One report per image from the token counts it actually had (ATS varies per image; every
    other method gives the schedule's counts). Padding in a batch is not counted: one image run
    alone costs exactly this."""
    return [count_macs(geom, schedule.realised(t)) for t in tokens_per_image]


def mean_gmacs(reports: Sequence[FlopReport]) -> float:
    """The average GMACs over images, as the ATS paper (and TCA's Table 1, "*") reports."""
    return sum(r.gmacs for r in reports) / len(reports) if reports else float("nan")


def macs_for(geom: Geometry, config: CondenseConfig, anchors: bool = False) -> FlopReport:
    """The analytic report of ``config`` on ``geom``, without running a model."""
    return count_macs(geom, geom.schedule(config, anchors))


def saved_percent(baseline: FlopReport, condensed: FlopReport) -> float:
    return 100.0 * (1.0 - condensed.total / baseline.total)
