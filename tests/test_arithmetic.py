"""Honest token arithmetic: the stacked count (CLS, kept, merged-group tokens, fused tokens) adds
up to the token count of every block, for every method, on real (tiny, random) towers."""

from __future__ import annotations

import pytest
import torch

import tca
from tca.arithmetic import TokenCount, count_sentence, segment_names, token_count, token_counts
from tca.condense import tca_tier_sizes
from tca.config import CondenseConfig
from tca.errors import ConfigError
from tca.methods import METHODS
from tca.trace import KEPT, MERGED, PRUNED, Trace

CONFIGS = ["tca-tiny-ViT", "tca-tiny-timm-token"]  # timm-avg is refused (no pool signal)


def _hand_trace(index: list[int], fate: list[int], tokens: int) -> Trace:
    return Trace(
        (tokens,),
        (2, 3),
        torch.tensor([[index]]),
        torch.tensor([[fate]], dtype=torch.uint8),
        {},
        (0,),
    )


def test_every_kind_of_token_counted_once():
    # patch 0 alone; 1 and 2 a group; 3 and 4 fused together; 5 dropped (no token)
    t = _hand_trace([1, 2, 2, 3, 3, -1], [KEPT, MERGED, MERGED, PRUNED, PRUNED, PRUNED], 4)
    assert token_count(t, 0) == TokenCount(1, 1, 1, 1)
    # a fused patch merged into a group later makes that token a group, not a fused token
    t = _hand_trace([1, 2, 3, 4, 4, 5], [KEPT, KEPT, KEPT, PRUNED, MERGED, KEPT], 6)
    assert token_count(t, 0) == TokenCount(1, 4, 1, 0)


def test_a_token_holding_no_patch_is_reported():
    t = _hand_trace([1, 2, 2, 3, 3, -1], [KEPT, MERGED, MERGED, PRUNED, PRUNED, PRUNED], 5)
    with pytest.raises(ValueError, match=r"block 0: 4 tokens by kind .* but 5 in the trace"):
        token_count(t, 0)


def test_sentence_names_every_segment_of_the_method():
    c = TokenCount(1, 65, 5, 3)
    assert count_sentence(c, METHODS["tca"]) == (
        "74 tokens = 1 CLS token + 65 kept patches + 5 coreset tokens + 3 fused tokens"
    )
    assert count_sentence(TokenCount(1, 60, 0, 2), METHODS["evit"]) == (
        "63 tokens = 1 CLS token + 60 kept patches + 2 fused tokens"
    )
    assert count_sentence(TokenCount(0, 90, 30, 0), METHODS["tome"], prefix=0) == (
        "120 tokens = 90 kept patches + 30 merged tokens"
    )
    assert count_sentence(TokenCount(1, 120, 0, 0), METHODS["ats"]) == (
        "121 tokens = 1 CLS token + 120 kept patches"
    )
    assert list(segment_names(METHODS["none"])) == ["summary", "kept"]


@pytest.fixture(scope="module", params=CONFIGS)
def clip(request):
    return tca.load_model(request.param, pretrained="none", seed=0)


@pytest.mark.parametrize("keep_rate", [0.5, 0.7])
@pytest.mark.parametrize("name", list(METHODS))
def test_stack_adds_up_for_every_method(clip, name, keep_rate):
    model = clip.model
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    cfg = CondenseConfig(method=name, keep_rate=keep_rate, layers=(2, 5, 8))
    tca.patch(model, CondenseConfig(method="none"))
    try:
        with torch.no_grad():
            enc = tca.encode(model, images, cfg, trace=True)
    except ConfigError as e:  # ATS on a tower without CLS: refused, and only that
        assert METHODS[name].needs_cls and "has no CLS token" in str(e)
        return
    finally:
        tca.unpatch(model)
    trace = enc.trace
    words = segment_names(METHODS[name], trace.prefix)
    for image in range(2):
        counts = token_counts(trace, image)
        assert [c.total for c in counts] == list(trace.tokens(image))
        for c in counts:  # a method only makes the kinds of token it has words for
            assert c.summary == trace.prefix
            assert ("groups" in words) or c.groups == 0
            assert ("fused" in words) or c.fused == 0
        before = counts[1]  # no condensing yet: every patch its own token
        assert before == TokenCount(trace.prefix, trace.token_index.shape[-1], 0, 0)


def test_first_tca_block_matches_its_plan(clip):
    """At the first condensing block: t1 patches kept, at most K coreset tokens, one fused."""
    model = clip.model
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    cfg = CondenseConfig(method="tca", keep_rate=0.7, merge_centers=4)
    tca.patch(model, CondenseConfig(method="none"))
    try:
        with torch.no_grad():
            trace = tca.encode(model, images, cfg, trace=True).trace
    finally:
        tca.unpatch(model)
    p = trace.token_index.shape[-1]
    t1, t2, t3 = tca_tier_sizes(p + 1, cfg.tca_rate)
    c = token_count(trace, 3)
    assert c.fused == 1 and c.summary == trace.prefix
    # a coreset centre nobody joined is a token holding one patch: counted as kept
    assert c.kept + c.groups == t1 + 4 and c.kept >= t1 and 1 <= c.groups <= 4
    assert c.total == trace.tokens()[3] == trace.prefix + t1 + 4 + 1
