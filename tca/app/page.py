"""Everything the explorer page shows for one Run, built in one place: :func:`parts` turns a
Run and the display choices (:class:`Display`, :class:`Screen`) into the page's updates by
component name (the predictions, the big map, the strip, the chart and the text panels), for the
first screen, the page load and every event alike; the downloads (strip PNG, GIF, JSON), the comparison
picture and the sweep plot. The text pieces are ``tca.panels``; ``app.py`` only wires these to
Gradio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, cast

import gradio as gr
import numpy as np
from PIL import Image

from tca import arithmetic, charts, compose, render, why
from tca.disagreement import Disagreement, disagreement, disagreement_map
from tca.methods import METHODS
from tca.stream_demo import StreamDemo
from tca.trace import Trace

from . import export, panels
from .export import ExportDir
from .panels import CONDENSING_MARK
from .runs import Comparison, ExplorerRun, StreamState
from .sweeps import Sweep

# The big token map is drawn at 4x the model's resolution (896 px for a 224 px model): the
# browser only ever shrinks it to its box (1280x720 to 1920x1080), and Gradio's click position
# is exact only for a shrunk picture (its select event assumes scale <= 1).
MAP_ZOOM = 4
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


def map_image(run: ExplorerRun, d: Display, zoom: int = MAP_ZOOM) -> np.ndarray:
    """The big map: (zoom*S, zoom*S, 3) uint8."""
    d = d.clamped(run.trace)
    out = render.fate_map(
        run.seen,
        run.trace,
        d.layer,
        attention=d.overlay,
        opacity=d.opacity,
        view=d.view,
        follow=d.patch,
    )
    big = render.upscale(out, zoom)
    if d.view == "fates" and len(run.trace.groups(d.layer)) > len(render.GROUP_COLORS):
        # more groups than colours: each group's number tells same-coloured groups apart
        big = render.draw_group_numbers(
            big, render.group_labels(run.trace, d.layer), run.trace.grid
        )
    return big


def patch_at(run: ExplorerRun, x: float, y: float, zoom: int = MAP_ZOOM) -> int | None:
    """The patch (row-major index) under pixel (x, y) of the big map, or None."""
    rows, cols = run.trace.grid
    h, w = run.seen.shape[:2]
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


def strip_items(run: ExplorerRun, view: str = "fates") -> list[tuple[np.ndarray, str]]:
    """The strip of all blocks: (map, caption) per block, for a gallery; each map drawn on the
    image shrunk by :data:`STRIP_SHRINK`."""
    small = render.shrink(run.seen, run.trace.grid, STRIP_SHRINK)
    maps = render.all_layer_maps(small, run.trace, view=view)
    return list(zip(maps, strip_captions(run.trace)))


def settings_line(run: ExplorerRun) -> str:
    r = run.result
    img = f"{run.image_name}, " if run.image_name else ""
    return (
        f"{img}{run.model}, {r.config.describe()}, {run.templates} prompts; "
        f"{r.flops_baseline.gmacs:.2f} -> {r.flops_condensed.gmacs:.2f} GMACs "
        f"({r.saved_percent:.1f}% saved); * = condensing block"
    )


def strip_png(run: ExplorerRun, view: str = "fates") -> Image.Image:
    """The exported strip: every block with legible captions, the settings that made it and
    the legend."""
    trace = run.trace
    maps = render.all_layer_maps(run.seen, trace, view=view)
    caps = compose.layer_captions(trace)
    img = compose.layer_strip(
        maps,
        caps,
        title=settings_line(run),
        marked=[l in trace.condensing_layers for l in range(trace.depth)],
    )
    return img


def gif_title(run: ExplorerRun) -> str:
    """The GIF's title line: short enough for a 448 px frame (the strip PNG has the long one)."""
    c = run.result.config
    method = METHODS[c.method]
    what = f"{method.title} R={c.keep_rate:g}" if method.step is not None else "no condensing"
    return f"{run.image_name or 'image'} \u00b7 {run.model} \u00b7 {what}"


def depth_frames(run: ExplorerRun, d: Display) -> list[Image.Image]:
    """One frame per block (the current view and followed patch), captioned, for the GIF."""
    trace = run.trace
    d = d.clamped(trace)
    frames = []
    title = gif_title(run)
    means = render.patch_means(run.seen, trace.grid)
    for l in range(trace.depth):
        m = render.fate_map(run.seen, trace, l, means=means, view=d.view, follow=d.patch)
        cap = (
            f"block {l}{'*' if l in trace.condensing_layers else ''}: "
            f"{trace.tokens_per_layer[l]} tokens"
        )
        img = compose.grid(
            [[render.upscale(m, 2)]],
            [[cap]],
            font_size=16,
            marked=[[l in trace.condensing_layers]],
            title=title,
            legend=True,
        )
        frames.append(img)
    return frames


def chart_image(run: ExplorerRun, layer: int) -> np.ndarray:
    r, trace = run.result, run.trace
    names = arithmetic.segment_names(METHODS[r.config.method], trace.prefix)
    return charts.tokens_chart_image(
        r.baseline_tokens,
        r.tokens_per_layer,
        trace.condensing_layers,
        label=r.config.describe().split(",")[0],
        title="Tokens per block",
        current=int(layer),
        stack=[c.as_tuple() for c in arithmetic.token_counts(trace)],
        stack_names=[names.get(k) for k in arithmetic.SEGMENTS],
    )


def why_image(run: ExplorerRun, patch: int | None) -> np.ndarray | None:
    """ "Why this patch?": the followed patch's place in every condensing block's ranking (None
    without a followed patch, or for a method that records no score, such as ToMe)."""
    if patch is None:
        return None
    rankings, places = why.why_patch(run.trace, run.result.config, patch)
    if not rankings:
        return None
    return charts.figure_to_array(charts.why_chart(rankings, places))


# ------------------------------------------------------------------------------ the whole page

BASELINE_TITLE = "Baseline CLIP (all tokens)"
STRIP_COLUMNS = 3  # tiles per strip row (one more for 24-block models)
# The page's parts a Run fills, by component name (app.py names its components the same).
RUN_PARTS = (
    "banner", "baseline", "condensed", "shift", "map", "layer", "info", "legend", "chart",
    "cost", "strip", "follow", "why", "stream", "corrected", "stale", "depth", "patch",
    "stop_follow",
)  # fmt: skip
LAYER_PARTS = ("map", "info", "chart", "follow")  # what moving to another block redraws
FOLLOW_PARTS = ("patch", "map", "follow", "why", "stop_follow")  # following a patch, or not


@dataclass(frozen=True)
class Screen:
    """The page around a Run that is not the Run's: the weights banner, stream mode and the
    session's reservoir, and whether the strip is redrawn or only its selection moves."""

    banner: str | None = None
    stream_on: bool = False
    stream: StreamState | None = None
    redraw_strip: bool = True
    startup: bool = False  # the start-up example every visitor opens on (its times are not theirs)


def strip_columns(depth: int) -> int:
    return STRIP_COLUMNS if depth <= 12 else STRIP_COLUMNS + 1


def parts(
    run: ExplorerRun, d: Display, names: Iterable[str] = RUN_PARTS, screen: Screen = Screen()
) -> dict[str, Any]:
    """The page's updates for a Run at a :class:`Display`: component name -> Gradio update (a
    ``gr.update`` dict; the session states ``depth`` and ``patch`` their bare value), only the
    parts named (each is built only when asked for)."""
    r, trace = run.result, run.trace
    d = d.clamped(trace)
    depth = trace.depth

    def strip() -> dict[str, Any]:
        if not screen.redraw_strip:
            return gr.update(selected_index=d.layer)
        return gr.update(
            value=strip_items(run, d.view), selected_index=d.layer, columns=strip_columns(depth)
        )

    corrected = r.corrected.as_dict() if r.corrected is not None else None
    make: dict[str, Callable[[], Any]] = {
        "banner": lambda: gr.update(value=screen.banner),
        "baseline": lambda: gr.update(value=r.baseline.as_dict(), label=BASELINE_TITLE),
        "condensed": lambda: gr.update(
            value=r.condensed.as_dict(), label=panels.condensed_title(r)
        ),
        "shift": lambda: gr.update(value=panels.shift_html(r)),
        "map": lambda: gr.update(value=map_image(run, d)),
        "layer": lambda: gr.update(maximum=depth - 1, value=d.layer),
        "info": lambda: gr.update(value=panels.layer_info(run, d.layer, d.overlay)),
        "legend": lambda: gr.update(
            value=panels.legend_html(r.config.method, trace) + panels.crop_note(run)
        ),
        "chart": lambda: gr.update(value=chart_image(run, d.layer)),
        "cost": lambda: gr.update(value=panels.cost_html(r, timed=not screen.startup)),
        "strip": strip,
        "follow": lambda: gr.update(value=panels.follow_html(run, d.patch, d.layer)),
        "why": lambda: gr.update(value=why_image(run, d.patch), visible=d.patch is not None),
        "stream": lambda: gr.update(
            value=panels.stream_html(run, screen.stream, screen.stream_on, r.config.method)
        ),
        "corrected": lambda: gr.update(value=corrected, visible=corrected is not None),
        "stale": lambda: gr.update(value=""),
        # gr.State outputs take the value itself (an update dict would be stored as the value)
        "depth": lambda: depth,
        "patch": lambda: d.patch,
        "stop_follow": lambda: gr.update(visible=d.patch is not None),
    }
    return {name: make[name]() for name in names}


def updates(
    ui: Mapping[str, Any],
    run: ExplorerRun,
    d: Display,
    names: Iterable[str] = RUN_PARTS,
    screen: Screen = Screen(),
) -> dict[Any, dict[str, Any]]:
    """:func:`parts` keyed by the components themselves (Gradio's dict return)."""
    return {ui[name]: update for name, update in parts(run, d, names, screen).items()}


def initial(update: dict[str, Any] | None, **fallback: Any) -> dict[str, Any]:
    """A component's constructor arguments from an update (the first screen built into the
    page), else ``fallback``."""
    if update is None:
        return fallback
    return {k: v for k, v in update.items() if k != "__type__"}


def exports(run: ExplorerRun, d: Display, out: ExportDir) -> dict[str, str]:
    """Write the downloads of one Run: strip PNG, depth GIF, JSON. Returns kind -> path."""
    stem = (run.image_name or "image").rsplit(".", 1)[0]
    return {
        "png": str(out.write_png(strip_png(run, d.clamped(run.trace).view), f"tca-{stem}-blocks")),
        "gif": str(out.write_gif(depth_frames(run, d), f"tca-{stem}-depth")),
        "json": str(out.write_json(export.export_dict(run), f"tca-{stem}-run")),
    }


# ------------------------------------------------------------------------------ compare / sweep


def compare_layers(cmp: Comparison) -> list[int]:
    """The blocks Compare draws: the request's condensing blocks in the tower (the fates after
    the last one are final), else the last block."""
    depth = next(iter(cmp.results.values())).trace.depth  # type: ignore[union-attr]
    return sorted({l for l in cmp.request.config.layers if l < depth}) or [depth - 1]


def compare_picture(cmp: Comparison) -> Image.Image:
    """One row of fate maps per method (its R in the row label), one column per condensing
    block."""
    traces = [cast(Trace, r.trace) for r in cmp.results.values()]  # compare always traces
    cols = compare_layers(cmp)
    means = render.patch_means(cmp.seen, traces[0].grid)
    tiles = [[render.fate_map(cmp.seen, t, l, means=means) for l in cols] for t in traces]
    return compose.grid(
        tiles,
        captions=[[f"{r.tokens_per_layer[l]} tokens" for l in cols] for r in cmp.results.values()],
        row_labels=[f"{METHODS[m].title} R={r.config.keep_rate:g}" for m, r in cmp.results.items()],
        col_labels=[f"after block {l}" for l in cols],
        legend=True,
        font_size=15,
    )


def disagreement_of(cmp: Comparison, a: str, b: str) -> Disagreement | None:
    """Methods ``a`` and ``b`` of the comparison after its last condensing block (None when
    either did not run)."""
    if a not in cmp.results or b not in cmp.results:
        return None
    ta, tb = cmp.results[a].trace, cmp.results[b].trace
    assert ta is not None and tb is not None
    return disagreement(a, ta, b, tb, compare_layers(cmp)[-1])


def disagreement_picture(cmp: Comparison, d: Disagreement) -> np.ndarray:
    """The disagreement map at twice the model's resolution."""
    return render.upscale(disagreement_map(cmp.seen, d), 2)


def stream_demo_picture(demo: StreamDemo, seen: np.ndarray) -> Image.Image:
    """The stream demo's probe after the last block, with the anchors and without them, side
    by side (the anchors change which patches CLS attends to, so the maps differ)."""
    runs = [("with anchors", demo.with_anchors), ("without anchors", demo.without_anchors)]
    tiles, caps = [], []
    for name, r in runs:
        if r is None or r.trace is None:
            continue
        last = r.trace.depth - 1
        tiles.append(render.upscale(render.fate_map(seen, r.trace, last), 2))
        top, p = r.final.top(1)[0]
        caps.append(f"{name}: {top} {p:.0%}")
    return compose.grid([tiles], [caps], legend=True, font_size=16)


def sweep_image(sw: Sweep) -> np.ndarray:
    series = {
        METHODS[m].title: {
            "gmacs": [p.gmacs for p in pts],
            "keep_rate": [p.keep_rate for p in pts],
            "top1": [p.top1_prob for p in pts],
            "base_label": [p.base_label_prob for p in pts],
            "kl": [p.kl for p in pts],
        }
        for m, pts in sw.points.items()
    }
    if sw.by == "gmacs":  # every method at the same costs: what changed, against GMACs
        change = {
            METHODS[m].title: {
                "gmacs": [p.gmacs for p in pts],
                "kl": [p.kl for p in pts],
                "kept": [1.0 if p.top1_kept else 0.0 for p in pts],
            }
            for m, pts in sw.points.items()
        }
        targets = sorted({p.target for pts in sw.points.values() for p in pts if p.target})
        return charts.figure_to_array(charts.change_chart(sw.gmacs_baseline, change, targets))
    return charts.figure_to_array(charts.sweep_chart(sw.gmacs_baseline, series))


__all__ = [
    "Display",
    "FOLLOW_PARTS",
    "MAP_ZOOM",
    "LAYER_PARTS",
    "RUN_PARTS",
    "Screen",
    "STRIP_SHRINK",
    "VIEW_CHOICES",
    "chart_image",
    "compare_layers",
    "compare_picture",
    "disagreement_of",
    "disagreement_picture",
    "depth_frames",
    "exports",
    "map_image",
    "patch_at",
    "parts",
    "updates",
    "initial",
    "settings_line",
    "strip_captions",
    "strip_items",
    "strip_png",
    "stream_demo_picture",
    "sweep_image",
]
