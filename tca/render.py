"""Drawing a :class:`tca.Trace`: per-layer token-fate maps, CLS-attention overlays, a strip of
all layers, and the tokens-per-layer chart.

Every map comes from the one traced forward pass, so drawing any depth costs only numpy work
on the (rows, cols) patch grid, expanded to pixels at the end:

* kept patch (its own token): the image as is;
* merged patch (its token holds several patches): its group's own colour from a colour-blind-
  safe categorical palette over the patch's grey, each group outlined;
* pruned patch (fused into the class-irrelevant token): grey with white diagonal stripes.

Colours live in one place (:data:`FATES`, :data:`GROUP_COLORS`); the app's legend reads them.

All functions are pure and take / return ``uint8`` RGB arrays (H, W, 3), except
:func:`tokens_chart` (a matplotlib Figure built without pyplot, so no global figure is left
open) and :func:`grid` / :func:`layer_strip` (PIL images).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless; must precede any pyplot import elsewhere in the process

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from .trace import KEPT, MERGED, PRUNED, Trace  # noqa: E402

# ---------------------------------------------------------------------------- the one colour source
# Every colour a fate is drawn with lives here: the maps, the strip, the exported PNG legend and
# the app's HTML legend / How-it-works text all read FATES and GROUP_COLORS.


@dataclass(frozen=True)
class FateStyle:
    """How one fate is drawn: its name, the legend swatch (fill, edge) and a one-line meaning."""

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
HIGHLIGHT = (255, 0, 200)
ACCENT = (
    180,
    83,
    9,
)  # condensing blocks in captions and charts  # follow-a-patch: the clicked patch
FATES: dict[int, FateStyle] = {
    KEPT: FateStyle(
        KEPT,
        "kept",
        (255, 255, 255),
        (120, 120, 120),
        "class-relevant: kept as its own token, drawn as the image",
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
            f"pass the image the model saw (see tca.explore.model_view)"
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


# ---------------------------------------------------------------------------------- composing


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


@dataclass(frozen=True)
class GridLayout:
    """Where the tiles of :func:`grid` are, to map a click on the PNG back to a tile."""

    rows: int
    cols: int
    tile_h: int
    tile_w: int
    left: int  # width of the row-label column
    top: int  # height of the column-label row
    caption: int  # caption band above each tile
    gap: int

    @property
    def cell_h(self) -> int:
        return self.caption + self.tile_h + self.gap

    @property
    def cell_w(self) -> int:
        return self.tile_w + self.gap

    def tile_at(self, x: float, y: float) -> tuple[int, int] | None:
        """(row, col) of the tile (or its caption) under pixel (x, y), else None."""
        cx, cy = x - self.left - self.gap, y - self.top - self.gap
        if cx < 0 or cy < 0:
            return None
        r, c = int(cy // self.cell_h), int(cx // self.cell_w)
        if r >= self.rows or c >= self.cols or cx % self.cell_w >= self.tile_w:
            return None
        return r, c


def grid(
    tiles: Sequence[Sequence[np.ndarray | None]],
    captions: Sequence[Sequence[str]] | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    legend: bool = False,
    gap: int = 4,
    font_size: int = 13,
    background: tuple[int, int, int] = (255, 255, 255),
    title: str | None = None,
    marked: Sequence[Sequence[bool]] | None = None,
) -> tuple[Image.Image, GridLayout]:
    """Tile equally sized (H, W, 3) uint8 images row by row into one picture.

    captions: one short line above each tile. row_labels / col_labels: a header column / row.
    legend: add the kept / merged / pruned swatches at the bottom. None tiles stay blank.
    title: a line above everything (e.g. the settings that made the picture).
    marked: tiles whose caption is drawn in the accent colour (condensing blocks).
    """
    rows = len(tiles)
    cols = max(len(r) for r in tiles)
    first = next(t for r in tiles for t in r if t is not None)
    th, tw = first.shape[:2]
    font = _font(font_size)
    cap_h = font_size + 6 if captions else 0
    left = (max(_text_w(font, s) for s in row_labels) + 12) if row_labels else 0
    top = (font_size + 8 if col_labels else 0) + (font_size + 10 if title else 0)
    lay = GridLayout(rows, cols, th, tw, left, top, cap_h, gap)
    legend_h = font_size + 16 if legend else 0
    width = left + gap + cols * lay.cell_w
    if legend:
        width = max(width, _legend_width(font, font_size) + 12)
    if title:
        width = max(width, _text_w(font, title) + 12)
    height = top + gap + rows * lay.cell_h + legend_h
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = background
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            if tile is None:
                continue
            if tile.shape[:2] != (th, tw):
                raise ValueError("all tiles must have the same size")
            y = top + gap + r * lay.cell_h + cap_h
            x = left + gap + c * lay.cell_w
            canvas[y : y + th, x : x + tw] = tile
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    ink = (30, 30, 30)
    if captions:
        for r, line in enumerate(captions):
            for c, text in enumerate(line):
                if text:
                    accent = (
                        marked is not None
                        and r < len(marked)
                        and c < len(marked[r])
                        and marked[r][c]
                    )
                    draw.text(
                        (left + gap + c * lay.cell_w + 2, top + gap + r * lay.cell_h + 1),
                        text,
                        fill=ACCENT if accent else ink,
                        font=font,
                    )
    if row_labels:
        for r, text in enumerate(row_labels):
            y = top + gap + r * lay.cell_h + cap_h + th // 2 - font_size // 2
            draw.text((6, y), text, fill=ink, font=font)
    if col_labels:
        for c, text in enumerate(col_labels):
            draw.text(
                (left + gap + c * lay.cell_w + 2, top - font_size - 5), text, fill=ink, font=font
            )
    if title:
        draw.text((6, 4), title, fill=ink, font=font)
    if legend:
        _draw_legend(draw, font, font_size, 6, height - legend_h + 6)
    return img, lay


def _text_w(font, text: str) -> int:
    box = font.getbbox(text)
    return int(box[2] - box[0])


def _legend_text(style: FateStyle) -> str:
    return f"{style.name}: {style.meaning.split(':')[0]}"


def _legend_width(font, size: int) -> int:
    return sum(size + 5 + _text_w(font, _legend_text(s)) + 18 for s in FATES.values())


def _draw_legend(draw: ImageDraw.ImageDraw, font, size: int, x: int, y: int) -> None:
    for style in FATES.values():
        text = _legend_text(style)
        box = [x, y, x + size, y + size]
        draw.rectangle(box, fill=style.swatch, outline=style.edge, width=2)
        if style.code == PRUNED:  # the stripes, as on the map
            for k in range(-size, size, 4):
                draw.line(
                    [
                        x + max(0, k),
                        y + max(0, -k),
                        x + min(size, size + k),
                        y + min(size, size - k),
                    ],
                    fill=PRUNED_HATCH,
                    width=1,
                )
        elif style.code == MERGED:  # a few group colours
            step = size / 3
            for j, col in enumerate(GROUP_COLORS[:3]):
                draw.rectangle([x + j * step, y, x + (j + 1) * step, y + size], fill=col)
            draw.rectangle(box, outline=style.edge, width=1)
        draw.text((x + size + 5, y - 1), text, fill=(30, 30, 30), font=font)
        x += size + 5 + _text_w(font, text) + 18


def layer_strip(
    maps: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    cols: int = 6,
    legend: bool = True,
    title: str | None = None,
    marked: Sequence[bool] | None = None,
    font_size: int = 16,
) -> tuple[Image.Image, GridLayout]:
    """All layer maps in one picture, ``cols`` per row (captions e.g. "block 3*: 141 tok");
    ``marked`` layers (condensing blocks) get their caption in the accent colour."""
    if not maps:
        raise ValueError("no maps to draw")
    cols = max(1, min(cols, len(maps)))
    rows = [list(maps[i : i + cols]) for i in range(0, len(maps), cols)]
    caps = None
    if captions is not None:
        caps = [list(captions[i : i + cols]) for i in range(0, len(captions), cols)]
    marks = None
    if marked is not None:
        marks = [list(marked[i : i + cols]) for i in range(0, len(marked), cols)]
    return grid(rows, caps, legend=legend, title=title, marked=marks, font_size=font_size)


def layer_captions(trace: Trace) -> list[str]:
    """ "block 3: 141 tok" per layer, with a marker on condensing layers."""
    return [
        f"block {l}{'*' if l in trace.condensing_layers else ''}: {n} tok"
        for l, n in enumerate(trace.tokens_per_layer)
    ]


# ---------------------------------------------------------------------------------- the chart


def tokens_chart(
    baseline: Sequence[int],
    condensed: Sequence[int],
    condensing_layers: Sequence[int] = (),
    label: str = "condensed",
    title: str | None = None,
    size: tuple[float, float] = (5.6, 3.0),
    current: int | None = None,
) -> Figure:
    """Tokens at every block output, baseline vs condensed (a step chart).

    Built with ``matplotlib.figure.Figure`` (Agg canvas, not pyplot): nothing stays registered
    globally, so the figure is freed with its last reference. Fixed margins instead of a layout
    engine and the series named at their ends instead of a legend box keep drawing cheap.
    current: the block shown on the map, shaded and labelled on the chart.
    """
    if len(baseline) != len(condensed):
        raise ValueError("baseline and condensed must have one count per layer")
    fig = Figure(figsize=size, dpi=100)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.9 if title else 0.96, bottom=0.17)
    ax = fig.add_subplot()
    # value i holds from block i's output on: draw it over [i, i + 1) so a drop sits exactly on
    # the condensing block
    n = len(baseline)
    x = np.arange(n + 1)
    base = np.append(baseline, baseline[-1])
    cond = np.append(condensed, condensed[-1])
    ax.step(x, base, where="post", color="#7f7f7f", lw=2, label="baseline CLIP")
    ax.step(x, cond, where="post", color="#d62728", lw=2.2, label=label)
    ax.fill_between(x, cond, base, step="post", color="#d62728", alpha=0.12, lw=0)
    for l in condensing_layers:
        ax.axvline(l, color=_hex(ACCENT), lw=0.9, ls=":")
    top = max(max(baseline), max(condensed))
    if current is not None and 0 <= current < n:
        ax.axvspan(current, current + 1, color=_hex(HIGHLIGHT), alpha=0.18, lw=0)
        ax.text(
            current + 0.5,
            top * 1.1,
            f"block {current}: {condensed[current]}",
            color=_hex(HIGHLIGHT),
            fontsize=8,
            ha="center" if 0 < current < n - 1 else ("left" if current == 0 else "right"),
            va="top",
        )
    ax.text(0.2, baseline[0] - 0.03 * top, "baseline CLIP", color="#555555", fontsize=8, va="top")
    ax.text(
        n - 0.2,
        condensed[-1] + 0.03 * top,
        f"{label}: {condensed[-1]}",
        color="#d62728",
        fontsize=8,
        ha="right",
        va="bottom",
    )
    ax.set_xlabel("block (0-based; dotted = condensing)", fontsize=9)
    ax.set_ylabel("tokens (CLS incl.)", fontsize=9)
    ax.set_xticks(x[:-1] if n <= 12 else x[:-1:2])
    ax.set_xlim(0, n)
    ax.set_ylim(0, top * 1.12)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


@lru_cache(maxsize=128)
def _chart_cached(
    baseline: tuple[int, ...],
    condensed: tuple[int, ...],
    condensing_layers: tuple[int, ...],
    label: str,
    title: str | None,
    current: int | None,
) -> np.ndarray:
    arr = figure_to_array(
        tokens_chart(baseline, condensed, condensing_layers, label, title, current=current)
    )
    arr.setflags(write=False)
    return arr


def tokens_chart_image(
    baseline: Sequence[int],
    condensed: Sequence[int],
    condensing_layers: Sequence[int] = (),
    label: str = "condensed",
    title: str | None = None,
    current: int | None = None,
) -> np.ndarray:
    """:func:`tokens_chart` drawn to a (H, W, 3) uint8 array, memoised: the token schedule
    depends only on the settings and the model, so a new image with the same settings reuses
    the drawing (read-only array; copy before editing)."""
    return _chart_cached(
        tuple(int(v) for v in baseline),
        tuple(int(v) for v in condensed),
        tuple(int(v) for v in condensing_layers),
        str(label),
        title,
        None if current is None else int(current),
    )


def sweep_chart(
    gmacs_baseline: float,
    series: Mapping[str, Mapping[str, Sequence[float]]],
    size: tuple[float, float] = (6.4, 3.4),
) -> Figure:
    """Keep-rate sweep of one image: per method, against GMACs, the condensed top-1
    probability, the probability of the baseline's top-1 label, and KL(baseline || condensed).

    series: method -> {"gmacs", "keep_rate", "top1", "base_label", "kl"} (equal lengths).
    """
    fig = Figure(figsize=size, dpi=100)
    fig.subplots_adjust(left=0.1, right=0.88, top=0.86, bottom=0.15)
    ax = fig.add_subplot()
    ax2 = ax.twinx()
    styles = ("-", "--", ":")
    for i, (method, s) in enumerate(series.items()):
        ls = styles[i % len(styles)]
        tag = f" {method}" if len(series) > 1 else ""
        ax.plot(
            s["gmacs"],
            s["top1"],
            ls,
            marker="o",
            ms=4,
            color=_hex(GROUP_COLORS[4]),
            label=f"top-1 prob{tag}",
        )
        ax.plot(
            s["gmacs"],
            s["base_label"],
            ls,
            marker="s",
            ms=4,
            color=_hex(GROUP_COLORS[0]),
            label=f"baseline's top-1 label{tag}",
        )
        ax2.plot(
            s["gmacs"],
            s["kl"],
            ls,
            marker="^",
            ms=4,
            color=_hex(GROUP_COLORS[5]),
            label=f"KL from baseline{tag}",
        )
        if i == 0:
            for g, r in zip(s["gmacs"], s["keep_rate"]):
                ax.annotate(
                    f"{r:g}",
                    (g, 1.0),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    fontsize=7,
                    color="#555555",
                )
    ax.axvline(gmacs_baseline, color="#7f7f7f", lw=1, ls=":")
    ax.set_ylim(0, 1.06)
    ax.set_xlabel("GMACs of the condensed image encoder (dotted: baseline)", fontsize=9)
    ax.set_ylabel("probability", fontsize=9)
    ax2.set_ylabel("KL (nats)", fontsize=9, color=_hex(GROUP_COLORS[5]))
    ax2.set_ylim(bottom=0)
    ax.tick_params(labelsize=8)
    ax2.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Keep-rate sweep of this image (numbers on top: keep rate R)", fontsize=10, pad=12)
    shown = [l for l in ax.get_lines() + ax2.get_lines() if not str(l.get_label()).startswith("_")]
    fig.legend(
        shown,
        [str(l.get_label()) for l in shown],
        loc="lower left",
        fontsize=7,
        frameon=True,
        bbox_to_anchor=(0.1, 0.15),
    )
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """(H, W, 3) uint8 rendering of a figure (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


__all__ = [
    "fate_map",
    "all_layer_maps",
    "attention_grid",
    "attention_layer",
    "blend_heatmap",
    "outline",
    "patch_means",
    "upscale",
    "layer_view",
    "LayerView",
    "group_palette",
    "grid",
    "GridLayout",
    "layer_strip",
    "layer_captions",
    "tokens_chart",
    "tokens_chart_image",
    "figure_to_array",
    "FATES",
    "FateStyle",
    "GROUP_COLORS",
    "VIEWS",
    "hatch_mask",
    "shrink",
    "group_ranks",
    "token_means",
    "highlight_token",
    "sweep_chart",
]
