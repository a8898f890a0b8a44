"""The method registry: every record's flags and words agree with what the method does on a real
(tiny) open_clip ViT, and nothing else lists or switches on methods."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import tca
from tca.config import CondenseConfig, plan_layers
from tca.errors import ConfigError
from tca.methods import COMPARED, METHODS, method
from tca.trace import KEPT, MERGED, PRUNED

ROOT = Path(__file__).resolve().parents[1]
CONDENSING = [name for name, m in METHODS.items() if m.plan is not None]


def test_records_are_keyed_by_name_in_display_order():
    assert list(METHODS) == [
        "tca",
        "evit",
        "tome",
        "tome-paper",
        "ats",
        "pitome",
        "tofu",
        "zero-tprune",
        "repshift",
        "none",
    ]
    assert all(name == m.name for name, m in METHODS.items())
    assert (
        len({m.title for m in METHODS.values()}) == len({m.label for m in METHODS.values()}) == 10
    )
    assert COMPARED == ("tca", "evit", "tome") and tca.METHODS == tuple(METHODS)
    # a plan builder and a step come together: none has neither
    assert all((m.plan is None) == (m.step is None) for m in METHODS.values())
    assert CONDENSING == [
        "tca",
        "evit",
        "tome",
        "tome-paper",
        "ats",
        "pitome",
        "tofu",
        "zero-tprune",
        "repshift",
    ]


def test_unknown_method_names_the_choices():
    msg = (
        "unknown method 'tcaa'; choose one of tca, evit, tome, tome-paper, ats, pitome, tofu, "
        "zero-tprune, repshift, none"
    )
    with pytest.raises(ConfigError, match=re.escape(msg)):
        method("tcaa")
    with pytest.raises(ConfigError, match=re.escape(msg)):
        CondenseConfig(method="tcaa")
    assert method("ats") is METHODS["ats"]


@pytest.mark.parametrize("name", CONDENSING)
def test_flags_match_the_schedule(name):
    m = METHODS[name]
    s = plan_layers(CondenseConfig(method=name, keep_rate=0.7), 197, 12, anchors=True)
    assert s.anchors is m.anchors
    assert s.adaptive is m.adaptive
    # needs_cls: a tower without CLS is refused with the reason, and only then
    if m.needs_cls:
        with pytest.raises(
            ConfigError,
            match="has no CLS token; use tca, evit, tome, tome-paper, pitome, tofu, "
            "zero-tprune or repshift",
        ):
            plan_layers(CondenseConfig(method=name, keep_rate=0.7), 196, 12, prefix=0)
    else:
        assert (
            plan_layers(CondenseConfig(method=name, keep_rate=0.7), 196, 12, prefix=0).prefix == 0
        )


@pytest.mark.parametrize("name", CONDENSING)
def test_fates_worded_are_the_fates_given(tiny_clip, name):
    """A method whose record says it never merges (or never prunes) gives no patch that fate,
    and one that says it does gives it to some patch at R=0.5."""
    m = METHODS[name]
    model = tiny_clip.model
    tca.patch(model, CondenseConfig(method="none"))
    try:
        images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            enc = tca.encode(model, images, CondenseConfig(method=name, keep_rate=0.5), trace=True)
    finally:
        tca.unpatch(model)
    fate = enc.trace.fate
    assert bool((fate == MERGED).any()) is (m.fates.merged is not None)
    assert bool((fate == PRUNED).any()) is (m.fates.pruned is not None)
    assert bool((fate == KEPT).any())


def test_proportional_attention_only_where_the_record_says(tiny_clip):
    """ToMe (proportional) and the paper's ToMe (not) merge the same plan but differ only in the
    size bias: the record's flag is what the forward reads."""
    assert [n for n, m in METHODS.items() if m.proportional] == ["tome", "pitome", "tofu"]
    model = tiny_clip.model
    tca.patch(model, CondenseConfig(method="none"))
    try:
        images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            a = tca.encode(model, images, CondenseConfig(method="tome", keep_rate=0.6))
            b = tca.encode(model, images, CondenseConfig(method="tome-paper", keep_rate=0.6))
    finally:
        tca.unpatch(model)
    assert a.tokens_per_layer == b.tokens_per_layer
    assert not torch.allclose(a.features, b.features)


def test_no_module_switches_on_a_method_name():
    """Method names appear as data only in the registry: no `method == "tome"` or `in ("tca",
    ...)` tables elsewhere in the core (the CLI's defaults and docstrings aside)."""
    pattern = re.compile(r"method\s*(==|!=|in)\s*[\(\[\"'](tome|evit|ats|tome-paper)")
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in sorted((ROOT / "tca").rglob("*.py"))
        if p.name != "methods.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_tca_step_draws_the_first_centre_from_the_seeded_generator(tiny_clip):
    """center_seed reaches the coreset: a seeded run is reproducible and differs from the rule
    (most-attended first centre)."""
    model = tiny_clip.model
    tca.patch(model, CondenseConfig(method="none"))
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad():
            runs = [
                tca.encode(
                    model, images, CondenseConfig(keep_rate=0.5, merge_centers=3, center_seed=s)
                )
                for s in (None, 5, 5)
            ]
    finally:
        tca.unpatch(model)
    assert torch.equal(runs[1].features, runs[2].features)
    assert not torch.allclose(runs[0].features, runs[1].features)
