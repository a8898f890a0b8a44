"""Everything the explorer page shows for one Run, built in one place: :func:`run_view` turns a
Run (and the display-only settings, :class:`Display`) into the predictions, the big map, the
strip, the chart and the text panels; the downloads (strip PNG, GIF, JSON), the comparison
picture and the sweep plot. The text pieces are ``tca.panels``; ``app.py`` only wires these to
Gradio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
from PIL import Image

from tca import charts, compose, render
from tca.trace import Trace

from . import export, panels, runs
from .export import ExportDir
from .panels import CONDENSING_MARK
from .runs import Comparison, ExplorerRun
from .sweeps import Sweep

MAP_ZOOM = 2  # the big token map is shown at twice the model's resolution
# Strip tiles are drawn at half the model's resolution: they show at about that size, and
# encoding 12 full-size hatched PNGs per Run was a fifth of a Run's time.
STRIP_SHRINK = 2
VIEW_CHOICES = [
    ("fates (kept / merged groups / pruned)", "fates"),
    ("what the model sees (mean colour per token)", "model"),
]


# ------------------------------------------------------------------------------- maps and strip


@dataclass(frozen=True)
class Display:
    """What the display-only controls ask for: the block, the view, the overlay, the patch."""

    layer: int
    view: str = "fates"
    overlay: bool = False
    opacity: float = 0.5
    patch: int | None = None

    def clamped(self, trace: Trace) -> Display:
        layer = int(min(max(0, int(self.layer or 0)), trace.depth - 1))
        n = trace.grid[0] * trace.grid[1]
        patch = self.patch if self.patch is not None and 0 <= self.patch < n else None
        view = self.view if self.view in render.VIEWS else "fates"
        return Display(layer, view, bool(self.overlay), float(self.opacity), patch)


def map_image(state: ExplorerRun, d: Display, zoom: int = MAP_ZOOM) -> np.ndarray:
    """The big map: (zoom*S, zoom*S, 3) uint8."""
    d = d.clamped(state.trace)
    out = render.fate_map(
        state.view,
        state.trace,
        d.layer,
        attention=d.overlay,
        opacity=d.opacity,
        view=d.view,
        follow=d.patch,
    )
    return render.upscale(out, zoom)


def patch_at(state: ExplorerRun, x: float, y: float, zoom: int = MAP_ZOOM) -> int | None:
    """The patch (row-major index) under pixel (x, y) of the big map, or None."""
    rows, cols = state.trace.grid
    h, w = state.view.shape[:2]
    r, c = int(y // (zoom * h / rows)), int(x // (zoom * w / cols))
    if 0 <= r < rows and 0 <= c < cols:
        return r * cols + c
    return None


def strip_captions(trace: Trace) -> list[str]:
    """Gallery captions: "3 ✂ · 141" (block, ✂ on condensing blocks, tokens after it)."""
    return [
        f"{l}{' ' + CONDENSING_MARK if l in trace.condensing_layers else ''} \u00b7 {n}"
        for l, n in enumerate(trace.tokens_per_layer)
    ]


def strip_items(state: ExplorerRun, view: str = "fates") -> list[tuple[np.ndarray, str]]:
    """The strip of all blocks: (map, caption) per block, for a gallery; each map drawn on the
    image shrunk by :data:`STRIP_SHRINK`."""
    small = render.shrink(state.view, state.trace.grid, STRIP_SHRINK)
    maps = render.all_layer_maps(small, state.trace, view=view)
    return list(zip(maps, strip_captions(state.trace)))


def settings_line(state: ExplorerRun) -> str:
    r = state.result
    img = f"{state.image_name}, " if state.image_name else ""
    return (
        f"{img}{state.model}, {r.config.describe()}, {state.templates} prompts; "
        f"{r.flops_baseline.gmacs:.2f} -> {r.flops_condensed.gmacs:.2f} GMACs "
        f"({r.saved_percent:.1f}% saved); * = condensing block"
    )


def strip_png(state: ExplorerRun, view: str = "fates") -> Image.Image:
    """The exported strip: every block with legible captions, the settings that made it and
    the legend."""
    trace = state.trace
    maps = render.all_layer_maps(state.view, trace, view=view)
    caps = compose.layer_captions(trace)
    img, _ = compose.layer_strip(
        maps,
        caps,
        title=settings_line(state),
        marked=[l in trace.condensing_layers for l in range(trace.depth)],
    )
    return img


def depth_frames(state: ExplorerRun, d: Display) -> list[Image.Image]:
    """One frame per block (the current view and followed patch), captioned, for the GIF."""
    trace = state.trace
    d = d.clamped(trace)
    frames = []
    means = render.patch_means(state.view, trace.grid)
    for l in range(trace.depth):
        m = render.fate_map(state.view, trace, l, means=means, view=d.view, follow=d.patch)
        cap = (
            f"block {l}{'*' if l in trace.condensing_layers else ''}: "
            f"{trace.tokens_per_layer[l]} tokens"
        )
        img, _ = compose.grid(
            [[render.upscale(m, 2)]], [[cap]], font_size=18, marked=[[l in trace.condensing_layers]]
        )
        frames.append(img)
    return frames


def chart_image(state: ExplorerRun, layer: int) -> np.ndarray:
    r, trace = state.result, state.trace
    return charts.tokens_chart_image(
        r.baseline_tokens,
        r.tokens_per_layer,
        trace.condensing_layers,
        label=r.config.describe().split(",")[0],
        title="Tokens per block: baseline vs condensed",
        current=int(layer),
    )


# ------------------------------------------------------------------------------ the whole page


@dataclass
class RunView:
    """Everything the page shows for one Run at one :class:`Display`."""

    baseline: dict[str, float]
    baseline_title: str
    condensed: dict[str, float]
    condensed_title: str
    shift: str
    map: np.ndarray
    layer: int
    depth: int
    info: str
    chart: np.ndarray
    cost: str
    strip: list[tuple[np.ndarray, str]]
    follow: str
    corrected: dict[str, float] | None


def run_view(state: ExplorerRun, d: Display) -> RunView:
    """Turn a Run into everything the page shows (no files written; see :func:`exports`)."""
    r, trace = state.result, state.trace
    d = d.clamped(trace)
    return RunView(
        baseline=r.baseline.as_dict(),
        baseline_title="Baseline CLIP (all tokens)",
        condensed=r.condensed.as_dict(),
        condensed_title=panels.condensed_title(r),
        shift=panels.shift_html(r),
        map=map_image(state, d),
        layer=d.layer,
        depth=trace.depth,
        info=panels.layer_info(state, d.layer, d.overlay),
        chart=chart_image(state, d.layer),
        cost=panels.cost_html(r),
        strip=strip_items(state, d.view),
        follow=panels.follow_html(state, d.patch, d.layer),
        corrected=r.corrected.as_dict() if r.corrected is not None else None,
    )


def exports(state: ExplorerRun, d: Display, out: ExportDir) -> dict[str, str]:
    """Write the downloads of one Run: strip PNG, depth GIF, JSON. Returns kind -> path."""
    stem = (state.image_name or "image").rsplit(".", 1)[0]
    return {
        "png": str(
            out.write_png(strip_png(state, d.clamped(state.trace).view), f"tca-{stem}-blocks")
        ),
        "gif": str(out.write_gif(depth_frames(state, d), f"tca-{stem}-depth")),
        "json": str(out.write_json(export.export_dict(state), f"tca-{stem}-run")),
    }


# ------------------------------------------------------------------------------ compare / sweep


def compare_picture(cmp: Comparison) -> Image.Image:
    first = next(iter(cmp.results.values()))
    traces = [r.trace for r in cmp.results.values()]
    assert all(t is not None for t in traces)  # compare always traces
    first_trace = cast(Trace, first.trace)
    depth = first_trace.depth
    cols = sorted(set(first_trace.condensing_layers) | {depth - 1})
    tiles = []
    for t in cast(list[Trace], traces):
        means = render.patch_means(cmp.view, t.grid)
        tiles.append([render.fate_map(cmp.view, t, l, means=means) for l in cols])
    picture, _ = compose.grid(
        tiles,
        captions=[[f"{r.tokens_per_layer[l]} tokens" for l in cols] for r in cmp.results.values()],
        row_labels=[runs.METHOD_NAMES[m] for m in cmp.results],
        col_labels=[f"after block {l}" for l in cols],
        legend=True,
        font_size=15,
    )
    return picture


def sweep_image(sw: Sweep) -> np.ndarray:
    series = {
        runs.METHOD_NAMES[m]: {
            "gmacs": [p.gmacs for p in pts],
            "keep_rate": [p.keep_rate for p in pts],
            "top1": [p.top1_prob for p in pts],
            "base_label": [p.base_label_prob for p in pts],
            "kl": [p.kl for p in pts],
        }
        for m, pts in sw.points.items()
    }
    return charts.figure_to_array(charts.sweep_chart(sw.gmacs_baseline, series))


__all__ = [
    "Display",
    "MAP_ZOOM",
    "RunView",
    "STRIP_SHRINK",
    "VIEW_CHOICES",
    "chart_image",
    "compare_picture",
    "depth_frames",
    "exports",
    "map_image",
    "patch_at",
    "run_view",
    "settings_line",
    "strip_captions",
    "strip_items",
    "strip_png",
    "sweep_image",
]
