"""Drawing a :class:`tca.Trace`: per-layer token-fate maps and CLS-attention overlays, and the
one source of the colours every picture of a fate uses.

Every map comes from the one traced forward pass, so drawing any depth costs only numpy work
on the (rows, cols) patch grid, expanded to pixels at the end:

* kept patch (its own token): the image as is;
* merged patch (its token holds several patches): its group's own colour from a colour-blind-
  safe categorical palette over the patch's grey, each group outlined;
* pruned patch (fused into the class-irrelevant token): grey with white diagonal stripes.

Colours live in one place (:data:`FATES`, :data:`GROUP_COLORS`); the app's legend reads them.

All functions are pure and take / return ``uint8`` RGB arrays (H, W, 3). Composing maps into
captioned PIL pictures (the strip, the GIF frames) is ``tca.compose``; the matplotlib charts are
``tca.charts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import matplotlib
import numpy as np

from .trace import KEPT, MERGED, PRUNED, Trace

# ---------------------------------------------------------------------------- the one colour source
# Every colour a fate is drawn with lives here: the maps, the strip, the exported PNG legend and
# the app's HTML legend / How-it-works text all read FATES and GROUP_COLORS.


@dataclass(frozen=True)
class FateStyle:
    """How one fate is drawn: its name, the legend swatch (fill, edge) and a one-line meaning
    ("what it is; how it is drawn": the legend swaps the first part for a method's own words)."""

    code: int
    name: str
    swatch: tuple[int, int, int]
    edge: tuple[int, int, int]
    meaning: str


# Okabe & Ito's colour-blind-safe categorical palette (black left out: it reads as "pruned").
GROUP_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
)
PRUNED_BASE = 0.35  # brightness left to the grey of a pruned patch
PRUNED_HATCH = (235, 235, 235)  # the diagonal stripes over pruned patches (seen on any image)
HATCH_PERIOD = 6  # pixels (at the model's resolution) between stripes
OUTLINE_COLOR = (20, 20, 20)  # group borders
OUTLINE_LIGHT = (225, 225, 225)  # token borders over dark tokens ("what the model sees")
MERGED_FILL = 0.65  # share of the group colour in a merged patch (the rest: the patch's grey)
HIGHLIGHT = (255, 0, 200)  # follow-a-patch: the clicked patch
ACCENT = (180, 83, 9)  # condensing blocks in captions and charts
FATES: dict[int, FateStyle] = {
    KEPT: FateStyle(
        KEPT,
        "kept",
        (255, 255, 255),
        (120, 120, 120),
        "class-relevant: kept as its own token; drawn as the image",
    ),
    MERGED: FateStyle(
        MERGED,
        "merged",
        GROUP_COLORS[0],
        OUTLINE_COLOR,
        "class-ambiguous: merged into a group token; one colour per group, outlined",
    ),
    PRUNED: FateStyle(
        PRUNED,
        "pruned / fused",
        (60, 60, 60),
        PRUNED_HATCH,
        "class-irrelevant: fused into one token; grey with white stripes",
    ),
}
# One colour per method wherever methods are drawn side by side (the sweep): Okabe & Ito again,
# in the registry's display order; the unmodified model grey.
METHOD_COLORS: dict[str, tuple[int, int, int]] = {
    "tca": (0, 114, 178),
    "evit": (230, 159, 0),
    "tome": (0, 158, 115),
    "tome-paper": (204, 121, 167),
    "ats": (213, 94, 0),
    # Okabe & Ito's sky blue and black, then two of Tol's muted colours (Okabe & Ito's yellow
    # is too light on white)
    "pitome": (86, 180, 233),
    "tofu": (0, 0, 0),
    "zero-tprune": (153, 153, 51),
    "repshift": (136, 34, 85),
    "none": (110, 110, 110),
}
# What "what the model sees" draws, for its legend: (what, meaning).
MODEL_VIEW_LEGEND: tuple[tuple[str, str], ...] = (
    ("fill", "each token painted with the mean colour of the patches it stands for"),
    ("outline", "a token holding several patches (dark on light tokens, light on dark)"),
    ("no outline", "a token holding one patch"),
)
VIEWS = ("fates", "model")  # "model": what the model sees, each token its patches' mean colour


def group_palette(n: int = 64) -> np.ndarray:
    """(n, 3) uint8: the colour of merged group i is row i (GROUP_COLORS repeated)."""
    pal = np.asarray(GROUP_COLORS, dtype=np.uint8)
    return pal[np.arange(n) % len(pal)]


@lru_cache(maxsize=4)
def _colormap_lut(name: str = "inferno") -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colormap."""
    cmap = matplotlib.colormaps[name]
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def _expand(a: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """Nearest-neighbour upsampling of a (rows, cols, ...) grid to pixels."""
    return np.repeat(np.repeat(a, ph, axis=0), pw, axis=1)


def _check_image(image: np.ndarray, grid: tuple[int, int]) -> tuple[int, int]:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    rows, cols = grid
    h, w = image.shape[:2]
    if h % rows or w % cols:
        raise ValueError(
            f"image {w}x{h} is not a multiple of the {cols}x{rows} patch grid; "
            f"pass the image the model saw (see tca.app.runs.seen_picture)"
        )
    return h // rows, w // cols


def patch_means(image: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(rows, cols, 3) float32 mean colour of every patch."""
    ph, pw = _check_image(image, grid)
    rows, cols = grid
    return image.reshape(rows, ph, cols, pw, 3).mean(axis=(1, 3), dtype=np.float32)


def outline(ids: np.ndarray, width: int = 1) -> np.ndarray:
    """Boolean (H, W): pixels within ``width`` of a pixel with another id (or of the image edge).

    Pure numpy shifts of the id map: ``ids`` is compared with copies of itself moved by 1..width
    pixels in the four directions, with -1 beyond the edges.
    """
    h, w = ids.shape
    pad = np.pad(ids, width, mode="constant", constant_values=-1)
    edge = np.zeros((h, w), dtype=bool)
    for d in range(1, width + 1):
        edge |= pad[width - d : width - d + h, width : width + w] != ids
        edge |= pad[width + d : width + d + h, width : width + w] != ids
        edge |= pad[width : width + h, width - d : width - d + w] != ids
        edge |= pad[width : width + h, width + d : width + d + w] != ids
    return edge


@dataclass(frozen=True)
class LayerView:
    """The per-patch data of one depth, on the patch grid: token id, fate, group colour key."""

    token: np.ndarray  # (rows, cols) int64
    fate: np.ndarray  # (rows, cols) uint8
    first_patch: np.ndarray  # (n_tokens,) smallest patch index in each token (colour key)


def layer_view(trace: Trace, layer: int, image_index: int = 0) -> LayerView:
    if not 0 <= layer < trace.depth:
        raise ValueError(f"layer {layer} is out of range: the trace has {trace.depth} layers")
    rows, cols = trace.grid
    token = trace.token_index[image_index, layer].numpy().astype(np.int64)
    # Patches ATS dropped sit in no token (-1); they are drawn as pruned, so parking them on the
    # CLS slot (which holds no patch) keeps the per-token sums valid without colouring anything.
    token = np.maximum(token, 0)
    fate = trace.fate[image_index, layer].numpy()
    n = int(token.max()) + 1
    first = np.zeros(n, dtype=np.int64)
    ids, where = np.unique(token, return_index=True)  # first occurrence = smallest patch index
    first[ids] = where
    return LayerView(token.reshape(rows, cols), fate.reshape(rows, cols), first)


def _gray(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 luminance (ITU-R 601) of an (H, W, 3) uint8 image."""
    return image.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


def hatch_mask(h: int, w: int, period: int = HATCH_PERIOD) -> np.ndarray:
    """(h, w) bool: diagonal stripes, 2 pixels wide every ``period`` pixels."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy + xx) % period < 2


def group_ranks(view: LayerView) -> np.ndarray:
    """(n_tokens,) int: the colour index of every merged token (its rank by smallest patch, so
    the colour follows the group's position, not the token index); -1 for other tokens."""
    merged = np.unique(view.token[view.fate == MERGED])
    ranks = np.full(view.first_patch.shape[0], -1, dtype=np.int64)
    ranks[merged[np.argsort(view.first_patch[merged], kind="stable")]] = np.arange(len(merged))
    return ranks


def token_means(view: LayerView, means: np.ndarray) -> np.ndarray:
    """(n_tokens, 3) uint8 mean colour of the patches each token stands for."""
    n = view.first_patch.shape[0]
    flat_tok = view.token.ravel()
    counts = np.bincount(flat_tok, minlength=n).astype(np.float32)
    flat_means = means.reshape(-1, 3)
    sums = np.stack(
        [np.bincount(flat_tok, weights=flat_means[:, c], minlength=n) for c in range(3)], axis=1
    )
    return (sums / np.maximum(counts, 1)[:, None]).round().astype(np.uint8)


def fate_map(
    image: np.ndarray,
    trace: Trace,
    layer: int,
    *,
    image_index: int = 0,
    border: int = 1,
    attention: bool = False,
    opacity: float = 0.5,
    means: np.ndarray | None = None,
    view: str = "fates",
    follow: int | None = None,
) -> np.ndarray:
    """The token map of ``layer`` (after that block) drawn over ``image``.

    image: (H, W, 3) uint8, the picture the model saw (a multiple of the patch grid).
    view: "fates" draws the three fates (see :data:`FATES`): kept patches as the image, each
    merged group filled with its own :data:`GROUP_COLORS` colour over the patch's grey and
    outlined, pruned / fused patches grey with white diagonal stripes (visible on any image).
    "model" paints every token with the mean colour of the patches it stands for (what the
    remaining tokens carry, as ToMe draws it), outlining tokens that hold several patches.
    attention: blend the CLS attention that drove the latest condensing decision at or before
    this layer (see :func:`attention_layer`) with ``opacity``; nothing is blended where no such
    attention was recorded (ToMe, or layers before the first condensing one).
    follow: a patch index (row-major); the patches sharing its token are outlined in white,
    all others dimmed, and the patch itself framed in :data:`HIGHLIGHT`.
    means: optional precomputed :func:`patch_means` (re-used across layers).
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    ph, pw = _check_image(image, trace.grid)
    lv = layer_view(trace, layer, image_index)
    ids = _expand(lv.token, ph, pw)
    if view == "model":
        if means is None:
            means = patch_means(image, trace.grid)
        out = _expand(token_means(lv, means)[lv.token], ph, pw)
        sizes = np.bincount(lv.token.ravel(), minlength=lv.first_patch.shape[0])
        edge = outline(ids, border) & _expand(sizes[lv.token] > 1, ph, pw)
        # dark outlines on light tokens, light ones on dark tokens (a night sky stays readable)
        light = _gray(out) > 110
        out[edge & light] = OUTLINE_COLOR
        out[edge & ~light] = OUTLINE_LIGHT
    else:
        out = image.copy()
        fate_px = _expand(lv.fate, ph, pw)
        gray = None
        merged = fate_px == MERGED
        if merged.any():
            gray = _gray(image)
            colour = group_palette(max(1, int(lv.first_patch.shape[0])))[
                np.maximum(group_ranks(lv), 0)
            ].astype(np.float32)
            fill = (
                MERGED_FILL * _expand(colour[lv.token], ph, pw)
                + (1.0 - MERGED_FILL) * gray[..., None]
            )
            out[merged] = fill[merged].round().clip(0, 255).astype(np.uint8)
            out[outline(ids, border) & merged] = OUTLINE_COLOR
        pruned = fate_px == PRUNED
        if pruned.any():
            gray = _gray(image) if gray is None else gray
            base = (gray * PRUNED_BASE).astype(np.uint8)
            out[pruned] = base[pruned][:, None]
            out[pruned & hatch_mask(*pruned.shape)] = PRUNED_HATCH
    if attention:
        att = attention_grid(trace, layer, image_index)
        if att is not None:
            out = blend_heatmap(out, att, opacity)
    if follow is not None:
        out = highlight_token(out, lv, follow, ph, pw)
    return out


def highlight_token(out: np.ndarray, lv: LayerView, patch: int, ph: int, pw: int) -> np.ndarray:
    """Follow-a-patch drawing: dim every patch outside ``patch``'s token, outline the token's
    patches in white and frame ``patch`` itself in :data:`HIGHLIGHT`."""
    rows, cols = lv.token.shape
    if not 0 <= patch < rows * cols:
        raise ValueError(f"patch {patch} is outside the {rows}x{cols} grid")
    members = lv.token == lv.token.flat[patch]
    member_px = _expand(members, ph, pw)
    res = out.astype(np.float32)
    res[~member_px] *= 0.4
    res = res.astype(np.uint8)
    res[outline(member_px.astype(np.int64), 2) & member_px] = (255, 255, 255)
    r, c = divmod(patch, cols)
    y0, x0 = r * ph, c * pw
    t = max(1, min(ph, pw) // 6)
    box = res[y0 : y0 + ph, x0 : x0 + pw]
    box[:t], box[-t:], box[:, :t], box[:, -t:] = HIGHLIGHT, HIGHLIGHT, HIGHLIGHT, HIGHLIGHT
    return res


def attention_layer(trace: Trace, layer: int) -> int | None:
    """The latest condensing layer <= ``layer`` whose CLS attention was recorded, or None."""
    done = [l for l in trace.cls_attention if l <= layer]
    return max(done) if done else None


def attention_grid(trace: Trace, layer: int, image_index: int = 0) -> np.ndarray | None:
    """(rows, cols) CLS attention (min-max normalised to [0, 1]) behind ``layer``'s fates."""
    src = attention_layer(trace, layer)
    if src is None:
        return None
    att = trace.cls_attention[src][image_index].numpy().astype(np.float32).reshape(trace.grid)
    finite = np.isfinite(att)
    if not finite.any():
        return None
    lo, hi = float(att[finite].min()), float(att[finite].max())
    norm = (att - lo) / (hi - lo) if hi > lo else np.zeros_like(att)
    return np.where(finite, norm, 0.0)


def blend_heatmap(
    image: np.ndarray, values: np.ndarray, opacity: float = 0.5, cmap: str = "inferno"
) -> np.ndarray:
    """Blend a (rows, cols) map of values in [0, 1] over ``image`` (nearest upsampling)."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    rows, cols = values.shape
    ph, pw = image.shape[0] // rows, image.shape[1] // cols
    lut = _colormap_lut(cmap)
    heat = _expand(lut[(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)], ph, pw)
    out = image.astype(np.float32) * (1.0 - opacity) + heat.astype(np.float32) * opacity
    return out.round().astype(np.uint8)


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """The 4-connected regions of a (rows, cols) bool mask, each as its cells in row-major
    order; regions ordered by their first cell."""
    seen = np.zeros_like(mask, dtype=bool)
    rows, cols = mask.shape
    out = []
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        stack, cells = [(int(r0), int(c0))], []
        seen[r0, c0] = True
        while stack:
            r, c = stack.pop()
            cells.append((r, c))
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < rows and 0 <= cc < cols and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
        out.append(sorted(cells))
    return out


def group_labels(trace: Trace, layer: int, image_index: int = 0) -> list[tuple[int, int, int]]:
    """Where to write the merged groups' numbers: (number, row, col), numbered from 1 in
    :func:`group_ranks` order (number - 1 indexes the group's colour). Every connected region
    of a group gets its number once, in the region's cell nearest its centroid, so a group
    split over the image is numbered in each of its parts."""
    lv = layer_view(trace, layer, image_index)
    ranks = group_ranks(lv)
    out = []
    for tok in np.nonzero(ranks >= 0)[0]:
        for cells in _components((lv.token == tok) & (lv.fate == MERGED)):
            rc = np.asarray(cells, dtype=np.float64)
            d = ((rc - rc.mean(axis=0)) ** 2).sum(axis=1)
            r, c = cells[int(np.argmin(d))]  # first of the nearest, in row-major order
            out.append((int(ranks[tok]) + 1, r, c))
    return sorted(out)


def draw_group_numbers(
    image: np.ndarray, labels: list[tuple[int, int, int]], grid: tuple[int, int]
) -> np.ndarray:
    """Write each group's number (from :func:`group_labels`) in its cell of ``image`` (H, W, 3)
    uint8, any multiple of the patch grid: black digits on a white disc, readable over every
    group colour, so groups sharing a colour (more groups than :data:`GROUP_COLORS`) stay apart
    for every viewer, colour-blind or not."""
    from PIL import Image, ImageDraw, ImageFont

    ph, pw = _check_image(image, grid)
    pic = Image.fromarray(image)
    draw = ImageDraw.Draw(pic)
    size = max(6, int(min(ph, pw) * 0.5))
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    r = min(ph, pw) * 0.36
    for number, row, col in labels:
        cx, cy = (col + 0.5) * pw, (row + 0.5) * ph
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 255, 255), outline=OUTLINE_COLOR)
        draw.text((cx, cy), str(number), fill=(0, 0, 0), font=font, anchor="mm")
    return np.asarray(pic).copy()


def value_range(values: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of the finite values, or None: the two ends of a colour scale."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    return float(finite.min()), float(finite.max())


def score_overlay(image: np.ndarray, values: np.ndarray, opacity: float = 0.6) -> np.ndarray:
    """A (rows, cols) score map (NaN: no value, drawn dark) over ``image``, min-max normalised
    to the colour scale whose ends :func:`value_range` gives."""
    span = value_range(values)
    if span is None:
        return image
    lo, hi = span
    norm = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return blend_heatmap(image, np.where(np.isfinite(values), norm, 0.0), opacity)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor (keeps patch edges crisp)."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    return image if factor == 1 else _expand(image, factor, factor)


def shrink(image: np.ndarray, grid: tuple[int, int], factor: int) -> np.ndarray:
    """(H/factor, W/factor, 3) uint8: ``image`` box-averaged by ``factor``, still a multiple of
    the (rows, cols) patch grid, so every map function draws on it with patches ``factor`` times
    smaller. ``factor`` is lowered to the largest divisor of the patch size that is <= it."""
    ph, pw = _check_image(image, grid)
    f = max(d for d in range(1, max(1, factor) + 1) if ph % d == 0 and pw % d == 0)
    if f == 1:
        return image
    h, w = image.shape[:2]
    boxes = image.reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3), dtype=np.float32)
    return boxes.round().astype(np.uint8)


def all_layer_maps(
    image: np.ndarray, trace: Trace, *, image_index: int = 0, **kwargs
) -> list[np.ndarray]:
    """:func:`fate_map` of every layer (patch means computed once)."""
    means = patch_means(image, trace.grid)
    return [
        fate_map(image, trace, l, image_index=image_index, means=means, **kwargs)
        for l in range(trace.depth)
    ]


__all__ = [
    "ACCENT",
    "FATES",
    "METHOD_COLORS",
    "MODEL_VIEW_LEGEND",
    "draw_group_numbers",
    "group_labels",
    "score_overlay",
    "value_range",
    "GROUP_COLORS",
    "HIGHLIGHT",
    "VIEWS",
    "FateStyle",
    "LayerView",
    "all_layer_maps",
    "attention_grid",
    "attention_layer",
    "blend_heatmap",
    "fate_map",
    "group_palette",
    "group_ranks",
    "hatch_mask",
    "highlight_token",
    "layer_view",
    "outline",
    "patch_means",
    "shrink",
    "token_means",
    "upscale",
]
