"""`classify`: the baseline is plain CLIP, computed once as data and shared, never a stand-in."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tca
import tca.pipeline
from tca import CondenseConfig

LABELS = ["cat", "dog", "car"]


def test_baseline_is_plain_clip_and_is_passed_on_not_recomputed(
    tiny_clip, example_image, monkeypatch
):
    first = tca.classify(
        tiny_clip, example_image, LABELS, CondenseConfig(keep_rate=0.7), trace=False
    )
    x = tca.prepare_image(tiny_clip, example_image)
    with torch.inference_mode():
        tca.unpatch(tiny_clip.model)
        feats = tiny_clip.model.encode_image(x)  # open_clip itself, unpatched
    expected = (
        tiny_clip.logit_scale * F.normalize(feats.float(), dim=-1) @ tiny_clip.encode_text(LABELS).T
    )
    assert first.baseline.logits == pytest.approx(expected[0].tolist(), abs=1e-4)
    assert first.baseline.logits != first.condensed.logits  # condensation changed the features
    assert first.baseline_tokens == [first.baseline_tokens[0]] * 12
    assert first.timings_ms["baseline_ms"] > 0

    methods = []
    real = tca.pipeline.encode

    def counting(model, pixels, config=None, **kw):
        methods.append(config.method)
        return real(model, pixels, config, **kw)

    monkeypatch.setattr(tca.pipeline, "encode", counting)
    second = tca.classify(
        tiny_clip,
        example_image,
        LABELS,
        CondenseConfig(method="evit", keep_rate=0.7),
        baseline=first.reference,
    )
    assert methods == ["evit"]  # no second baseline pass
    assert second.baseline == first.baseline and second.flops_baseline == first.flops_baseline
    assert second.baseline_tokens == first.baseline_tokens
    assert second.timings_ms["baseline_ms"] == first.timings_ms["baseline_ms"]
    third = tca.classify(tiny_clip, example_image, LABELS, CondenseConfig(method="tome"))
    assert methods == ["evit", "none", "tome"]  # without one, the baseline runs once
    assert third.baseline.logits == pytest.approx(first.baseline.logits, abs=1e-5)
    with pytest.raises(ValueError, match="other labels"):
        tca.classify(
            tiny_clip, example_image, "cat, dog", CondenseConfig(), baseline=first.reference
        )
