"""The one-click stream demo reaches active domain anchors on random weights (the bundled
sequence, real tiny open_clip ViT) and then runs the probe with and without them."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tca import stream_demo
from tca.config import CondenseConfig
from tca.errors import ConfigError
from tca.reservoir import ReservoirConfig

SPEC = stream_demo.load_spec()


def test_the_bundled_sequence_is_complete_and_credited():
    data = json.loads((stream_demo.STREAM_DIR / "stream.json").read_text())
    assert SPEC.labels == ("a cat", "galaxies")
    assert len(SPEC.images) == 8 and SPEC.probe.name == "chelsea.jpg"
    credits = (stream_demo.STREAM_DIR.parent / "CREDITS.md").read_text()
    for path in (*SPEC.images, SPEC.probe):
        assert Image.open(path).size[0] > 0
        assert path.name in credits or path.name.split("-")[0] in credits
    assert sum(p.stat().st_size for p in SPEC.images) < 200_000  # the repo stays small
    assert data["images"] == [p.name for p in SPEC.images]


def test_anchors_switch_on_with_random_weights(tiny_clip):
    demo = stream_demo.run(tiny_clip, SPEC)
    assert demo.active and demo.steps[-1].active
    assert not any(s.active for s in demo.steps[:-1])  # it stops at the first active step
    assert min(demo.steps[-1].bucket_sizes) == ReservoirConfig().min_per_class
    assert sum(demo.steps[-1].bucket_sizes) == len(demo.steps) == demo.reservoir.steps
    assert demo.with_anchors is not None and demo.with_anchors.anchors_used
    assert demo.with_anchors.corrected is not None
    assert not demo.without_anchors.anchors_used and demo.without_anchors.corrected is None
    # one baseline, two condensed runs of the same probe
    assert demo.with_anchors.baseline.probs == demo.without_anchors.baseline.probs
    assert demo.with_anchors.trace is not None and demo.without_anchors.trace is not None


def test_a_stream_that_never_fills_says_so(tiny_clip):
    demo = stream_demo.run(
        tiny_clip, SPEC, reservoir_config=ReservoirConfig(min_per_class=9), passes=1
    )
    assert not demo.active and demo.with_anchors is None
    assert [s.image for s in demo.steps] == [p.name for p in SPEC.images]


def test_only_methods_with_anchors(tiny_clip):
    with pytest.raises(ConfigError, match="needs a method with domain anchors \\(TCA\\), got EViT"):
        stream_demo.run(tiny_clip, SPEC, CondenseConfig(method="evit"))
