"""Where two methods disagree (tca.disagreement), on hand-made traces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tca.disagreement import SHARE, disagreement, disagreement_map
from tca.render import METHOD_COLORS
from tca.trace import KEPT, MERGED, PRUNED, Trace


def _trace(fates: list[int]) -> Trace:
    """A one-block trace of a 2 x 2 patch grid with the given fates."""
    fate = torch.tensor([[fates]], dtype=torch.uint8)
    index = torch.tensor([[[1, 2, 3, 3]]])
    return Trace((4,), (2, 2), index, fate, {}, (0,))


def test_counts_are_set_differences_and_the_table_adds_up():
    a = _trace([KEPT, KEPT, MERGED, PRUNED])
    b = _trace([KEPT, MERGED, KEPT, PRUNED])
    d = disagreement("tca", a, "tome", b, 0)
    assert d.only_a.tolist() == [False, True, False, False]
    assert d.only_b.tolist() == [False, False, True, False]
    assert d.counts() == {"only_a": 1, "only_b": 1, "both_kept": 1, "neither": 1}
    m = d.matrix()
    assert len(m) == 9 and sum(m.values()) == 4
    assert m[("kept", "kept")] == 1 and m[("kept", "merged")] == 1
    assert m[("merged", "kept")] == 1 and m[("pruned", "pruned")] == 1
    assert m[("merged", "merged")] == 0
    swapped = disagreement("tome", b, "tca", a, 0)
    assert swapped.counts()["only_a"] == d.counts()["only_b"]


def test_the_map_colours_each_class():
    a = _trace([KEPT, KEPT, MERGED, PRUNED])
    b = _trace([KEPT, MERGED, KEPT, PRUNED])
    d = disagreement("tca", a, "tome", b, 0)
    image = np.full((4, 4, 3), 200, dtype=np.uint8)  # 2 x 2 pixels per patch, grey 200
    out = disagreement_map(image, d)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [200, 200, 200]  # both kept: the image
    for (y, x), method in (((0, 2), "tca"), ((2, 0), "tome")):  # kept by one: its colour
        want = np.clip(SHARE * np.asarray(METHOD_COLORS[method]) + (1 - SHARE) * 200, 0, 255)
        assert out[y, x].tolist() == pytest.approx(want.astype(np.uint8).tolist(), abs=1)
        assert (out[y : y + 2, x : x + 2] == out[y, x]).all()
    assert out[3, 3].max() < 60  # merged or pruned by both: dark
    with pytest.raises(ValueError, match="patch grid"):
        disagreement_map(np.zeros((5, 4, 3), dtype=np.uint8), d)


def test_layers_and_grids_are_checked():
    a = _trace([KEPT] * 4)
    with pytest.raises(ValueError, match="out of range"):
        disagreement("tca", a, "evit", a, 1)
    other = Trace((4,), (1, 4), a.token_index, a.fate, {}, (0,))
    with pytest.raises(ValueError, match="different patch grids"):
        disagreement("tca", a, "evit", other, 0)
