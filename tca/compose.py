"""Composing pictures from maps (PIL): a captioned grid of tiles with row / column labels and
the fates legend and the strip of all blocks.
Colours come from ``tca.render``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .render import ACCENT, FATES, GROUP_COLORS, PRUNED_HATCH, FateStyle
from .trace import MERGED, PRUNED, Trace


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


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
) -> Image.Image:
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
    cell_h, cell_w = cap_h + th + gap, tw + gap  # a tile with its caption band and gap
    legend_h = font_size + 16 if legend else 0
    width = left + gap + cols * cell_w
    if legend:
        width = max(width, _legend_width(font, font_size) + 12)
    if title:
        width = max(width, _text_w(font, title) + 12)
    height = top + gap + rows * cell_h + legend_h
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = background
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            if tile is None:
                continue
            if tile.shape[:2] != (th, tw):
                raise ValueError("all tiles must have the same size")
            y = top + gap + r * cell_h + cap_h
            x = left + gap + c * cell_w
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
                        (left + gap + c * cell_w + 2, top + gap + r * cell_h + 1),
                        text,
                        fill=ACCENT if accent else ink,
                        font=font,
                    )
    if row_labels:
        for r, text in enumerate(row_labels):
            y = top + gap + r * cell_h + cap_h + th // 2 - font_size // 2
            draw.text((6, y), text, fill=ink, font=font)
    if col_labels:
        for c, text in enumerate(col_labels):
            draw.text((left + gap + c * cell_w + 2, top - font_size - 5), text, fill=ink, font=font)
    if title:
        draw.text((6, 4), title, fill=ink, font=font)
    if legend:
        _draw_legend(draw, font, font_size, 6, height - legend_h + 6)
    return img


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
) -> Image.Image:
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


__all__ = ["grid", "layer_captions", "layer_strip"]
