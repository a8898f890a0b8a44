"""The explorer's charts (matplotlib, built without pyplot so no global figure is left open):
tokens per block (baseline vs condensed, the current block marked) and the keep-rate sweep,
and turning a figure into an (H, W, 3) uint8 array. Colours come from ``tca.render``.
"""

from __future__ import annotations

import textwrap
from functools import lru_cache
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless; must precede any pyplot import elsewhere in the process

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .methods import METHODS, Method  # noqa: E402
from .render import ACCENT, GROUP_COLORS, HIGHLIGHT, METHOD_COLORS  # noqa: E402

# The tokens chart is drawn for the width the page shows it at (about 380 px beside the map on a
# 1280x720 screen, 580 px at 1920x1080): its smallest text is CHART_FONT_PT on a figure
# TOKENS_CHART_SIZE inches wide, 12 px or more on screen from 350 px wide (see chart_text_px).
TOKENS_CHART_SIZE = (4.6, 3.6)
TOKENS_CHART_DPI = 150  # crisp when shown wider than drawn at 100 dpi
CHART_FONT_PT = 12


def tokens_chart(
    baseline: Sequence[int],
    condensed: Sequence[int],
    condensing_layers: Sequence[int] = (),
    label: str = "condensed",
    title: str | None = None,
    size: tuple[float, float] = TOKENS_CHART_SIZE,
    current: int | None = None,
    stack: Sequence[Sequence[int]] | None = None,
    stack_names: Sequence[str | None] = (),
) -> Figure:
    """Tokens at every block output, baseline vs condensed (a step chart).

    Built with ``matplotlib.figure.Figure`` (Agg canvas, not pyplot): nothing stays registered
    globally, so the figure is freed with its last reference. Fixed margins instead of a layout
    engine and the series named at their ends instead of a legend box keep drawing cheap.
    current: the block shown on the map, shaded and labelled on the chart.
    stack: per block, the token count by kind (``tca.arithmetic.TokenCount.as_tuple``: CLS,
    kept, merged-group tokens, fused tokens), drawn as stacked bars whose tops are the condensed
    counts; stack_names: the words of the kinds present (``tca.arithmetic.segment_names``),
    written in a legend.
    """
    if len(baseline) != len(condensed):
        raise ValueError("baseline and condensed must have one count per layer")
    fig = Figure(figsize=size, dpi=TOKENS_CHART_DPI)
    fig.subplots_adjust(left=0.15, right=0.97, top=0.9 if title else 0.96, bottom=0.2)
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
    if stack is not None:
        if len(stack) != n or any(sum(c) != t for c, t in zip(stack, condensed)):
            raise ValueError("the stacked counts must add up to the condensed count of each block")
        bottom = np.zeros(n)
        for j, (colour, hatch) in enumerate(STACK_STYLES):
            heights = np.array([c[j] for c in stack], dtype=float)
            if not heights.any():
                continue
            name = stack_names[j] if j < len(stack_names) else None
            ax.bar(
                np.arange(n) + 0.5,
                heights,
                0.72,
                bottom=bottom,
                color=colour,
                hatch=hatch,
                edgecolor="#ffffff" if hatch else colour,
                lw=0,
                label=name,
            )
            bottom += heights
        # below the axes, so no bar is covered
        fig.subplots_adjust(bottom=0.43)
        ax.legend(
            fontsize=CHART_FONT_PT,
            loc="upper center",
            bbox_to_anchor=(0.45, -0.25),
            frameon=False,
            ncol=2,
            handlelength=1.5,
            columnspacing=1.0,
            labelspacing=0.25,
        )
    top = max(max(baseline), max(condensed))
    if current is not None and 0 <= current < n:
        ax.axvspan(current, current + 1, color=_hex(HIGHLIGHT), alpha=0.18, lw=0)
        x_text, align = marker_position(current, n)
        ax.text(
            x_text,
            top * 1.1,
            f"block {current}: {condensed[current]}",
            color=_hex(HIGHLIGHT),
            fontsize=CHART_FONT_PT,
            fontweight="bold",
            ha=align,
            va="top",
        )
    if stack is None:  # with the stack, the legend below names the two lines
        ax.text(
            0.2,
            baseline[0] - 0.03 * top,
            "baseline CLIP",
            color="#555555",
            fontsize=CHART_FONT_PT,
            va="top",
        )
        ax.text(
            n - 0.2,
            condensed[-1] + 0.03 * top,
            f"{label}: {condensed[-1]}",
            color="#d62728",
            fontsize=CHART_FONT_PT,
            ha="right",
            va="bottom",
        )
    ax.set_xlabel("block (dotted = condensing)", fontsize=CHART_FONT_PT)
    ax.set_ylabel("tokens (CLS incl.)", fontsize=CHART_FONT_PT)
    ax.set_xticks(x[:-1] if n <= 12 else x[:-1:2])
    ax.set_xlim(0, n)
    ax.set_ylim(0, top * 1.12)
    ax.tick_params(labelsize=CHART_FONT_PT)
    ax.grid(axis="y", alpha=0.3)
    if title:
        # left-aligned: the page's download icon sits in the picture's top-right corner
        ax.set_title(title, fontsize=CHART_FONT_PT + 1, loc="left")
    return fig


def marker_position(current: int, n: int) -> tuple[float, str]:
    """Where the shown block's label goes (x in blocks, horizontal alignment): centred over
    the block on the left, and from the block's middle on it ends left of the block, so that the
    label never reaches the picture's top-right corner, where the page puts its download icon."""
    if current < n / 2:
        return (current + 0.5, "center") if current > 0 else (float(current), "left")
    return current - 0.2, "right"


def chart_text_px(rendered_width_px: float, size: tuple[float, float] = TOKENS_CHART_SIZE) -> float:
    """The height in CSS pixels of the tokens chart's smallest text (``CHART_FONT_PT``) when the
    picture is shown ``rendered_width_px`` wide: a point is 1/72 inch of the figure's width."""
    return CHART_FONT_PT / 72 * rendered_width_px / size[0]


# (colour, hatch) of the stacked kinds of token, in TokenCount order: CLS, kept, groups, fused
STACK_STYLES: tuple[tuple[str, str], ...] = (
    ("#1f1f1f", ""),
    ("#b9b9b9", ""),
    ("#{:02x}{:02x}{:02x}".format(*GROUP_COLORS[0]), ""),
    ("#3c3c3c", "///"),
)


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
    stack: tuple[tuple[int, ...], ...] | None = None,
    stack_names: tuple[str | None, ...] = (),
) -> np.ndarray:
    arr = figure_to_array(
        tokens_chart(
            baseline,
            condensed,
            condensing_layers,
            label,
            title,
            current=current,
            stack=stack,
            stack_names=stack_names,
        )
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
    stack: Sequence[Sequence[int]] | None = None,
    stack_names: Sequence[str | None] = (),
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
        None if stack is None else tuple(tuple(int(v) for v in c) for c in stack),
        tuple(stack_names),
    )


def significant(value: float, digits: int = 2) -> str:
    """``value`` with ``digits`` significant digits, never rounded to a false zero:
    0.000123 -> '0.00012', 0.5 -> '0.5', 0 -> '0', 3.2e-07 -> '3.2e-07'."""
    if value == 0 or not np.isfinite(value):
        return f"{value:g}"
    return f"{value:.{digits}g}"


def _method(key: str) -> Method | None:
    return next((m for m in METHODS.values() if key in (m.name, m.title, m.label)), None)


def method_color(key: str) -> str:
    """The hex colour of a method, by its name or its title (``tca.render.METHOD_COLORS``)."""
    m = _method(key)
    return _hex(METHOD_COLORS[m.name]) if m is not None else "#333333"


def plateaus(gmacs: Sequence[float], rates: Sequence[float]) -> float | None:
    """The highest keep rate below which the cost no longer falls (the plan's cap, e.g. ToMe
    merges at most half the tokens of a block), or None. Points in ascending keep rate."""
    flat = None
    for i in range(len(gmacs) - 1):
        if abs(gmacs[i] - gmacs[i + 1]) <= 1e-9 * max(1.0, abs(gmacs[i])):
            flat = rates[i + 1]
        else:
            break
    return flat


def sweep_chart(
    gmacs_baseline: float,
    series: Mapping[str, Mapping[str, Sequence[float]]],
    size: tuple[float, float] = (9.0, 4.8),
) -> Figure:
    """Keep-rate sweep of one image: per method (one colour each, see :func:`method_color`),
    against GMACs, the condensed top-1 probability (solid), the probability of the baseline's
    top-1 label (dashed) and KL(baseline || condensed) (dotted, right axis); every top-1 point
    carries its own keep rate R, so each method's cost axis is its own. A method whose cost
    stops falling below some R gets a note there.

    series: method (name or title) -> {"gmacs", "keep_rate", "top1", "base_label", "kl"}
    (equal lengths, ascending keep rate).
    """
    fig = Figure(figsize=size, dpi=100)
    fig.subplots_adjust(left=0.07, right=0.64, top=0.9, bottom=0.12)
    ax = fig.add_subplot()
    ax2 = ax.twinx()
    # (series key, axis, marker, line style, legend text) of the three curves drawn per method
    curves = (
        ("top1", ax, "o", "-", "top-1 probability"),
        ("base_label", ax, "s", "--", "baseline's top-1 label"),
        ("kl", ax2, "^", ":", "KL (right axis)"),
    )
    notes = []
    for method, s in series.items():
        colour = method_color(method)
        for key, axis, marker, ls, _ in curves:
            axis.plot(s["gmacs"], s[key], ls, marker=marker, ms=4, color=colour, lw=1.6)
        flat = plateaus(s["gmacs"], s["keep_rate"])
        for g, r, p in zip(s["gmacs"], s["keep_rate"], s["top1"]):
            if flat is not None and r < flat:
                continue  # one label for the plateau: "≤R"
            ax.annotate(
                f"{r:g}" if r != flat else f"\u2264{r:g}",
                (g, p),
                xytext=(0, 5),
                textcoords="offset points",
                ha="center",
                fontsize=9,
                color=colour,
            )
        if flat is not None:
            m = _method(method)
            why = m.limit if m is not None and m.limit else "its plan removes no more"
            notes.append(f"{method}: the same cost for every R \u2264 {flat:g}: {why}")
    ax.axvline(gmacs_baseline, color="#7f7f7f", lw=1, ls=":")
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("GMACs of the image encoder (dotted line: baseline)", fontsize=11)
    ax.set_ylabel("probability", fontsize=11)
    ax2.set_ylabel("KL (nats)", fontsize=11)
    ax2.set_ylim(bottom=0)
    ax.tick_params(labelsize=10)
    ax2.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    ax.set_title("Keep-rate sweep of this image (numbers: keep rate R)", fontsize=12)
    from matplotlib.lines import Line2D

    methods = [Line2D([], [], color=method_color(m), lw=3, label=m) for m in series]
    kinds = [
        Line2D([], [], color="#333333", ls=ls, marker=mk, ms=4, label=text)
        for _, _, mk, ls, text in curves
    ]
    first = fig.legend(
        handles=methods,
        loc="upper left",
        bbox_to_anchor=(0.74, 0.92),
        fontsize=10,
        title="method",
        title_fontsize=10,
        frameon=False,
    )
    fig.add_artist(first)
    fig.legend(
        handles=kinds,
        loc="upper left",
        bbox_to_anchor=(0.74, 0.9 - 0.058 * (len(methods) + 2)),
        fontsize=9,
        frameon=False,
    )
    if notes:
        fig.text(0.745, 0.04, "\n".join(textwrap.fill(n, 36) for n in notes), fontsize=8.5)
    return fig


def change_chart(
    gmacs_baseline: float,
    series: Mapping[str, Mapping[str, Sequence[float]]],
    targets: Sequence[float] = (),
    size: tuple[float, float] = (9.0, 4.8),
) -> Figure:
    """Prediction change against cost, every method matched to the same GMACs: per method (one
    colour each), KL(baseline || condensed) against the GMACs it achieved, a filled circle where
    its top-1 is the baseline's and a cross where it changed. Dotted: the targets and the
    baseline. KL on a symmetric log scale (0 at the baseline itself).

    series: method (name or title) -> {"gmacs", "kl", "kept" (1.0 top-1 kept, 0.0 changed)}.
    """
    from matplotlib.lines import Line2D

    fig = Figure(figsize=size, dpi=100)
    fig.subplots_adjust(left=0.09, right=0.7, top=0.9, bottom=0.12)
    ax = fig.add_subplot()
    for t in targets:
        ax.axvline(t, color="#d0d0d0", lw=0.8, ls=":", zorder=0)
    ax.axvline(gmacs_baseline, color="#7f7f7f", lw=1, ls=":")
    for method, s in series.items():
        colour = method_color(method)
        ax.plot(s["gmacs"], s["kl"], "-", color=colour, lw=1.4, alpha=0.8)
        for g, kl, kept in zip(s["gmacs"], s["kl"], s["kept"]):
            if kept:
                ax.plot([g], [kl], "o", ms=6, color=colour)
            else:
                ax.plot([g], [kl], "X", ms=8, color=colour, mec="#222222", mew=0.6)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("GMACs each method achieved (dotted: targets, baseline)", fontsize=11)
    ax.set_ylabel("KL from baseline (nats)", fontsize=11)
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    ax.set_title("Prediction change at equal GMACs on this image", fontsize=12)
    handles = [Line2D([], [], color=method_color(m), lw=3, label=m) for m in series]
    handles += [
        Line2D([], [], color="#333333", ls="", marker="o", ms=6, label="top-1 kept"),
        Line2D([], [], color="#333333", ls="", marker="X", ms=8, label="top-1 changed"),
    ]
    fig.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(0.72, 0.92), fontsize=10, frameon=False
    )
    return fig


def colour_scale(
    lo: float,
    hi: float,
    label: str,
    cmap: str = "inferno",
    size: tuple[float, float] = (4.8, 0.75),
) -> Figure:
    """A horizontal colour bar from ``lo`` to ``hi`` (the min-max normalisation of a heat map,
    :func:`tca.render.value_range`), labelled: the scale of an overlay or a score map."""
    fig = Figure(figsize=size, dpi=100)
    fig.subplots_adjust(left=0.04, right=0.96, top=0.62, bottom=0.38)
    ax = fig.add_subplot()
    ax.imshow(np.linspace(0, 1, 256)[None, :], aspect="auto", cmap=cmap, extent=(0, 1, 0, 1))
    ax.set_yticks([])
    ax.set_xticks([0, 0.5, 1])
    mid = (lo + hi) / 2
    ax.set_xticklabels([significant(lo, 3), significant(mid, 3), significant(hi, 3)], fontsize=10)
    ax.set_title(label, fontsize=10, pad=3)
    return fig


_OUTCOME_COLOURS = {
    "kept": "#9a9a9a",
    "merged": _hex(GROUP_COLORS[0]),
    "fused": "#3c3c3c",
    "dropped": "#3c3c3c",
}


def why_chart(
    rankings: Sequence, places: Sequence, size_per_row: tuple[float, float] = (6.4, 1.9)
) -> Figure:
    """ "Why this patch?": per condensing block (one row each), the distribution of the score
    the block ranked its tokens by, split by what happened to them, with the plan's cut-offs
    (dashed) and the followed patch's token (a magenta line, its rank and fate written).

    rankings: :class:`tca.why.Ranking` per block; places: the :class:`tca.why.PatchPlace` of
    the followed patch at each (None where it was dropped earlier, or nothing followed).
    """
    if not rankings:
        raise ValueError("no condensing block recorded a score to rank by")
    w, h = size_per_row
    fig = Figure(figsize=(w, 0.9 + h * len(rankings)), dpi=100)
    fig.subplots_adjust(
        left=0.1,
        right=0.97,
        top=1 - 0.8 / fig.get_figheight(),
        bottom=0.55 / fig.get_figheight(),
        hspace=1.0,
    )
    axes = fig.subplots(len(rankings), 1, squeeze=False)[:, 0]
    fig.suptitle("Why this patch? Where it ranked at each condensing block", fontsize=11, y=0.995)
    for ax, r, place in zip(axes, rankings, places):
        scores = np.asarray(r.scores, dtype=np.float64)
        finite = np.isfinite(scores)
        lo, hi = (
            (float(scores[finite].min()), float(scores[finite].max())) if finite.any() else (0, 1)
        )
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
        # with a plan: coloured by its tiers (a lone coreset centre is still tier 2); else by
        # what the trace says happened
        if r.tiers is not None:
            groups = np.asarray([r.planned(t) for t in range(len(scores))])
        else:
            groups = np.asarray(r.outcome)
        stack, colours, names = [], [], []
        for name, colour in _OUTCOME_COLOURS.items():
            sel = (groups == name) & finite
            if sel.any():
                stack.append(scores[sel])
                colours.append(colour)
                names.append(f"{name} ({int(sel.sum())})")
        ax.hist(
            stack, bins=bins, stacked=True, color=colours, label=names, edgecolor="white", lw=0.4
        )
        tags = ["keep \u2265 ", "fuse < "][: len(r.cuts)]
        if r.tiers is not None and r.tiers[1] > 0 and r.tiers[2] == 0:
            tags = ["keep \u2265 "]
        for j, (cut, tag) in enumerate(zip(r.cuts, tags)):
            ax.axvline(cut, color="#222222", ls="--", lw=1.2)
            ax.annotate(
                tag + significant(cut, 3),
                (cut, 1),
                xycoords=("data", "axes fraction"),
                xytext=(3 if j == 0 else -3, 2),
                textcoords="offset points",
                fontsize=9,
                va="bottom",
                ha="left" if j == 0 else "right",
            )
        title = f"block {r.layer}: {len(scores)} tokens ranked by {r.score_name}"
        if not r.exact:
            title += " (this run ranks by cross-head rank)"
        ax.set_title(title, fontsize=10, loc="left", pad=16)
        if place is not None:
            ax.axvline(place.score, color=_hex(HIGHLIGHT), lw=2.2)
            ax.annotate(
                f"this patch: rank {place.rank} of {place.n}, {place.outcome}"
                + ("" if place.planned in (None, place.outcome) else f" (tier: {place.planned})"),
                (place.score, 0.55),
                xycoords=("data", "axes fraction"),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize=9,
                color=_hex(HIGHLIGHT),
                bbox={"fc": "white", "alpha": 0.85, "lw": 0, "pad": 1},
                ha="left" if place.score < (lo + hi) / 2 else "right",
            )
        ax.tick_params(labelsize=9)
        ax.set_ylabel("tokens", fontsize=9)
        ax.legend(fontsize=8, loc="upper right", frameon=False)
    axes[-1].set_xlabel("score (higher = more attended by CLS)", fontsize=10)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """(H, W, 3) uint8 rendering of a figure (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


__all__ = [
    "change_chart",
    "colour_scale",
    "figure_to_array",
    "method_color",
    "plateaus",
    "significant",
    "sweep_chart",
    "tokens_chart",
    "tokens_chart_image",
    "why_chart",
]
