"""Reservoir eviction, the anchor gate and the logits correction on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

import tca
from tca.reservoir import (
    Entry,
    Reservoir,
    ReservoirConfig,
    choose_eviction,
    entropy,
    layer_affinity,
    layer_weights,
    stream_update,
)

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


def _bucket(vectors, entropies, steps) -> list[Entry]:
    """Entries whose CLS tokens differ per layer but average to ``vectors`` over the layers."""
    wobble = torch.tensor([[1.0, -1.0, 0.5]]).T * torch.tensor([[0.3, 0.2, -0.1]])  # (L=3, D) rows
    wobble = torch.cat([wobble, -wobble.sum(0, keepdim=True)])  # (L=4, D), sums to zero
    return [
        Entry(torch.tensor(v) + wobble, h, step=s) for v, h, s in zip(vectors, entropies, steps)
    ]


# Four entries on which the four rules all disagree. With τ the layer-mean CLS, normalised:
#   mean cosine to the others  = [0.2545, 0.4344, 0.6590, 0.6899]   (entry 3 the most redundant)
#   dissimilarity 1 - mean     = [0.7455, 0.5656, 0.3410, 0.3101], spread 0.4354
#   entropy h                  = [0.9, 1.0, 0.1, 0.8], range 0.9 -> similarity weight w = int(2.067) = 2
#   diversity  h + mean cosine = [1.1545, 1.4344, 0.7590, 1.4899] -> 3
#   similarity h + 2 dissim    = [2.3910, 2.1311, 0.7820, 1.4203] -> 0  (h - 2 dissim -> 3)
#   uncertainty argmax h -> 1; fifo: smallest step -> 2
DISAGREE = _bucket(
    [(0.0, 1.0, 0.0), (1.0, 0.0, 1.0), (3.0, 1.0, 0.0), (2.0, 1.0, 0.0)],
    [0.9, 1.0, 0.1, 0.8],
    [3, 2, 1, 4],
)


def test_each_eviction_rule_makes_its_own_choice():
    assert [
        choose_eviction(DISAGREE, rule)
        for rule in ("diversity", "similarity", "uncertainty", "fifo")
    ] == [3, 0, 1, 2]


def test_similarity_weight_is_the_entropy_range_over_the_dissimilarity_spread():
    # DISAGREE's geometry with entropies [1.2, 1.65, 2.0, 1.0]: range 1.0 / spread 0.4354 = 2.297,
    # so w = 2 and h + 2 dissim = [2.691, 2.781, 2.682, 1.620] -> 1. Any other weight chooses
    # differently: w = 1 -> [1.946, 2.216, 2.341, 1.310] -> 2, w = 3 -> [3.437, 3.347, 3.023, 1.930]
    # -> 0, w = 0 (pure uncertainty) -> 2.
    bucket = _bucket(
        [(0.0, 1.0, 0.0), (1.0, 0.0, 1.0), (3.0, 1.0, 0.0), (2.0, 1.0, 0.0)],
        [1.2, 1.65, 2.0, 1.0],
        [1, 2, 3, 4],
    )
    assert choose_eviction(bucket, "similarity") == 1
    # identical entries: no dissimilarity spread, so the rule falls back to pure uncertainty
    alike = _bucket([(1.0, 0.0, 0.0)] * 3, [0.2, 0.7, 0.4], [3, 1, 2])
    assert [choose_eviction(alike, rule) for rule in ("similarity", "diversity", "fifo")] == [
        1,
        1,
        1,
    ]


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
    for _ in range(7):
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
    # predicted classes of the seeded stream, evictions included: class 2 holds one entry only
    assert [[e.step for e in b] for b in back.buckets] == [[7, 3], [1, 4], [6]]
    assert not back.active and back.anchors() is None
    with pytest.raises(ValueError, match="3 classes"):
        Reservoir(2, cfg).load_state_dict(r.state_dict())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=0), "reservoir size M must be >= 1, got 0"),
        (dict(scale=0.0), "scale σ must be > 0, got 0.0"),
        (dict(min_per_class=0), "min_per_class must be >= 1, got 0"),
        (
            dict(eviction="random"),
            "eviction must be one of diversity, similarity, uncertainty, fifo, got 'random'",
        ),
    ],
)
def test_bad_reservoir_settings_are_named(kwargs, message):
    with pytest.raises(ValueError) as err:
        ReservoirConfig(**kwargs)
    assert str(err.value) == message


def test_smallest_valid_reservoir_settings():
    cfg = ReservoirConfig(size=1, scale=1e-6, min_per_class=1, eviction="fifo")
    assert (cfg.size, cfg.min_per_class) == (1, 1)
    with pytest.raises(ValueError) as err:
        Reservoir(0)
    assert str(err.value) == "a reservoir needs at least one class"
    r = Reservoir(1, cfg)
    assert r.buckets == [[]] and not r.active  # one class, empty: the gate is shut
    r.update(_cls(1, 0, 0), torch.tensor([0.3]))
    assert r.active and r.anchors().shape == (1, L, D)
    r.update(_cls(0, 1, 0), torch.tensor([0.1]))  # M = 1, FIFO: the first entry leaves
    assert [e.step for e in r.buckets[0]] == [2]


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError) as err:
        tca.preset("mnist")
    assert str(err.value).startswith(
        "unknown preset 'mnist'; choose one of default, caltech101, dtd, "
    )


def test_entropy_is_per_row():
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(entropy(logits), torch.tensor([math.log(2), 0.0, math.log(2)]))


def test_layer_weights_are_exact_in_double_precision():
    l = torch.arange(5, dtype=torch.float64)
    assert torch.equal(layer_weights(5, 0.3), torch.softmax(l / (4 * 0.3), dim=0).float())
    assert torch.equal(layer_weights(1, 0.3), torch.ones(1))  # one layer: weight 1, no 0/0
    two = torch.softmax(torch.tensor([0.0, 1.0], dtype=torch.float64) / 0.3, dim=0).float()
    assert torch.equal(layer_weights(2, 0.3), two)  # L - 1 = 1


def test_update_records_step_embedding_and_eviction_rule():
    r = Reservoir(3, ReservoirConfig(size=2, eviction="fifo"))
    emb = torch.tensor([0.6, 0.8], dtype=torch.float64)
    assert r.update(_cls(1, 0, 0), _logits(2, 3), emb) == 2
    assert r.update(_cls(0, 1, 0), _logits(2, 3, margin=1.0)) == 2
    first, second = sorted(r.buckets[2], key=lambda e: e.step)
    assert (first.step, second.step) == (1, 2)
    assert first.embedding.dtype == torch.float32 and torch.equal(first.embedding, emb.float())
    assert second.embedding is None
    assert first.cls_tokens.dtype == torch.float32
    # a third image: FIFO evicts step 1 even though its entropy is the lowest
    r.update(_cls(0, 0, 1), _logits(2, 3, margin=2.0))
    assert sorted(e.step for e in r.buckets[2]) == [2, 3]
    # buckets stay sorted by entropy (margin 2 is more certain than margin 1)
    assert [e.step for e in r.buckets[2]] == [3, 2]


def test_state_dict_round_trip_keeps_every_field():
    r = Reservoir(2, ReservoirConfig(size=2))
    r.update(_cls(1, 0, 0), _logits(0), torch.tensor([1.0, 0.0]))
    r.update(_cls(0, 1, 0), _logits(1, margin=2.0))
    back = Reservoir(2, ReservoirConfig(size=2))
    back.load_state_dict(r.state_dict())
    assert back.steps == 2
    for got, want in zip(back.buckets, r.buckets):
        assert [(e.step, e.entropy) for e in got] == [(e.step, e.entropy) for e in want]
        assert all(torch.equal(a.cls_tokens, b.cls_tokens) for a, b in zip(got, want))
    assert torch.equal(back.buckets[0][0].embedding, torch.tensor([1.0, 0.0]))
    assert back.buckets[1][0].embedding is None
    assert isinstance(back.buckets[0][0].entropy, float) and isinstance(
        back.buckets[0][0].step, int
    )
    state = r.state_dict()
    state["buckets"] = state["buckets"][:1]  # right class count, wrong number of buckets
    with pytest.raises(ValueError) as err:
        back.load_state_dict(state)
    assert str(err.value) == "state is for 2 classes, reservoir has 2"


def test_stream_update_with_embeddings_and_more_images_than_classes():
    r = Reservoir(2, ReservoirConfig(size=3, lambd=1.0, beta=1.0))
    cls = torch.stack([_cls(1, 0, 0), _cls(0, 1, 0), _cls(1, 0, 0)])
    logits = torch.stack([_logits(0), _logits(1), _logits(0)])
    emb = torch.eye(3)[:, :2]
    corrected = stream_update(r, cls, logits, emb)
    assert r.steps == 3 and [len(b) for b in r.buckets] == [2, 1]
    assert torch.equal(r.buckets[1][0].embedding, emb[1])
    # image 3 votes with affinity 1 for both class-0 entries (itself and image 1), 1/e for class 1
    torch.testing.assert_close(corrected[2], logits[2] + torch.tensor([2.0, math.exp(-1.0)]))
    assert corrected.dtype == torch.float32


def test_summary_is_exact():
    r = Reservoir(2, ReservoirConfig(size=3, min_per_class=1))
    r.update(_cls(1, 0, 0), torch.tensor([0.0, 0.0]))  # entropy log 2
    assert r.summary(["cat", "dog"]) == {
        "active": False,
        "images_seen": 1,
        "min_per_class": 1,
        "size": 3,
        "buckets": {"cat": [{"step": 1, "entropy": round(math.log(2), 4)}], "dog": []},
    }
    assert list(r.summary()["buckets"]) == ["0", "1"]


def test_stream_update_at_another_logit_scale():
    # logits at s = 50 (ratio 1/2): the reservoir sees them at 100 (doubled), and the correction
    # comes back halved: s cos + (s / 100) λ Σ exp(-β (1 - a))
    r = Reservoir(2, ReservoirConfig(size=3, lambd=1.0, beta=1.0))
    cls = torch.stack([_cls(1, 0, 0), _cls(0, 1, 0)])
    logits = torch.tensor([[2.5, 0.0], [0.0, 1.0]])
    corrected = stream_update(r, cls, logits, logit_scale=50.0)
    assert [e.entropy for e in r.buckets[0]] == [float(entropy(torch.tensor([5.0, 0.0])))]
    assert [e.entropy for e in r.buckets[1]] == [float(entropy(torch.tensor([0.0, 2.0])))]
    # image 0 votes for itself (affinity 1); image 1 for itself, and with affinity 0 for image 0
    torch.testing.assert_close(corrected, torch.tensor([[3.0, 0.0], [0.5 * math.exp(-1.0), 1.5]]))
    for bad in (0.0, -1):
        with pytest.raises(ValueError) as err:
            stream_update(Reservoir(2), cls, logits, logit_scale=bad)
        assert str(err.value) == f"logit scale must be > 0, got {bad}"
