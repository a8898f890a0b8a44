"""Reservoir eviction, the anchor gate and the logits correction on hand-made tensors."""
from __future__ import annotations

import math

import pytest
import torch

import tca
from tca.reservoir import (Entry, Reservoir, ReservoirConfig, choose_eviction, entropy,
                           layer_affinity, layer_weights, stream_update)

L, D = 4, 3


def _cls(*rows) -> torch.Tensor:
    """(L, D) CLS tokens equal at every layer."""
    return torch.tensor(rows, dtype=torch.float32).expand(L, D).clone()


def _logits(c: int, n: int = 2, margin: float = 5.0) -> torch.Tensor:
    out = torch.zeros(n)
    out[c] = margin
    return out


def test_entropy_and_layer_weights():
    assert float(entropy(torch.zeros(4))) == pytest.approx(math.log(4))
    assert float(entropy(torch.tensor([100.0, 0.0]))) == pytest.approx(0.0, abs=1e-6)
    w = layer_weights(12, 0.01)
    assert w.sum() == pytest.approx(1.0) and w[-1] > 0.999  # small σ: the last layer only
    w = layer_weights(12, 1e6)
    assert torch.allclose(w, torch.full((12,), 1 / 12), atol=1e-6)  # huge σ: uniform
    w = layer_weights(3, 1.0)  # exp(0), exp(1/2), exp(1) normalised
    e = torch.tensor([1.0, math.exp(0.5), math.e])
    torch.testing.assert_close(w, e / e.sum())


def test_layer_affinity_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # L=2
    keys = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # cos = 1 at l0, 0 at l1
    assert float(layer_affinity(q, keys, torch.tensor([0.25, 0.75]))[0]) == pytest.approx(0.25)


def test_update_files_under_predicted_class_and_keeps_buckets_sorted():
    r = Reservoir(2, ReservoirConfig(size=3))
    r.update(_cls(1, 0, 0), torch.tensor([2.0, 0.0]))  # entropy ~0.13
    r.update(_cls(0, 1, 0), torch.tensor([9.0, 0.0]))  # entropy ~0.001
    assert [len(b) for b in r.buckets] == [2, 0]
    assert r.buckets[0][0].entropy < r.buckets[0][1].entropy
    with pytest.raises(ValueError, match="3 classes"):
        r.update(_cls(1, 0, 0), torch.zeros(3))


def test_diversity_eviction_removes_uncertain_and_redundant():
    bucket = [Entry(_cls(1, 0, 0), 0.5, step=1), Entry(_cls(1, 0.01, 0), 0.5, step=2),
              Entry(_cls(0, 1, 0), 0.5, step=3), Entry(_cls(0, 0, 1), 0.6, step=4)]
    # equal entropies for the first three: one of the two near-duplicates is the most redundant
    assert choose_eviction(bucket, "diversity") in (0, 1)
    assert choose_eviction(bucket, "uncertainty") == 3
    assert choose_eviction(bucket, "fifo") == 0
    # similarity rule prefers to evict the most *dissimilar* uncertain entry
    assert choose_eviction(bucket, "similarity") in (2, 3)


def test_bucket_never_exceeds_m_and_evicts_by_rule():
    r = Reservoir(2, ReservoirConfig(size=2, eviction="uncertainty"))
    for margin in (5.0, 1.0, 9.0):  # the uncertain middle one must go
        r.update(_cls(1, 0, 0), _logits(0, 2, margin))
        assert len(r.buckets[0]) <= 2
    kept = sorted(round(e.entropy, 6) for e in r.buckets[0])
    expected = sorted(round(float(entropy(_logits(0, 2, m))), 6) for m in (5.0, 9.0))
    assert kept == expected


def test_anchor_gate_needs_every_class_twice():
    r = Reservoir(2, ReservoirConfig(size=3, min_per_class=2))
    r.update(_cls(1, 0, 0), _logits(0))
    r.update(_cls(3, 0, 0), _logits(0))
    r.update(_cls(0, 2, 0), _logits(1))
    assert not r.active and r.anchors() is None  # class 1 has only one entry
    r.update(_cls(0, 4, 0), _logits(1))
    assert r.active
    anchors = r.anchors()
    assert anchors.shape == (2, L, D)
    torch.testing.assert_close(anchors[0], _cls(2, 0, 0))  # per-class mean per layer
    torch.testing.assert_close(anchors[1], _cls(0, 3, 0))
    r.reset()
    assert not r.active and r.steps == 0 and all(not b for b in r.buckets)


def test_correction_formula_by_hand():
    cfg = ReservoirConfig(size=3, scale=1.0, lambd=2.0, beta=3.0)
    r = Reservoir(2, cfg)
    r.update(_cls(1, 0, 0), _logits(0))
    r.update(_cls(0, 1, 0), _logits(0))
    query = _cls(1, 0, 0)
    # affinities 1 and 0 (same at every layer, weights sum to 1); class 1 is empty
    expected = torch.tensor([2.0 * (math.exp(0.0) + math.exp(-3.0)), 0.0])
    torch.testing.assert_close(r.correction(query), expected)


def test_stream_update_self_votes_and_is_per_stream():
    cfg = ReservoirConfig(size=3, lambd=1.0, beta=1.0)
    a, b = Reservoir(2, cfg), Reservoir(2, cfg)
    cls = torch.stack([_cls(1, 0, 0), _cls(0, 1, 0)])
    logits = torch.stack([_logits(0), _logits(1)])
    corrected = stream_update(a, cls, logits)
    # each image is filed first, then votes for its own class with affinity 1 -> +λ
    assert corrected[0, 0] == pytest.approx(float(logits[0, 0]) + 1.0)
    assert corrected[1, 1] == pytest.approx(float(logits[1, 1]) + 1.0)
    assert a.steps == 2 and b.steps == 0  # streams never share state


def test_presets():
    assert tca.preset("eurosat").size == 2
    assert tca.preset("default") == tca.preset("imagenet")
    assert tca.preset("food101", lambd=9.0).lambd == 9.0
    with pytest.raises(ValueError, match="unknown preset"):
        tca.preset("mnist")
    with pytest.raises(ValueError, match="eviction"):
        ReservoirConfig(eviction="random")


def test_stream_mode_end_to_end(tiny_clip, example_image):
    """Anchors switch on once every class holds two images, and then guide condensation."""
    labels = ["cat", "dog"]
    r = tca.Reservoir(2, tca.preset("default", min_per_class=1))
    config = tca.CondenseConfig(keep_rate=0.7)
    first = tca.classify(tiny_clip, example_image, labels, config, reservoir=r)
    assert not first.anchors_used and first.corrected is not None
    assert r.steps == 1
    # file one fake image under the other class so the gate opens
    other = 1 - first.condensed.probs.index(max(first.condensed.probs))
    r.update(first.cls_tokens[0], _logits(other))
    second = tca.classify(tiny_clip, example_image, labels, config, reservoir=r)
    assert second.anchors_used and r.steps == 3
    assert second.reservoir["active"] is True
    assert sum(second.corrected.probs) == pytest.approx(1.0, abs=1e-5)


def test_state_dict_round_trip_and_vectorised_correction(tmp_path):
    cfg = ReservoirConfig(size=2, scale=0.5, lambd=1.5, beta=2.0)
    r = Reservoir(3, cfg)
    g = torch.Generator().manual_seed(0)
    for i in range(7):
        r.update(torch.randn(L, D, generator=g), torch.randn(3, generator=g))
    query = torch.randn(L, D, generator=g)
    # the batched correction equals the per-class sum written out
    w = layer_weights(L, cfg.scale)
    by_hand = torch.zeros(3)
    for c, bucket in enumerate(r.buckets):
        for e in bucket:
            a = (torch.nn.functional.cosine_similarity(query, e.cls_tokens, dim=-1) * w).sum()
            by_hand[c] += cfg.lambd * torch.exp(-cfg.beta * (1 - a))
    torch.testing.assert_close(r.correction(query), by_hand)
    torch.save(r.state_dict(), tmp_path / "r.pt")
    back = Reservoir(3, cfg)
    back.load_state_dict(torch.load(tmp_path / "r.pt", weights_only=True))
    assert back.steps == r.steps and [len(b) for b in back.buckets] == [len(b) for b in r.buckets]
    torch.testing.assert_close(back.correction(query), r.correction(query))
    if r.active:
        torch.testing.assert_close(back.anchors(), r.anchors())
    with pytest.raises(ValueError, match="3 classes"):
        Reservoir(2, cfg).load_state_dict(r.state_dict())
