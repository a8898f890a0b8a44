"""tca.render: token-fate maps, outlines, the attention overlay, the strip and the chart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import tca
from tca import charts, compose, render
from tca.app import panels
from tca.trace import KEPT, MERGED, PRUNED, Trace

ROWS = COLS = 4
PS = 8  # patch size in pixels


def _synthetic_trace() -> Trace:
    """4x4 patches, 2 layers. Layer 0: all kept. Layer 1: patches {0, 1, 4} merged into token 1,
    {10, 11} merged into token 2, {14, 15} pruned into token 3, the rest kept."""
    p = ROWS * COLS
    idx0 = torch.arange(1, p + 1)
    idx1 = torch.empty(p, dtype=torch.long)
    fate1 = torch.full((p,), KEPT, dtype=torch.uint8)
    nxt = 4
    for i in range(p):
        if i in (0, 1, 4):
            idx1[i], fate1[i] = 1, MERGED
        elif i in (10, 11):
            idx1[i], fate1[i] = 2, MERGED
        elif i in (14, 15):
            idx1[i], fate1[i] = 3, PRUNED
        else:
            idx1[i] = nxt
            nxt += 1
    token_index = torch.stack([idx0, idx1])[None]
    fate = torch.stack([torch.zeros(p, dtype=torch.uint8), fate1])[None]
    att = torch.linspace(0.0, 1.0, p)[None]
    return Trace((p + 1, nxt), (ROWS, COLS), token_index, fate, {1: att}, (1,))


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(30, 255, size=(ROWS * PS, COLS * PS, 3), dtype=np.uint8)


def _patch(img: np.ndarray, i: int) -> np.ndarray:
    r, c = divmod(i, COLS)
    return img[r * PS : (r + 1) * PS, c * PS : (c + 1) * PS]


def test_layer_without_condensation_is_the_image():
    img = _image()
    out = render.fate_map(img, _synthetic_trace(), 0)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(out, img)


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


def test_fates_are_drawn_as_specified():
    img, trace = _image(), _synthetic_trace()
    out = render.fate_map(img, trace, 1, border=1)
    # kept: untouched
    for i in (2, 3, 5, 6, 7, 8, 9, 12, 13):
        assert np.array_equal(_patch(out, i), _patch(img, i)), i
    # pruned: the patch's grey at PRUNED_BASE, with the white stripes on the hatch pixels
    hatch = render.hatch_mask(ROWS * PS, COLS * PS)
    for i in (14, 15):
        r, c = divmod(i, COLS)
        cell_hatch = hatch[r * PS : (r + 1) * PS, c * PS : (c + 1) * PS]
        base = (_gray(_patch(img, i)) * render.PRUNED_BASE).astype(np.uint8)
        cell = _patch(out, i)
        assert (cell[cell_hatch] == render.PRUNED_HATCH).all()
        assert np.array_equal(cell[~cell_hatch], np.repeat(base[~cell_hatch][:, None], 3, 1))
        assert cell_hatch.any() and (~cell_hatch).any()
    # merged: interior = MERGED_FILL x the group's palette colour + the rest x the patch's grey;
    # group {0, 1, 4} is the first by smallest patch (colour 0), {10, 11} the second (colour 1)
    for i, colour in (
        (0, render.GROUP_COLORS[0]),
        (1, render.GROUP_COLORS[0]),
        (10, render.GROUP_COLORS[1]),
    ):
        g = _gray(_patch(img, i))[3, 3]
        expect = (
            (render.MERGED_FILL * np.asarray(colour, np.float32) + (1 - render.MERGED_FILL) * g)
            .round()
            .astype(np.uint8)
        )
        assert np.array_equal(_patch(out, i)[3, 3], expect), i
    # outlines: the border between patch 0 and 1 (same group) is not drawn, the outside edge is
    assert not np.array_equal(_patch(out, 0)[3, PS - 1], render.OUTLINE_COLOR)
    assert np.array_equal(out[0, 0], render.OUTLINE_COLOR)  # image corner = group outline
    assert np.array_equal(_patch(out, 1)[3, PS - 1], render.OUTLINE_COLOR)  # towards kept 2
    assert np.array_equal(_patch(out, 10)[0, 3], render.OUTLINE_COLOR)


def test_pruned_patch_differs_from_its_kept_rendering_on_a_black_image():
    """On a black image darkening shows nothing: the pruned fate must still be visible."""
    black = np.zeros((ROWS * PS, COLS * PS, 3), np.uint8)
    trace = _synthetic_trace()
    kept = render.fate_map(black, trace, 0)  # layer 0: every patch kept
    pruned = render.fate_map(black, trace, 1)
    for i in (14, 15):
        assert np.array_equal(_patch(kept, i), _patch(black, i))
        assert not np.array_equal(_patch(pruned, i), _patch(kept, i))
        assert (_patch(pruned, i) == render.PRUNED_HATCH).all(axis=-1).mean() > 0.2
    # and on a white one too
    white = np.full_like(black, 255)
    assert not np.array_equal(_patch(render.fate_map(white, trace, 1), 14), _patch(white, 14))


def test_model_view_paints_each_token_with_its_patches_mean():
    img, trace = _image(), _synthetic_trace()
    out = render.fate_map(img, trace, 1, view="model", border=1)
    means = render.patch_means(img, trace.grid).reshape(-1, 3)
    group = means[[0, 1, 4]].mean(axis=0).round().astype(np.uint8)
    assert np.array_equal(_patch(out, 0)[3, 3], group) and np.array_equal(
        _patch(out, 4)[3, 3], group
    )
    fused = means[[14, 15]].mean(axis=0).round().astype(np.uint8)
    assert np.array_equal(_patch(out, 14)[3, 3], fused)
    # a kept patch: flat, its own mean, no outline (a token of one patch)
    assert (_patch(out, 6) == means[6].round().astype(np.uint8)).all()
    with pytest.raises(ValueError, match="view"):
        render.fate_map(img, trace, 1, view="x-ray")


def test_follow_highlight_lights_the_token_and_dims_the_rest():
    img, trace = _image(), _synthetic_trace()
    plain = render.fate_map(img, trace, 1)
    out = render.fate_map(img, trace, 1, follow=1)  # patch 1 shares token 1 with 0 and 4
    # the clicked patch is framed, its group partners keep their drawing inside, others dim
    assert np.array_equal(_patch(out, 1)[0, 3], render.HIGHLIGHT)
    assert np.array_equal(_patch(out, 4)[4, 4], _patch(plain, 4)[4, 4])
    assert (_patch(out, 6).astype(int) <= _patch(plain, 6).astype(int)).all()
    assert _patch(out, 6).mean() < 0.5 * _patch(plain, 6).mean() + 1
    assert np.array_equal(_patch(out, 0)[0, 3], (255, 255, 255))  # group outline: white


def test_group_colour_follows_the_group_not_the_token_index():
    """Same group, different token index: same colour (stable across depth)."""
    img, trace = _image(), _synthetic_trace()
    shifted = trace.token_index.clone()
    shifted[0, 1] = torch.where(
        shifted[0, 1] == 1,
        torch.tensor(7),
        torch.where(shifted[0, 1] == 7, torch.tensor(1), shifted[0, 1]),
    )
    other = Trace(
        trace.tokens_per_layer,
        trace.grid,
        shifted,
        trace.fate,
        trace.cls_attention,
        trace.condensing_layers,
    )
    assert np.array_equal(render.fate_map(img, trace, 1), render.fate_map(img, other, 1))


def test_shrink_box_averages_and_keeps_the_patch_grid():
    img = np.zeros((ROWS * PS, COLS * PS, 3), dtype=np.uint8)
    img[0::2, :, 0] = (
        10  # rows alternate 10 / 21 in red: each 2x2 box averages to 15.5 -> 16 (or 15 if rounding were floor)
    )
    img[1::2, :, 0] = 21
    img[:, :, 1] = 4 * np.arange(COLS * PS, dtype=np.uint8)[None, :]  # green = 4 x column
    small = render.shrink(img, (ROWS, COLS), 2)
    assert small.shape == (ROWS * PS // 2, COLS * PS // 2, 3) and small.dtype == np.uint8
    assert (small[..., 0] == 16).all()
    assert small[0, :, 1].tolist() == [8 * j + 2 for j in range(COLS * PS // 2)]
    assert (small[..., 2] == 0).all()
    # patch means survive the shrink, so the model view is the same map at half size
    assert np.allclose(
        render.patch_means(small, (ROWS, COLS)), render.patch_means(img, (ROWS, COLS)), atol=0.5
    )
    # the factor falls back to a divisor of the patch size (8 px: 3 -> 2), 1 returns the image
    assert render.shrink(img, (ROWS, COLS), 3).shape == small.shape
    assert render.shrink(img, (ROWS, COLS), 1) is img
    assert render.shrink(img, (ROWS, COLS), 8).shape == (ROWS, COLS, 3)


def test_outline_of_an_id_map():
    ids = np.zeros((6, 6), dtype=np.int64)
    ids[2:4, 2:4] = 1
    edge = render.outline(ids, 1)
    inner = np.zeros((6, 6), dtype=bool)
    inner[2:4, 2:4] = True
    assert edge[inner].all()  # the 2x2 block is all boundary
    assert edge[0].all() and edge[:, 0].all()  # image edge counts as a boundary
    assert not edge[1, 1] and edge[1, 2]  # 1,2 touches the block; 1,1 only diagonally
    wide = render.outline(ids, 2)
    assert wide.sum() > edge.sum() and (wide | edge).sum() == wide.sum()


def test_attention_overlay():
    img, trace = _image(), _synthetic_trace()
    plain = render.fate_map(img, trace, 1)
    assert np.array_equal(render.fate_map(img, trace, 1, attention=True, opacity=0.0), plain)
    full = render.fate_map(img, trace, 1, attention=True, opacity=1.0)
    lut = render._colormap_lut("inferno")
    assert np.array_equal(full[0, 0], lut[0])  # patch 0 has the lowest attention
    assert np.array_equal(full[-1, -1], lut[255])  # patch 15 the highest
    # no attention recorded at or before layer 0: the overlay leaves the map alone
    assert render.attention_layer(trace, 0) is None
    assert np.array_equal(render.fate_map(img, trace, 0, attention=True, opacity=1.0), img)
    grid = render.attention_grid(trace, 1)
    assert grid.shape == (ROWS, COLS) and grid.min() == 0.0 and grid.max() == 1.0
    with pytest.raises(ValueError, match="opacity"):
        render.blend_heatmap(img, grid, 1.5)


def test_bad_inputs_are_refused():
    trace = _synthetic_trace()
    with pytest.raises(ValueError, match="multiple of"):
        render.fate_map(np.zeros((30, 32, 3), np.uint8), trace, 1)
    with pytest.raises(ValueError, match="uint8"):
        render.fate_map(np.zeros((32, 32, 3), np.float32), trace, 1)
    with pytest.raises(ValueError, match="out of range"):
        render.fate_map(_image(), trace, 2)


@pytest.mark.parametrize("method", ["tca", "evit", "tome"])
def test_maps_of_a_real_run_match_the_trace(tiny_clip, example_image, method):
    """Every layer of a real traced run: each patch is drawn according to its recorded fate."""
    from tca.app.runs import seen_picture as model_view

    result = tca.classify(
        tiny_clip, example_image, "cat, dog, car", tca.CondenseConfig(method=method, keep_rate=0.7)
    )
    trace = result.trace
    view = model_view(tiny_clip, tca.load_image(example_image))
    assert view.shape == (224, 224, 3)
    maps = render.all_layer_maps(view, trace, border=1)
    assert len(maps) == trace.depth == 12
    ph = 224 // trace.grid[0]
    for layer, m in enumerate(maps):
        fate = trace.fate[0, layer].numpy()
        counts = trace.fate_counts(layer)
        same = [np.array_equal(_cell(m, i, ph), _cell(view, i, ph)) for i in range(fate.size)]
        hatched = [
            bool((_cell(m, i, ph) == render.PRUNED_HATCH).all(-1).any()) for i in range(fate.size)
        ]
        assert all(same[i] for i in np.flatnonzero(fate == KEPT))
        assert all(hatched[i] and not same[i] for i in np.flatnonzero(fate == PRUNED))
        assert sum(not s for s in same) == counts["merged"] + counts["pruned"]
    if method == "evit":
        assert trace.fate_counts(11)["pruned"] > 0
    if method == "tome":
        assert trace.fate_counts(11)["pruned"] == 0 and trace.fate_counts(11)["merged"] > 0


def _cell(img: np.ndarray, i: int, ph: int) -> np.ndarray:
    r, c = divmod(i, img.shape[1] // ph)
    return img[r * ph : (r + 1) * ph, c * ph : (c + 1) * ph]


def _box(arr: np.ndarray, colour: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the pixels of one colour (never one of the text's greys)."""
    ys, xs = np.nonzero((arr == colour).all(-1))
    return int(ys.min()), int(xs.min()), int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def test_strip_puts_tiles_in_rows_of_cols():
    colours = [(200, 10 + i * 20, 60) for i in range(8)]
    tiles = [np.full((20, 30, 3), c, np.uint8) for c in colours]
    strip = compose.layer_strip(tiles, [f"block {i}" for i in range(8)], cols=3, legend=False)
    assert isinstance(strip, Image.Image)
    arr = np.asarray(strip)
    boxes = [_box(arr, c) for c in colours]
    assert all(b[2:] == (20, 30) for b in boxes)  # every tile whole, at its size
    tops = [b[0] for b in boxes]
    lefts = [b[1] for b in boxes]
    assert tops[:3] == [tops[0]] * 3 and tops[3:6] == [tops[3]] * 3 and tops[6:] == [tops[6]] * 2
    assert tops[0] < tops[3] < tops[6] and tops[6] - tops[3] == tops[3] - tops[0]
    assert lefts[0::3] == [lefts[0]] * 3 and lefts[1] - lefts[0] == lefts[2] - lefts[1] == 30 + 4
    with_legend = compose.layer_strip(tiles, [f"block {i}" for i in range(8)], cols=3)
    assert with_legend.height > strip.height  # the legend band


def test_grid_with_headers():
    tiles = [[np.full((10, 10, 3), (200, 99, 60), np.uint8)] * 2] * 3
    bare = compose.grid(tiles)
    img = compose.grid(tiles, row_labels=["TCA", "EViT", "ToMe"], col_labels=["a", "b"])
    top, left, _, _ = _box(np.asarray(img), (200, 99, 60))
    top0, left0, _, _ = _box(np.asarray(bare), (200, 99, 60))
    assert top > top0 and left > left0  # the header row and column push the tiles in
    assert img.width - bare.width == left - left0


def test_tokens_chart():
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    base, cond = [197] * 12, [197] * 3 + [141] * 3 + [100] * 3 + [74] * 3
    fig = charts.tokens_chart(base, cond, (3, 6, 9), label="tca")
    ax = fig.axes[0]
    ys = [list(line.get_ydata()) for line in ax.lines[:2]]
    assert ys[0][:12] == base and ys[1][:12] == cond
    assert set(plt.get_fignums()) == before  # no pyplot figure left open
    arr = charts.figure_to_array(fig)
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8
    with pytest.raises(ValueError):
        charts.tokens_chart([1, 2], [1])


def test_chart_marks_the_current_block():
    base, cond = [197] * 12, [197] * 3 + [141] * 9
    a = charts.tokens_chart_image(base, cond, (3,), "tca", current=4)
    b = charts.tokens_chart_image(base, cond, (3,), "tca", current=8)
    assert not np.array_equal(a, b)
    fig = charts.tokens_chart(base, cond, (3,), "tca", current=4)
    spans = [p for p in fig.axes[0].patches if p.get_x() == 4]
    assert len(spans) == 1 and spans[0].get_width() == 1


def test_chart_image_is_memoised_per_schedule():
    base, cond = [197] * 12, [197] * 3 + [141] * 9
    a = charts.tokens_chart_image(base, cond, (3,), "tca")
    assert charts.tokens_chart_image(list(base), list(cond), [3], "tca") is a
    assert not a.flags.writeable
    b = charts.tokens_chart_image(base, [197] * 12, (), "none")
    assert b is not a and not np.array_equal(a, b)


def test_palette_is_the_categorical_one():
    pal = render.group_palette(20)
    n = len(render.GROUP_COLORS)
    assert len({tuple(c) for c in pal[:n]}) == n  # all distinct before repeating
    assert [tuple(c) for c in pal[n : 2 * n]] == list(render.GROUP_COLORS)
    assert render.FATES[MERGED].swatch == render.GROUP_COLORS[0]


def test_legend_shows_the_map_colours():
    """One colour source: the HTML legend's colours are those the maps are drawn with."""

    img, trace = _image(), _synthetic_trace()
    out = render.fate_map(img, trace, 1)
    legend = panels.legend_html()
    for style in render.FATES.values():
        assert f'data-fate="{style.name}"' in legend
    hex_ = lambda c: "#{:02x}{:02x}{:02x}".format(*c)  # noqa: E731
    # the pruned stripes and the first group colours appear in the legend's CSS and on the map
    assert hex_(render.PRUNED_HATCH) in legend
    assert (out == render.PRUNED_HATCH).all(-1).any()
    for c in render.GROUP_COLORS[:3]:
        assert hex_(c) in legend
    # the map's merged fills are derived from exactly those palette colours
    drawn = {tuple(_patch(out, 0)[3, 3]), tuple(_patch(out, 10)[3, 3])}
    expect = set()
    for i, k in ((0, 0), (10, 1)):
        g = _gray(_patch(img, i))[3, 3]
        expect.add(
            tuple(
                (
                    render.MERGED_FILL * np.asarray(render.GROUP_COLORS[k], np.float32)
                    + (1 - render.MERGED_FILL) * g
                )
                .round()
                .astype(np.uint8)
            )
        )
    assert drawn == expect
    # the exported strip's legend draws from the same FATES
    strip = compose.layer_strip([out], ["x"], legend=True)
    arr = np.asarray(strip)
    assert (arr == render.GROUP_COLORS[0]).all(-1).any()
    assert (arr == render.PRUNED_HATCH).all(-1).any()
