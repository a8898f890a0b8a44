"""One-pass trace of every patch's fate at every depth.

During a traced forward the patched model keeps, per image, ``token_of`` (P,): which current
token holds each original patch, and ``pruned`` (P,): whether the patch was ever fused into the
"class-irrelevant" token (or dropped outright, as ATS does; its token index is then DROPPED).
Each condensing layer composes its ``dest`` map into ``token_of``; plain layers leave both
tensors untouched, so recording them costs two references per block. Every block also records
the norm of each patch's token as the block starts and the high-norm threshold of that input
(``tca.norms``): one norm and two medians over the tokens, on the device, no synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .norms import high_norm_threshold, token_norms

KEPT, MERGED, PRUNED = 0, 1, 2
DROPPED = -1  # token_index of a patch that no token holds any more (ATS drops tokens)
FATE_NAMES = {KEPT: "kept", MERGED: "merged", PRUNED: "pruned"}


class TraceRecorder:
    """Mutable per-forward state; becomes an immutable :class:`Trace` at the end."""

    def __init__(self, batch: int, n_patches: int, device: torch.device, prefix: int = 1) -> None:
        # prefix: tokens before the patches (1 = CLS; 0 for towers without a CLS token)
        self.prefix = prefix
        self.token_of = torch.arange(prefix, n_patches + prefix, device=device).expand(
            batch, n_patches
        )
        self.pruned = torch.zeros((batch, n_patches), dtype=torch.bool, device=device)
        self.per_layer: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.cls_attention: dict[int, torch.Tensor] = {}
        self.scores: dict[int, torch.Tensor] = {}
        self.norms: list[tuple[torch.Tensor, torch.Tensor]] = []  # per block: (B, P), (B,)

    def block_input(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Record the tokens entering a block: each patch's token norm and the input's
        high-norm threshold. x: (B, N, D); valid: (B, N) bool, False for padding (ATS), or None.
        """
        norms = token_norms(x)
        if valid is not None:
            norms = norms.masked_fill(~valid, float("nan"))
        threshold = high_norm_threshold(norms[:, self.prefix :])
        alive = self.token_of >= 0
        per_patch = norms.gather(1, self.token_of.clamp_min(0)).masked_fill(~alive, float("nan"))
        self.norms.append((per_patch, threshold))

    def condense(
        self,
        layer: int,
        dest: torch.Tensor,
        pruned: torch.Tensor | None,
        patch_attention: torch.Tensor | None,
        score: torch.Tensor | None = None,
    ) -> None:
        """dest: (B, N_in), -1 for dropped tokens; pruned: (B, N_in) bool; patch_attention:
        (B, N_in - prefix) head-mean CLS attention of the tokens entering the layer; score:
        (B, N_in - prefix) the score the method ranked them by, when it is not that attention
        (each patch gets its token's value; NaN for patches dropped earlier)."""
        alive = self.token_of >= 0  # patches an earlier layer dropped (ATS) stay dropped
        idx = self.token_of.clamp_min(0)
        if patch_attention is not None:
            self.cls_attention[layer] = self._per_patch(patch_attention, idx, alive)
        if score is not None:
            self.scores[layer] = self._per_patch(score, idx, alive)
        if pruned is not None:
            self.pruned = self.pruned | (pruned.gather(1, idx) & alive)
        self.token_of = torch.where(alive, dest.gather(1, idx), DROPPED)

    def _per_patch(self, value: torch.Tensor, idx: torch.Tensor, alive: torch.Tensor):
        """(B, N_in - prefix) per token -> (B, P) float32 on the CPU, per original patch."""
        if self.prefix:
            value = torch.cat(
                [value.new_full((value.shape[0], self.prefix), float("nan")), value], dim=1
            )
        return value.gather(1, idx).masked_fill(~alive, float("nan")).float().cpu()

    def end_block(self) -> None:
        self.per_layer.append((self.token_of, self.pruned))

    def finish(
        self,
        tokens_per_layer: list[int],
        grid: tuple[int, int],
        condensing_layers: tuple[int, ...],
        tokens_per_image: list[list[int]] | None = None,
    ) -> Trace:
        token_index = torch.stack([t for t, _ in self.per_layer], dim=1).cpu()  # (B, L, P)
        pruned = torch.stack([p for _, p in self.per_layer], dim=1).cpu()
        b, l, p = token_index.shape
        held = token_index >= 0
        idx = token_index.clamp_min(0)
        counts = torch.zeros((b, l, max(tokens_per_layer)), dtype=torch.long)
        counts.scatter_add_(2, idx, held.long())
        shared = (counts.gather(2, idx) > 1) & held
        fate = torch.full((b, l, p), KEPT, dtype=torch.uint8)
        fate[shared] = MERGED
        fate[pruned] = PRUNED
        per_image = (
            tuple(tuple(int(n) for n in row) for row in tokens_per_image)
            if tokens_per_image is not None
            else None
        )
        norms = threshold = None
        if len(self.norms) == l:
            norms = torch.stack([n for n, _ in self.norms], dim=1).cpu()  # (B, L, P)
            threshold = torch.stack([t for _, t in self.norms], dim=1).cpu()  # (B, L)
        return Trace(
            tuple(tokens_per_layer),
            grid,
            token_index,
            fate,
            self.cls_attention,
            tuple(condensing_layers),
            self.prefix,
            per_image,
            self.scores,
            norms,
            threshold,
        )


@dataclass(frozen=True)
class Trace:
    """Per-layer token counts and patch fates of one traced forward.

    token_index: (B, L, P) long, the token (index into that layer's output) holding each patch
    after block l, or DROPPED (-1) once ATS dropped it (no token holds it; its fate is PRUNED).
    fate: (B, L, P) uint8, KEPT / MERGED / PRUNED. A patch is MERGED when its
    token holds other patches too, PRUNED once it was fused into a class-irrelevant token
    (final). cls_attention: layer -> (B, P) head-mean CLS attention that drove that layer's
    decision (for towers without CLS: the attention of the query that stands in for it).
    Patches are in row-major order of the ``grid`` (rows, cols). prefix: tokens before the
    patches at every layer (1 = CLS at index 0; 0 = no CLS token, every token holds patches).
    tokens_per_layer: the token count at every block output; with per-image counts (ATS) in a
    batch, the padded width (the largest count), and ``tokens(image)`` gives each image's own.
    """

    tokens_per_layer: tuple[int, ...]
    grid: tuple[int, int]
    token_index: torch.Tensor
    fate: torch.Tensor
    cls_attention: dict[int, torch.Tensor]
    condensing_layers: tuple[int, ...]
    prefix: int = 1
    tokens_per_image: tuple[tuple[int, ...], ...] | None = None  # (B, L); None: all equal
    # layer -> (B, P): the score the method ranked that layer's tokens by (``Method.score``
    # names it: CLS attention, ATS's significance, ToMe's best similarity, PiToMe's energy,
    # Zero-TPrune's PageRank importance, Representation Shift's shift), per patch as
    # cls_attention is; NaN for patches dropped earlier.
    scores: dict[int, torch.Tensor] = field(default_factory=dict)
    # (B, L, P) float32: the norm of the token holding each patch as block l starts (NaN:
    # dropped earlier); (B, L): that input's high-norm threshold (``tca.norms``). None for
    # traces built by hand.
    token_norm: torch.Tensor | None = None
    norm_threshold: torch.Tensor | None = None

    @property
    def depth(self) -> int:
        return len(self.tokens_per_layer)

    def tokens(self, image: int = 0) -> tuple[int, ...]:
        """Token count at every block output for one image of the batch."""
        if self.tokens_per_image is None:
            return self.tokens_per_layer
        return self.tokens_per_image[image]

    def groups(self, layer: int, image: int = 0) -> dict[int, list[int]]:
        """Merged groups at ``layer``: token index -> its non-pruned patches. The token holds at
        least two patches; a group lists a single patch when the others in its token were fused
        (pruned) earlier and then merged along with it."""
        out: dict[int, list[int]] = {}
        idx = self.token_index[image, layer].tolist()
        fate = self.fate[image, layer].tolist()
        for patch, (tok, f) in enumerate(zip(idx, fate)):
            if f == MERGED:
                out.setdefault(tok, []).append(patch)
        return out

    def source(self, layer: int, image: int = 0) -> torch.Tensor:
        """ToMe-style source matrix (N_l, P) bool: S[j, i] iff patch i lives in token j."""
        n = self.tokens(image)[layer]
        idx = self.token_index[image, layer]
        held = idx >= 0  # dropped patches (ATS) live in no token: all-zero columns
        src = torch.zeros((n, idx.shape[0]), dtype=torch.bool)
        src[idx[held], torch.arange(idx.shape[0])[held]] = True
        return src

    def high_norm(self, layer: int, image: int = 0) -> torch.Tensor:
        """(P,) bool: the patches whose token was high-norm as block ``layer`` started
        (``tca.norms``); all False where no norms were recorded."""
        if self.token_norm is None or self.norm_threshold is None:
            return torch.zeros(self.token_index.shape[-1], dtype=torch.bool)
        return self.token_norm[image, layer] > self.norm_threshold[image, layer]

    def fate_counts(self, layer: int, image: int = 0) -> dict[str, int]:
        f = self.fate[image, layer]
        return {name: int((f == code).sum()) for code, name in FATE_NAMES.items()}

    def select(self, image: int) -> Trace:
        """The trace of one image of the batch (batch dimension kept, size 1)."""
        sl = slice(image, image + 1)
        tokens = self.tokens(image)
        return Trace(
            tokens,
            self.grid,
            self.token_index[sl],
            self.fate[sl],
            {k: v[sl] for k, v in self.cls_attention.items()},
            self.condensing_layers,
            self.prefix,
            None if self.tokens_per_image is None else (tokens,),
            {k: v[sl] for k, v in self.scores.items()},
            None if self.token_norm is None else self.token_norm[sl],
            None if self.norm_threshold is None else self.norm_threshold[sl],
        )

    def to_dict(self, image: int = 0) -> dict:
        """JSON-ready summary: counts, fates and groups per layer (and the patches of high-norm
        tokens at each block's input, where the norms were recorded)."""
        layers = []
        for l in range(self.depth):
            layer = {
                "layer": l,
                "tokens": self.tokens(image)[l],
                "fates": self.fate_counts(l, image),
                "fate": self.fate[image, l].tolist(),
                "token_index": self.token_index[image, l].tolist(),
                "condensing": l in self.condensing_layers,
            }
            if self.token_norm is not None:  # the patches of the block input's high-norm tokens
                layer["high_norm"] = self.high_norm(l, image).nonzero().flatten().tolist()
            layers.append(layer)
        return {
            "grid": list(self.grid),
            "fate_codes": {v: k for k, v in FATE_NAMES.items()},
            "layers": layers,
        }
