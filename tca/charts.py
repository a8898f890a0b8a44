"""The explorer's charts (matplotlib, built without pyplot so no global figure is left open):
tokens per block (baseline vs condensed, the current block marked) and the keep-rate sweep,
and turning a figure into an (H, W, 3) uint8 array. Colours come from ``tca.render``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless; must precede any pyplot import elsewhere in the process

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .render import ACCENT, GROUP_COLORS, HIGHLIGHT  # noqa: E402


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
    # (series key, axis, marker, colour, legend text) of the three curves drawn per method
    curves = (
        ("top1", ax, "o", GROUP_COLORS[4], "top-1 prob"),
        ("base_label", ax, "s", GROUP_COLORS[0], "baseline's top-1 label"),
        ("kl", ax2, "^", GROUP_COLORS[5], "KL from baseline"),
    )
    for i, (method, s) in enumerate(series.items()):
        ls = styles[i % len(styles)]
        tag = f" {method}" if len(series) > 1 else ""
        for key, axis, marker, colour, text in curves:
            axis.plot(
                s["gmacs"], s[key], ls, marker=marker, ms=4, color=_hex(colour), label=text + tag
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


__all__ = ["figure_to_array", "sweep_chart", "tokens_chart", "tokens_chart_image"]
