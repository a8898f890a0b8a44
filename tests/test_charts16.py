"""The pictures of issue 16: group numbers on the map, the score overlay's colour scale, the
stacked token counts, "why this patch?" and the sweep with one colour per method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tca import charts, render
from tca.methods import METHODS
from tca.trace import KEPT, MERGED, PRUNED, Trace
from tca.why import patch_place, ranking


def _trace(index, fate, tokens, grid=(2, 4)):
    return Trace(
        (tokens,),
        grid,
        torch.tensor([[index]]),
        torch.tensor([[fate]], dtype=torch.uint8),
        {},
        (0,),
    )


def test_group_numbers_sit_in_every_part_of_each_group():
    # 2x4 grid: token 1 = patches 0, 1 (one region); token 2 = patches 3 and 6 (two regions,
    # not touching); patch 2 kept, 4 fused, 5 and 7 kept
    index = [1, 1, 3, 2, 4, 5, 2, 6]
    fate = [MERGED, MERGED, KEPT, MERGED, PRUNED, KEPT, MERGED, KEPT]
    t = _trace(index, fate, 7)
    # numbers by the groups' first patch: token 1 (patch 0) is 1, token 2 (patch 3) is 2
    assert render.group_labels(t, 0) == [(1, 0, 0), (2, 0, 3), (2, 1, 2)]


def test_group_numbers_are_drawn_in_their_cells_only():
    t = _trace(
        [1, 1, 3, 2, 4, 5, 2, 6], [MERGED, MERGED, KEPT, MERGED, PRUNED, KEPT, MERGED, KEPT], 7
    )
    img = np.full((64, 128, 3), 90, dtype=np.uint8)  # 32 px patches
    out = render.draw_group_numbers(img, render.group_labels(t, 0), t.grid)
    changed = (out != img).any(axis=2)
    cells = {
        (r, c)
        for r in range(2)
        for c in range(4)
        if changed[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32].any()
    }
    assert cells == {(0, 0), (0, 3), (1, 2)}
    assert tuple(out[16, 16]) == (255, 255, 255) or tuple(out[16, 16]) == (0, 0, 0)  # disc or digit
    with pytest.raises(ValueError, match="not a multiple"):
        render.draw_group_numbers(np.zeros((30, 30, 3), np.uint8), [], t.grid)


def test_score_overlay_and_its_scale():
    values = np.array([[0.1, 0.3], [np.nan, 0.5]])
    assert render.value_range(values) == (0.1, 0.5)
    assert render.value_range(np.full((2, 2), np.nan)) is None
    img = np.zeros((4, 4, 3), np.uint8)
    out = render.score_overlay(img, values, opacity=1.0)
    lut = render._colormap_lut("inferno")
    assert tuple(out[0, 0]) == tuple(lut[0]) and tuple(out[2, 2]) == tuple(lut[255])
    assert tuple(out[0, 2]) == tuple(lut[127])  # 0.3 is halfway
    fig = charts.colour_scale(0.1, 0.5, "head-mean CLS attention")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "0.3", "0.5"]
    assert ax.get_title() == "head-mean CLS attention"


def test_significant_keeps_small_values_honest():
    assert charts.significant(0.000123) == "0.00012"
    assert charts.significant(0.5) == "0.5"
    assert charts.significant(0.0) == "0"
    assert charts.significant(3.2e-7) == "3.2e-07"
    assert charts.significant(0.004567, 3) == "0.00457"


def test_plateau_is_where_the_cost_stops_falling():
    assert charts.plateaus([9.5, 9.5, 9.5, 12.0, 15.0], [0.1, 0.3, 0.5, 0.7, 0.9]) == 0.5
    assert charts.plateaus([5, 7, 9], [0.1, 0.5, 0.9]) is None


def _series(gmacs):
    rates = [0.1, 0.3, 0.5, 0.7, 1.0]
    return {
        "gmacs": gmacs,
        "keep_rate": rates,
        "top1": [0.2, 0.3, 0.4, 0.5, 0.6],
        "base_label": [0.1, 0.2, 0.3, 0.4, 0.6],
        "kl": [0.3, 0.2, 0.1, 0.05, 0.0],
    }


def test_sweep_one_colour_per_method_and_each_point_its_own_rate():
    series = {"TCA": _series([5, 8, 10, 12, 17.6]), "ToMe": _series([9.5, 9.5, 9.5, 12.5, 17.6])}
    fig = charts.sweep_chart(17.6, series)
    ax, ax2 = fig.axes[0], fig.axes[1]
    tca_colour, tome_colour = charts.method_color("TCA"), charts.method_color("tome")
    assert tca_colour != tome_colour
    assert tca_colour == "#{:02x}{:02x}{:02x}".format(*render.METHOD_COLORS["tca"])
    lines = ax.get_lines() + ax2.get_lines()
    drawn = {(tuple(l.get_xdata()), l.get_color()) for l in lines if len(l.get_xdata()) == 5}
    assert ((5, 8, 10, 12, 17.6), tca_colour) in drawn and (
        (9.5, 9.5, 9.5, 12.5, 17.6),
        tome_colour,
    ) in drawn
    # the keep rate is written at each method's own points (the plateau once, as "≤0.5")
    notes = {(t.get_text(), t.xy[0], t.get_color()) for t in ax.texts}
    assert {("0.1", 5, tca_colour), ("0.7", 12, tca_colour), ("1", 17.6, tca_colour)} <= notes
    assert ("\u22640.5", 9.5, tome_colour) in notes and ("0.1", 9.5, tome_colour) not in notes
    # the plateau is explained in the method's own words
    words = " ".join(t.get_text() for t in fig.texts)
    assert "ToMe: the same cost for every R \u2264 0.5" in words.replace("\n", " ")
    assert "at most half" in words.replace("\n", " ") and METHODS["tome"].limit


def test_stacked_counts_must_add_up():
    base, cond = [197] * 4, [197, 141, 141, 100]
    ok = [(1, 196, 0, 0), (1, 137, 2, 1), (1, 137, 2, 1), (1, 95, 2, 2)]
    fig = charts.tokens_chart(
        base, cond, (1, 3), "tca", stack=ok, stack_names=["CLS", "kept", "groups", "fused"]
    )
    tops = {}
    for patch in fig.axes[0].patches:
        x = round(patch.get_x() + patch.get_width() / 2, 2)
        tops[x] = max(tops.get(x, 0), patch.get_y() + patch.get_height())
    assert [tops[k] for k in sorted(tops)] == cond
    with pytest.raises(ValueError, match="must add up"):
        charts.tokens_chart(base, cond, (1, 3), "tca", stack=[(1, 196, 0, 0)] * 4)


def test_why_chart_marks_the_cut_offs_and_the_patch():
    from tca.plans import TierPlan

    att = torch.tensor([[0.4, 0.1, 0.3, 0.2]])
    index = torch.tensor([[[1, 2, 3, 4], [1, 3, 2, 2]]])
    fate = torch.tensor([[[KEPT] * 4, [KEPT, PRUNED, MERGED, MERGED]]], dtype=torch.uint8)
    trace = Trace((5, 4), (2, 2), index, fate, {1: att}, (1,))
    r = ranking(trace, 1, TierPlan(5, 4, 1, 2, 1, 1))
    fig = charts.why_chart([r], [patch_place(r, trace, 3)])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["keep \u2265 0.35", "fuse < 0.15", "this patch: rank 3 of 4, merged"]
    with pytest.raises(ValueError, match="no condensing block"):
        charts.why_chart([], [])
