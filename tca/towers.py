"""Tower adapters: what condensation needs to know about one family of vision towers.

The condensing forward in ``tca.patch`` is written once. An adapter tells it, for one family,
where the blocks are, how a block's pre-norm, q/k/v projection, output projection, layer scale
and MLP are reached, how the tower embeds images and pools tokens into features, how many
tokens precede the patches (``prefix``: 1 = a CLS token, 0 = none), and where the signal that
ranks patches comes from (``signal``):

- ``"cls"``: the CLS token's own attention row in the block (CLIP, and timm ViTs that pool by
  their CLS token). The CLS token after each block is the reservoir's per-block key.
- ``"pool"``: for towers without a CLS token that pool with a learned-query attention pool
  (SigLIP / SigLIP 2's MAP head). The pool's query stands in for CLS: its per-head attention
  over the (final-normed) tokens after the block's attention residual ranks the patches, and
  the token it would gather, Σ_j ā_j x_j with ā the head-mean of that attention, stands in for
  the CLS token as the reservoir's per-block key and for choosing domain anchors. Why this
  query: the MAP head's attention is exactly how the tower turns tokens into its embedding, so
  it measures what the embedding will read (CLS attention measures the same thing for CLIP).
  A mean token would weigh every patch alike and carry no ranking. The pool's key projection
  is folded into its query (q·(W_k x + b) = (W_kᵀq)·x + q·b), so a score row costs N·D·h MACs
  (plus 2·D² to form the folded query) instead of the N·D² of projecting every key.

Adding a family is one subclass of :class:`Tower` registered in :data:`TOWERS`.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from .errors import UnsupportedModelError


class Tower:
    """One tower family. Stateless: every method takes the module it reads."""

    family: ClassVar[str] = ""

    # ------------------------------------------------------------------ tower level
    @classmethod
    def accepts(cls, visual: torch.nn.Module) -> bool:
        """Whether ``visual`` belongs to this family (then :meth:`check` says if it is usable)."""
        raise NotImplementedError

    @classmethod
    def check(cls, visual: torch.nn.Module) -> None:
        """Raise UnsupportedModelError saying why this tower cannot be condensed, if so."""

    @classmethod
    def prefix(cls, visual) -> int:
        """Tokens before the patches that never condense (1 = CLS, 0 = none)."""
        return 1

    @classmethod
    def signal(cls, visual) -> str:
        """``"cls"`` or ``"pool"`` (see the module docstring)."""
        return "cls"

    @classmethod
    def blocks(cls, visual) -> Sequence[torch.nn.Module]:
        raise NotImplementedError

    @classmethod
    def grid(cls, visual) -> tuple[int, int]:
        """(rows, columns) of the patch grid."""
        raise NotImplementedError

    @classmethod
    def patch_size(cls, visual) -> int:
        """Side of one (square) patch in pixels."""
        raise NotImplementedError

    @classmethod
    def image_size(cls, visual) -> tuple[int, int]:
        """(height, width) in pixels of the images the tower takes: the patch grid times the
        patch size."""
        rows, cols = cls.grid(visual)
        p = cls.patch_size(visual)
        return rows * p, cols * p

    @classmethod
    def signature_tensors(cls, visual) -> tuple[torch.Tensor, ...]:
        """Tensors that tell one set of weights from another (hashed to resume eval records):
        the patch embedding and the tower's last parameter (its output projection)."""
        return cls.patch_embed_weight(visual), list(visual.parameters())[-1]

    @classmethod
    def embed(cls, visual, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, D) tokens entering block 0."""
        raise NotImplementedError

    @classmethod
    def patch_embed_weight(cls, visual) -> torch.Tensor:
        """The patch embedding's weight: its device and dtype are those images must have."""
        raise NotImplementedError

    @classmethod
    def head(cls, visual, x: torch.Tensor, size: torch.Tensor | None):
        """Final tokens (B, N, D) -> the tower's output; size: (B, N) ToMe token sizes or None."""
        raise NotImplementedError

    # ------------------------------------------------------------------ block level
    @staticmethod
    def qkv(block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-norm and q/k/v projection of x (B, N, D): three (B, h, N, d_h)."""
        raise NotImplementedError

    @staticmethod
    def attn_out(block, o: torch.Tensor) -> torch.Tensor:
        """Heads (B, h, N, d_h) -> output projection (B, N, D), before layer scale."""
        raise NotImplementedError

    @staticmethod
    def own_attention(block, x: torch.Tensor) -> torch.Tensor:
        """The block's own pre-norm and attention module, unmodified (its fused kernel), on
        x (B, N, D): (B, N, D) before layer scale. With :meth:`attn_residual` and
        :meth:`mlp_residual` it is the block's forward split at the condensing point."""
        raise NotImplementedError

    @staticmethod
    def attn_residual(block, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def mlp_residual(block, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ pooled signal
    @classmethod
    def pool_row(cls, visual, x: torch.Tensor) -> torch.Tensor:
        """``signal == "pool"`` only: per-head probabilities (B, h, N) of the pool's query over
        the tokens x (B, N, D)."""
        raise NotImplementedError

    @classmethod
    def pooled_token(cls, visual, x: torch.Tensor) -> torch.Tensor:
        """(B, D): the CLS token, or the token the pool's query gathers (the per-block key)."""
        if cls.signal(visual) == "cls":
            return x[:, 0]
        weight = cls.pool_row(visual, x).mean(dim=1)  # (B, N) float32
        return (weight.unsqueeze(-1) * x.float()).sum(dim=1).to(x.dtype)


class OpenClipViT(Tower):
    """open_clip's own ``VisionTransformer`` (CLIP, OpenCLIP): CLS token, CLS pooling."""

    family = "open_clip ViT"

    @classmethod
    def accepts(cls, visual) -> bool:
        return isinstance(visual, VisionTransformer)

    @classmethod
    def check(cls, visual) -> None:
        if (
            getattr(visual, "pool_type", "tok") != "tok"
            or getattr(visual, "attn_pool", None) is not None
        ):
            raise UnsupportedModelError(
                f"this ViT pools with {visual.pool_type!r}/attention pooling instead of its CLS "
                f"token; condensation ranks patches by CLS attention and needs pool_type='tok'"
            )
        if not all(isinstance(b, ResidualAttentionBlock) for b in visual.transformer.resblocks):
            raise UnsupportedModelError(
                "only open_clip ResidualAttentionBlock towers are supported "
                "(qk-norm / custom-attention blocks are not)"
            )
        if not getattr(visual.transformer, "batch_first", True):
            raise UnsupportedModelError("open_clip >= 2.26 (batch-first transformer) is required")

    @classmethod
    def blocks(cls, visual):
        return visual.transformer.resblocks

    @classmethod
    def grid(cls, visual):
        return tuple(visual.grid_size)

    @classmethod
    def patch_size(cls, visual):
        return visual.conv1.kernel_size[0]

    @classmethod
    def signature_tensors(cls, visual):
        # The projection, or the patch embedding again for towers without one (records written
        # before the tower adapters hashed exactly these).
        proj = visual.proj if visual.proj is not None else visual.conv1.weight
        return visual.conv1.weight, proj

    @classmethod
    def embed(cls, visual, images):
        return visual._embeds(images)

    @classmethod
    def patch_embed_weight(cls, visual):
        return visual.conv1.weight

    @classmethod
    def head(cls, visual, x, size):
        pooled, tokens = visual._pool(x)  # CLS pooling: token sizes play no part
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return (pooled, tokens) if visual.output_tokens else pooled

    @staticmethod
    def qkv(block, x):
        attn = block.attn
        b, n, d = x.shape
        h = attn.num_heads
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        return qkv.view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)

    @staticmethod
    def attn_out(block, o):
        b, h, n, dh = o.shape
        return block.attn.out_proj(o.transpose(1, 2).reshape(b, n, h * dh))

    @staticmethod
    def own_attention(block, x):
        return block.attention(block.ln_1(x))

    @staticmethod
    def attn_residual(block, x, out):
        return x + block.ls_1(out)

    @staticmethod
    def mlp_residual(block, x):
        return x + block.ls_2(block.mlp(block.ln_2(x)))


class TimmViT(Tower):
    """open_clip's ``TimmModel`` around a timm ``VisionTransformer`` (SigLIP, SigLIP 2, ...):
    ``visual.trunk.blocks`` of timm ``Block``s, pooled either by a CLS token (``token``) or, with
    no CLS token, by an attention pool with one learned query (``map``)."""

    family = "timm ViT"

    @classmethod
    def accepts(cls, visual) -> bool:
        from open_clip.timm_model import TimmModel

        return isinstance(visual, TimmModel)

    @classmethod
    def check(cls, visual) -> None:
        from timm.layers import Attention, AttentionPoolLatent
        from timm.models.vision_transformer import Block
        from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

        trunk = visual.trunk
        name = type(trunk).__name__
        if not isinstance(trunk, TimmVisionTransformer):
            raise UnsupportedModelError(
                f"timm {name} tower is not supported: condensation needs a timm VisionTransformer "
                f"(patch tokens through plain attention blocks)"
            )
        if getattr(trunk, "dynamic_img_size", False):
            raise UnsupportedModelError("timm towers with dynamic image size are not supported")
        bad = [
            type(b).__name__
            for b in trunk.blocks
            if type(b) is not Block or type(b.attn) is not Attention
        ]
        if bad:
            raise UnsupportedModelError(
                f"timm {bad[0]} blocks are not supported (only timm's plain "
                f"Block with Attention: qkv projection, then proj)"
            )
        if any(getattr(b.attn, "gate", None) is not None for b in trunk.blocks):
            raise UnsupportedModelError("timm gated attention blocks are not supported")
        pool = trunk.attn_pool
        prefix = trunk.num_prefix_tokens
        if isinstance(pool, AttentionPoolLatent) and prefix == 0:
            if pool.latent_len != 1 or pool.pos_embed is not None or pool.pool != "token":
                raise UnsupportedModelError(
                    "this tower's attention pool has several latent queries or its own position "
                    "embedding; condensation uses a single pool query to stand in for CLS"
                )
            if not isinstance(pool.k_norm, torch.nn.Identity):
                raise UnsupportedModelError(
                    "attention pools with key normalisation are not supported "
                    "(the pool query cannot be folded into the keys)"
                )
            return
        if pool is None and prefix == 1 and trunk.global_pool == "token":
            return
        how = type(pool).__name__ if pool is not None else f"global_pool={trunk.global_pool!r}"
        raise UnsupportedModelError(
            f"this timm tower has no usable pooling signal to rank patches by: it has "
            f"{prefix} prefix token(s) and pools with {how}. Condensation needs either one CLS "
            f"token that the tower pools by ('token') or no CLS token and a single-query "
            f"attention pool ('map', as in SigLIP); average pooling weighs all tokens alike"
        )

    @classmethod
    def prefix(cls, visual) -> int:
        return visual.trunk.num_prefix_tokens

    @classmethod
    def signal(cls, visual) -> str:
        return "pool" if visual.trunk.attn_pool is not None else "cls"

    @classmethod
    def blocks(cls, visual):
        return visual.trunk.blocks

    @classmethod
    def grid(cls, visual):
        return tuple(visual.trunk.patch_embed.grid_size)

    @classmethod
    def patch_size(cls, visual):
        return visual.trunk.patch_embed.patch_size[0]

    @classmethod
    def patch_embed_weight(cls, visual):
        return visual.trunk.patch_embed.proj.weight

    @classmethod
    def embed(cls, visual, images):
        trunk = visual.trunk
        return trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(images))))

    @classmethod
    def head(cls, visual, x, size):
        trunk = visual.trunk
        x = trunk.norm(x)
        if size is None or trunk.attn_pool is None:
            x = trunk.forward_head(x)
        else:  # ToMe's proportional attention in the pool too: a merged token counts its size
            x = trunk.attn_pool(x, attn_mask=size.log()[:, None, None, :].to(x.dtype))
            x = trunk.head(trunk.head_drop(trunk.fc_norm(x)))
        return visual.head(x)

    @staticmethod
    def qkv(block, x):
        attn = block.attn
        b, n, _ = x.shape
        qkv = attn.qkv(block.norm1(x)).reshape(b, n, 3, attn.num_heads, attn.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return attn.q_norm(q), attn.k_norm(k), v

    @staticmethod
    def attn_out(block, o):
        b, h, n, dh = o.shape
        attn = block.attn
        return attn.proj_drop(attn.proj(attn.norm(o.transpose(1, 2).reshape(b, n, h * dh))))

    @staticmethod
    def own_attention(block, x):
        return block.attn(block.norm1(x))

    @staticmethod
    def attn_residual(block, x, out):
        return x + block.drop_path1(block.ls1(out))

    @staticmethod
    def mlp_residual(block, x):
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

    @classmethod
    def pool_row(cls, visual, x):
        # float32 throughout (the row is small): half-precision towers rank like float32 ones
        trunk = visual.trunk
        pool = trunk.attn_pool
        h, dh = pool.num_heads, pool.head_dim
        q = pool.q_norm(pool.q(pool.latent).reshape(1, h, dh)[0]).float() * pool.scale  # (h, d_h)
        w_k = pool.kv.weight[: h * dh].float()  # (h d_h, D): the key half of kv
        fold = torch.einsum("hc,hcd->hd", q, w_k.view(h, dh, -1))  # (h, D)
        logits = trunk.norm(x).float() @ fold.T  # (B, N, h)
        if pool.kv.bias is not None:
            logits = logits + (q * pool.kv.bias[: h * dh].float().view(h, dh)).sum(-1)
        return logits.softmax(dim=1).transpose(1, 2)  # (B, h, N)


def input_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the vision tower's images must have (its patch embedding's)."""
    visual = getattr(model, "visual", model)
    return tower_for(visual).patch_embed_weight(visual).dtype


# Families tried in order; the first that accepts a tower handles it.
TOWERS: tuple[type[Tower], ...] = (OpenClipViT, TimmViT)


def tower_for(model: torch.nn.Module) -> type[Tower]:
    """The adapter for ``model``'s vision tower, or UnsupportedModelError saying why none fits."""
    visual = getattr(model, "visual", model)
    for tower in TOWERS:
        if tower.accepts(visual):
            tower.check(visual)
            return tower
    raise UnsupportedModelError(
        f"{type(visual).__name__} vision tower is not supported: condensation needs a ViT of "
        f"patch tokens (open_clip's VisionTransformer or a timm VisionTransformer, e.g. SigLIP); "
        f"ResNets have no tokens to condense"
    )
