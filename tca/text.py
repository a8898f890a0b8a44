"""The text side, exact and short: prompts encoded at the length of the longest prompt in the
batch instead of the full context, and class embeddings cached per label.

CLIP's text transformer is causal and pools at the end-of-text token, so the tokens after the
longest prompt's end-of-text (padding) never reach a pooled position: cutting the context to
``L = max(pool index) + 1`` and slicing the positional embedding and the causal mask to
``L x L`` gives the same embeddings as the full 77-token pass, several times faster (prompt
ensembles are 8-20 tokens long). The cut pass reuses the model's own modules; towers where the
cut is not exact (no causal mask, e.g. SigLIP's; a CLS token appended at the end; pooling at
the last or every position; towers of unknown type) go through open_clip's ``encode_text``.
"""

from __future__ import annotations

import threading
import typing
from collections import OrderedDict
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

POOLS_AT_EOT = ("argmax", "eos")  # open_clip pool types that read the end-of-text position
CHUNK = 256  # prompts per forward pass: bounds memory and paces progress reports
CACHE_LABELS = 4096  # class embeddings kept per model (about 2-3 KB each)


class TextTower(NamedTuple):
    """The modules of an open_clip causal text tower that the cut pass reuses."""

    token_embedding: torch.nn.Module
    positional_embedding: torch.Tensor  # (77, W)
    transformer: torch.nn.Module
    ln_final: torch.nn.Module
    text_projection: torch.nn.Module | torch.Tensor | None  # Linear, (W, E) or None
    attn_mask: torch.Tensor  # (77, 77) additive causal mask
    pool_type: str
    eos_id: int | None


def text_tower(model: torch.nn.Module) -> TextTower | None:
    """The causal text tower of an open_clip ``CLIP`` (or ``CustomTextCLIP`` with an open_clip
    ``TextTransformer``) if the cut pass is exact for it, else None."""
    src = model
    pool = getattr(model, "text_pool_type", None)
    eos = getattr(model, "text_eos_id", None)
    text = getattr(model, "text", None)
    if text is not None and not hasattr(model, "token_embedding"):  # CustomTextCLIP
        if type(text).__name__ != "TextTransformer" or getattr(text, "cls_emb", None) is not None:
            return None
        if getattr(text, "use_pad_mask", False):  # exact too, but keep to open_clip's own pass
            return None
        src, pool, eos = text, getattr(text, "pool_type", None), getattr(text, "eos_id", None)
    parts: list[Any] = [
        getattr(src, n, None)
        for n in ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    ]
    if any(p is None for p in parts) or pool not in POOLS_AT_EOT:
        return None
    if pool == "eos" and eos is None:
        return None
    emb, pos, transformer, ln_final, mask = parts
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or not _is_causal(mask):
        return None
    if not hasattr(transformer, "resblocks"):
        return None
    return TextTower(
        emb, pos, transformer, ln_final, getattr(src, "text_projection", None), mask, pool, eos
    )


def _is_causal(mask: torch.Tensor) -> bool:
    """Whether an additive (L, L) mask blocks exactly the future positions."""
    future = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.isneginf(mask[future]).all()) and bool((mask[~future] == 0).all())


def pool_index(tower: TextTower, tokens: torch.Tensor) -> torch.Tensor:
    """(N,) long: the position each prompt is pooled at (its end-of-text token), as open_clip's
    ``text_global_pool`` picks it. tokens: (N, 77)."""
    if tower.pool_type == "argmax":
        return tokens.argmax(dim=-1)
    assert tower.eos_id is not None  # text_tower() refuses eos pooling without an id
    return torch.eq(tokens, tower.eos_id).int().argmax(dim=-1)


def encode_cut(tower: TextTower, tokens: torch.Tensor) -> torch.Tensor:
    """(N, E) unnormalised text features, equal to open_clip's ``encode_text(tokens)``.
    tokens: (N, 77) long. Runs the tower on the first L = max(pool index) + 1 positions."""
    idx = pool_index(tower, tokens)
    length = int(idx.max()) + 1
    get_cast: Any = getattr(tower.transformer, "get_cast_dtype", None)
    cast = get_cast() if get_cast is not None else tower.positional_embedding.dtype
    x = tower.token_embedding(tokens[:, :length]).to(cast)  # (N, L, W)
    x = x + tower.positional_embedding[:length].to(cast)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = x[torch.arange(x.shape[0], device=x.device), idx]  # (N, W): pool before the norm,
    x = tower.ln_final(x)  # which is per position, so the order does not change the result
    proj = tower.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def encode_tokens(
    model: torch.nn.Module, tokens: torch.Tensor, tower: TextTower | None = None
) -> torch.Tensor:
    """(N, E) unnormalised features of (N, 77) tokens: the cut pass where it is exact
    (``tower``, from :func:`text_tower`), else open_clip's ``encode_text``."""
    with torch.inference_mode():
        if tower is not None:
            return encode_cut(tower, tokens)
        clip_model: Any = model  # open_clip's CLIP (nn.Module attributes are untyped)
        return clip_model.encode_text(tokens)


def ensemble(features: torch.Tensor, n_labels: int, n_templates: int) -> torch.Tensor:
    """(C, E) class embeddings from (C * T, E) prompt features in label-major order: each
    prompt normalised, averaged over the T templates, re-normalised (CLIP's prompt ensembling)."""
    feats = F.normalize(features.float(), dim=-1)
    return F.normalize(feats.view(n_labels, n_templates, -1).mean(dim=1), dim=-1)


class LabelCache:
    """Class embeddings per (label, templates), least recently used dropped past ``max_labels``.
    One per model, so the key needs no model. Thread-safe."""

    def __init__(self, max_labels: int = CACHE_LABELS) -> None:
        self.max_labels = max_labels
        self._data: OrderedDict[tuple[str, tuple[str, ...]], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, label: str, templates: tuple[str, ...]) -> torch.Tensor | None:
        with self._lock:
            emb = self._data.get((label, templates))
            if emb is not None:
                self._data.move_to_end((label, templates))
            return emb

    def put(self, label: str, templates: tuple[str, ...], emb: torch.Tensor) -> None:
        with self._lock:
            self._data[(label, templates)] = emb
            self._data.move_to_end((label, templates))
            while len(self._data) > self.max_labels:
                self._data.popitem(last=False)


def class_embeddings(
    model: torch.nn.Module,
    tokenizer: Callable,
    labels: Sequence[str],
    templates: tuple[str, ...],
    cache: LabelCache,
    device: torch.device,
    tower: TextTower | None = None,
    chunk: int = CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(C, E) normalised class embeddings on the CPU; only labels missing from ``cache`` are
    encoded (C_new * T prompts, see :func:`encode_prompts`), then cached."""
    found = {label: cache.get(label, templates) for label in dict.fromkeys(labels)}
    missing = [label for label, emb in found.items() if emb is None]
    if missing:
        feats = encode_prompts(
            model,
            tokenizer,
            [t.format(l) for l in missing for t in templates],
            device,
            tower,
            chunk,
            progress,
        )
        for label, emb in zip(missing, ensemble(feats, len(missing), len(templates))):
            found[label] = emb
            cache.put(label, templates, emb)
    return torch.stack(typing.cast(list[torch.Tensor], [found[label] for label in labels]))


def encode_prompts(
    model: torch.nn.Module,
    tokenizer: Callable,
    prompts: Sequence[str],
    device: torch.device,
    tower: TextTower | None = None,
    chunk: int = CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(P, E) float features of P prompts on the CPU, in prompt order. With a cut pass the
    prompts go in order of length, ``chunk`` at a time, so each batch is cut to nearly its
    own prompts' length; progress(done, P) after each batch."""
    tokens = tokenizer(list(prompts))  # (P, 77)
    order = (
        torch.argsort(pool_index(tower, tokens), stable=True)
        if tower is not None
        else torch.arange(len(prompts))
    )
    out: torch.Tensor | None = None
    done = 0
    for part in order.split(chunk):
        feats = encode_tokens(model, tokens[part].to(device), tower).float().cpu()
        if out is None:
            out = torch.empty(len(prompts), feats.shape[1])
        out[part] = feats
        done += len(part)
        if progress is not None:
            progress(done, len(prompts))
    assert out is not None
    return out


__all__ = [
    "TextTower",
    "text_tower",
    "pool_index",
    "encode_cut",
    "encode_tokens",
    "ensemble",
    "LabelCache",
    "class_embeddings",
    "encode_prompts",
]
