"""Equal GMACs: the keep rate solved for a target cost (tca.budget), against hand counts."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tca import budget
from tca.config import CondenseConfig
from tca.errors import ConfigError
from tca.flops import Geometry, macs_for
from tca.methods import METHODS

D_TINY, HIDDEN_TINY, E_TINY = 64, 256, 64  # tests/model_configs/tca-tiny-ViT.json
D_B16, HIDDEN_B16, E_B16 = 768, 3072, 512


def _model_macs(tokens_out: list[int], d: int, hidden: int, embed: int) -> int:
    """MACs of a 12-block, 197-token ViT/16 at 224 whose block outputs hold ``tokens_out``:
    written out from the formula (4 N_in D^2 + 2 N_in^2 D + 2 N_out D hidden per block, the
    patch embedding 196 x 3 x 16^2 x D, the projection D x E)."""
    total, n_in = 196 * 3 * 16 * 16 * d + d * embed, 197
    for n_out in tokens_out:
        total += 4 * n_in * d * d + 2 * n_in * n_in * d + 2 * n_out * d * hidden
        n_in = n_out
    return total


def _schedule(after3: int, after6: int, after9: int) -> list[int]:
    return [197] * 3 + [after3] * 3 + [after6] * 3 + [after9] * 3


def test_grid_is_exact_multiples_of_the_step():
    g = budget.grid()
    assert len(g) == 1000 and g[0] == 0.001 and g[-1] == 1.0 and 0.7 in g and 0.35 in g
    app = budget.grid(0.1, 1.0)
    assert len(app) == 901 and app[0] == 0.1 and app[1] == 0.101
    assert budget.grid(0.25, 0.253) == (0.25, 0.251, 0.252, 0.253)
    with pytest.raises(ConfigError, match="keep-rate range"):
        budget.grid(0.0, 1.0)


def test_pick_rules_nearest_then_cheaper_then_preferred_rate():
    pts = [(0.5, 10.0), (0.6, 12.0), (0.7, 12.0), (0.8, 13.0)]
    assert budget.pick(pts, 12.4) == (0.7, 12.0)  # nearest cost; the mildest R of its step
    assert budget.pick(pts, 12.4, prefer=0.0) == (0.6, 12.0)  # ... or the R nearest prefer
    assert budget.pick(pts, 11.0) == (0.5, 10.0)  # 10 and 12 equally near: the cheaper
    assert budget.pick(pts, 12.6) == (0.8, 13.0)
    with pytest.raises(ValueError):
        budget.pick([], 1.0)


def test_evit_on_the_tiny_model_hand_counted():
    """EViT at R = 0.5 keeps ceil(R P) patches + 1 fused token: 196 -> 98 + 1 + CLS = 100,
    then ceil(0.5 x 99) = 50 -> 52, ceil(0.5 x 51) = 26 -> 28. Its cost is the target; the
    step of R giving exactly these counts is (97/196, 0.5], so the grid's 0.495 ... 0.5."""
    geom = Geometry.from_name("tca-tiny-ViT")
    overhead = sum(
        n * D_TINY + (n - 1 - keep) * D_TINY for n, keep in ((197, 98), (100, 50), (52, 26))
    )
    target = (_model_macs(_schedule(100, 52, 28), D_TINY, HIDDEN_TINY, E_TINY) + overhead) / 1e9
    cfg = CondenseConfig(method="evit", keep_rate=0.9)
    m = budget.solve(geom, cfg, target, prefer=1.0)
    assert m.keep_rate == 0.5 and m.gmacs == pytest.approx(target, rel=1e-12) and m.error == 0.0
    assert budget.solve(geom, cfg, target, prefer=0.0).keep_rate == 0.495
    assert budget.solve(geom, cfg.with_(keep_rate=0.497), target).keep_rate == 0.497
    assert m.within and not m.floor and not m.ceiling and m.step == 0.0  # a reachable cost
    # nothing on the grid is nearer than the pick
    points, refusal = budget.cost_curve(geom, cfg, budget.grid())
    assert refusal is None and len(points) == 1000
    assert min(abs(g - target) for _, g in points) == abs(m.error)


def test_tome_floor_on_vit_b16_hand_counted():
    """ToMe merges at most (N + 1) // 2 - 1 tokens per block: 197 -> 99 -> 50 -> 26 is as cheap
    as it gets, reached for every R <= 0.502 (int(197 (1 - R)) >= 98 needs R <= 99/197)."""
    geom = Geometry.from_name("ViT-B-16")
    d_h = D_B16 // 12
    overhead = sum(((n + 1) // 2) * (n // 2) * d_h + n * D_B16 for n in (197, 99, 50))
    floor = (_model_macs(_schedule(99, 50, 26), D_B16, HIDDEN_B16, E_B16) + overhead) / 1e9
    m = budget.solve(geom, CondenseConfig(method="tome", keep_rate=0.7), 5.0)
    assert m.floor and not m.within and m.keep_rate == 0.502 and math.isnan(m.step)
    assert m.gmacs == pytest.approx(floor, rel=1e-12) and m.lowest == m.gmacs
    assert m.error == pytest.approx(floor - 5.0)
    # EViT reaches 5 GMACs (a fused token per block, nothing caps it)
    e = budget.solve(geom, CondenseConfig(method="evit"), 5.5)
    assert not e.floor and e.within


def test_every_method_matched_to_tca_at_r07_on_vit_b16():
    geom = Geometry.from_name("ViT-B-16")
    tca = CondenseConfig(keep_rate=0.7)
    target = budget.gmacs_at(geom, tca)
    assert target == pytest.approx(11.673449472, abs=1e-9)  # 141/100/74 tokens
    own = budget.solve(geom, tca, target, lo=0.1)
    assert own.keep_rate == 0.7 and own.error == 0.0  # matched to its own cost: its own R
    for name, m in METHODS.items():
        if m.plan is None:
            continue
        cfg = tca.with_(method=name)
        got = budget.solve(geom, cfg, target, lo=0.1)
        assert got.within, (name, got)
        assert got.gmacs == budget.gmacs_at(geom, cfg.with_(keep_rate=got.keep_rate))
        points, _ = budget.cost_curve(geom, cfg, budget.grid(0.1, 1.0))
        assert min(abs(g - target) for _, g in points) == abs(got.error), name
    # hand-checked: EViT at R = 0.705 keeps 139 + 1 fused (ceil(0.705 x 196) = 139), then
    # ceil(0.705 x 140) = 99 -> 101, ceil(0.705 x 100) = 71 (70.5 up) -> 73
    evit = budget.solve(geom, tca.with_(method="evit"), target, lo=0.1)
    assert evit.keep_rate == 0.705
    over = sum(n * D_B16 + (n - 1 - k) * D_B16 for n, k in ((197, 139), (141, 99), (101, 71)))
    hand = (_model_macs(_schedule(141, 101, 73), D_B16, HIDDEN_B16, E_B16) + over) / 1e9
    assert evit.gmacs == pytest.approx(hand, rel=1e-12)


def test_the_cost_is_what_the_flops_command_prints():
    geom = Geometry.from_name("ViT-B-16")
    m = budget.solve(geom, CondenseConfig(method="pitome"), 11.0, lo=0.1)
    out = subprocess.run(
        [sys.executable, "-m", "tca", "flops", "--model", "ViT-B-16", "--method", "pitome"]
        + ["--keep-rate", str(m.keep_rate), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["gmacs"]["condensed"] == pytest.approx(m.gmacs, rel=1e-12)


def test_refusals_and_ceiling():
    # ATS ranks by CLS attention: a tower without CLS refuses every R, with the reason
    geom = Geometry(64, 12, 2, 16, 224, 64, prefix=0, pool="map", pool_hidden=256)  # SigLIP-like
    m = budget.solve(geom, CondenseConfig(method="ats"), 1.0)
    assert m.keep_rate is None and "no CLS token" in (m.refusal or "") and math.isnan(m.error)
    assert not m.within and not m.floor
    # TCA with K = 16 refuses the R whose tier 2 is smaller than 16; the rest are matched
    tiny = Geometry.from_name("tca-tiny-ViT")
    k16 = CondenseConfig(merge_centers=16)
    points, refusal = budget.cost_curve(tiny, k16, budget.grid())
    assert "merge centres K=16" in (refusal or "") and 0 < len(points) < 1000
    base = macs_for(tiny, CondenseConfig(method="none")).gmacs
    got = budget.solve(tiny, k16, 0.9 * base)
    macs_for(tiny, k16.with_(keep_rate=got.keep_rate))  # an R it accepts
    assert got.keep_rate in dict(points)
    # a target above the baseline: R = 1 (nothing removed) and the match says so
    up = budget.solve(tiny, CondenseConfig(method="evit"), 2 * base)
    assert up.ceiling and up.gmacs == up.highest
    # ... which is not R = 1: at R = 0.99 EViT fuses 1 patch into 1 fused token, so 197 tokens
    # stay and each of the 3 blocks pays its scoring (the one place where the cost rises as R falls)
    assert up.keep_rate == 0.99 and up.gmacs == pytest.approx(base + 3 * (197 + 1) * D_TINY / 1e9)
    with pytest.raises(ConfigError, match="target GMACs"):
        budget.solve(tiny, k16, 0.0)


def test_flops_command_matches_gmacs(capsys):
    from tca.cli import main

    argv = ["flops", "--model", "ViT-B-16", "--method", "evit", "--keep-rate", "0.7"]
    assert main([*argv, "--match-gmacs", "tca", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["keep_rate"] == 0.705 and d["match"]["keep_rate"] == 0.705
    assert d["match"]["target_gmacs"] == pytest.approx(11.673449472, abs=1e-9)
    assert d["gmacs"]["condensed"] == d["match"]["gmacs"] and d["match"]["reachable"]
    assert main(["flops", "--model", "ViT-B-16", "--method", "tome", "--match-gmacs", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("equal GMACs: tome at R=0.502 costs 8.717 for a target of 5.000")
    assert "it cannot go below 8.717" in out
    assert main([*argv, "--match-gmacs", "cheap"]) == 2
    assert "--match-gmacs must be a number of GMACs or 'tca'" in capsys.readouterr().err


def test_a_target_between_two_coarse_steps_is_missed_by_half_the_step():
    """ViT-B/32 has 49 patches: TCA's costs move in coarse steps. A target in the middle of
    the widest one is missed by half of it, and the match says how wide the step is."""
    geom = Geometry.from_name("ViT-B-32")
    cfg = CondenseConfig(keep_rate=0.7)
    points, _ = budget.cost_curve(geom, cfg, budget.grid(0.1, 1.0))
    costs = sorted({c for _, c in points})
    lo, hi = max(zip(costs, costs[1:]), key=lambda ab: ab[1] - ab[0])
    m = budget.solve(geom, cfg, (lo + hi) / 2, lo=0.1)
    assert m.step == pytest.approx(hi - lo) and abs(m.error) == pytest.approx((hi - lo) / 2)
    assert m.gmacs in (lo, hi)  # equally near up to rounding (the tie rule: test_pick_rules)
    assert not m.within and not m.floor and (hi - lo) / 2 > budget.TOLERANCE * m.target
