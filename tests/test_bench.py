"""`python -m tca bench`: structure and arithmetic of the interleaved benchmark, with the tiny
random-weight ViT (the speed targets themselves are measured on ViT-B/16 for the README, never
asserted in tests)."""

from __future__ import annotations

import json
import statistics
import time

import pytest
import torch

import tca
from tca import bench
from tca.cli import main as cli_main
from tca.patch import schedule_for

TINY = "tca-tiny-ViT"


@pytest.fixture(scope="module")
def model():
    """Our own unpatched instance: run_bench must hand it back unpatched."""
    return tca.load_model(TINY, pretrained="none", seed=0).model


def test_make_rows():
    rows = bench.make_rows([1, 8], ["tca", "evit"], [1.0, 0.7], trace=True)
    names = [r.name for r in rows if r.batch_size == 1]
    assert names == [
        bench.UNPATCHED,
        bench.PATCHED_NONE,
        "tca R=1",
        "tca R=0.7",
        "tca R=0.7 limit",
        "evit R=1",
        "evit R=0.7",
        "evit R=0.7 limit",
        "tca R=0.7 +trace",
    ]  # trace and limits only where a setting condenses
    assert [r.name for r in rows if r.batch_size == 8] == names
    assert rows[0].config is None and all(r.trace == r.name.endswith("+trace") for r in rows)
    assert all(r.limit == r.name.endswith(" limit") for r in rows)
    limit = next(r for r in rows if r.limit)
    assert limit.config == tca.CondenseConfig(method="tca", keep_rate=0.7) and not limit.trace
    assert not any(r.limit for r in bench.make_rows([1], ["tca"], [0.7], limits=False))
    assert [r.name for r in bench.make_rows([1], ["tome"], [0.9], trace=True)][
        -1
    ] == "tome R=0.9 +trace"
    assert not any(r.trace for r in bench.make_rows([1], ["tca"], [0.7]))


def test_limit_rows_time_the_sliced_forward_on_the_settings_schedule(model, monkeypatch):
    """A limit row runs tca.zero_overhead.sliced_forward on exactly its setting's schedule; its entry
    has the same token counts as the setting and the setting's GMACs without the overhead."""
    seen = []
    real = bench.sliced_forward

    def recording(visual, x, schedule, tower):
        out, counts = real(visual, x, schedule, tower)
        seen.append((x.shape[0], counts))
        return out, counts

    monkeypatch.setattr(bench, "sliced_forward", recording)
    result = bench.run_bench(model, [1, 2], ["tca", "tome", "ats"], [1.0, 0.7], repeats=1, warmup=0)
    by = {(r["batch_size"], r["setting"]): r for r in result["rows"]}
    geom = tca.flops.Geometry.from_model(model)
    limits = [r for r in result["rows"] if r["limit"]]
    assert [(r["batch_size"], r["setting"]) for r in limits] == [
        (b, f"{m} R=0.7 limit") for b in (1, 2) for m in ("tca", "tome", "ats")
    ]
    assert len(seen) == len(limits)  # the sliced forward, once per limit row
    tca.patch(model)
    try:
        for r in limits:
            method = by[(r["batch_size"], r["setting"].removesuffix(" limit"))]
            config = tca.CondenseConfig(method=method["method"], keep_rate=0.7)
            schedule = schedule_for(model.visual, config)
            assert r["tokens_per_layer"] == method["tokens_per_layer"] == list(schedule.tokens)
            assert (r["batch_size"], r["tokens_per_layer"]) in seen
            report = tca.macs_for(geom, config)
            assert r["gmacs"] == pytest.approx(report.model / 1e9) and report.overhead > 0
            assert method["limit_ms"] == r["median_ms"]
            assert method["limit_overhead_percent"] == pytest.approx(
                100 * (method["median_ms"] / r["median_ms"] - 1)
            )
    finally:
        tca.unpatch(model)
    assert "limit_ms" not in by[(1, "tca R=1")]  # nothing condensed: no limit row
    assert [t["target"] for t in result["targets"]].count(
        "tca R=0.7 vs its zero-overhead limit (issue 19), batch 1"
    ) == 1
    assert "vs limit" in bench.format_table(result) and "tca R=0.7 limit" in bench.format_table(
        result
    )


def test_run_bench_interleaved(model, monkeypatch):
    calls = []
    real = bench._time_once

    def recording(m, row, x, clock):
        assert clock is time.perf_counter  # the default clock: wall time
        calls.append(row.key)
        assert x.shape[0] == row.batch_size
        assert x.device == next(m.parameters()).device  # inputs made on the model's device
        return real(m, row, x, clock)

    monkeypatch.setattr(bench, "_time_once", recording)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        before = model.encode_image(x)
    result = bench.run_bench(
        model, [1, 2], ["tca", "evit"], [1.0, 0.7], repeats=2, warmup=1, trace=True, name="tiny"
    )
    rows = bench.make_rows([1, 2], ["tca", "evit"], [1.0, 0.7], trace=True)
    n = len(rows)
    assert len(calls) == 3 * n
    for rep in range(3):  # every round visits every row once, starting one place later
        round_ = calls[rep * n : (rep + 1) * n]
        assert sorted(round_) == sorted(r.key for r in rows)
        assert round_[0] == rows[rep % n].key
    # the model comes back unpatched and bit-identical
    assert not tca.is_patched(model)
    with torch.inference_mode():
        assert torch.equal(model.encode_image(x), before)

    geom = tca.flops.Geometry.from_model(model)
    base = tca.macs_for(geom, tca.CondenseConfig(method="none")).gmacs
    by = {(r["batch_size"], r["setting"]): r for r in result["rows"]}
    assert len(result["rows"]) == n
    for r in result["rows"]:
        assert len(r["samples_ms"]) == 2 and all(s > 0 for s in r["samples_ms"])
        assert r["median_ms"] == statistics.median(r["samples_ms"]) == r["time_ms"]
        assert r["min_ms"] == min(r["samples_ms"])
        ref = by[(r["batch_size"], bench.UNPATCHED)]["median_ms"]
        assert r["speedup"] == pytest.approx(ref / r["median_ms"])
        assert r["ms_per_image"] == pytest.approx(r["median_ms"] / r["batch_size"])
        assert r["images_per_s"] == pytest.approx(1e3 * r["batch_size"] / r["median_ms"])
        cfg = (
            tca.CondenseConfig(method="none")
            if r["method"] in ("open_clip", "none")
            else tca.CondenseConfig(method=r["method"], keep_rate=r["keep_rate"])
        )
        report = tca.macs_for(geom, cfg)  # a limit row: the same blocks, no overhead
        assert r["gmacs"] == pytest.approx(report.model / 1e9 if r["limit"] else report.gmacs)
        assert r["gmacs_ratio"] == pytest.approx(base / r["gmacs"])
        assert r["percent_of_ideal"] == pytest.approx(100 * r["speedup"] / r["gmacs_ratio"])
    for b in (1, 2):
        assert by[(b, bench.UNPATCHED)]["speedup"] == 1.0
        assert by[(b, "tca R=1")]["gmacs_ratio"] == pytest.approx(1.0)
        assert by[(b, "tca R=0.7")]["gmacs_ratio"] > 1.4
        traced = by[(b, "tca R=0.7 +trace")]
        assert traced["trace"] and traced["trace_overhead_percent"] == pytest.approx(
            100 * (traced["median_ms"] / by[(b, "tca R=0.7")]["median_ms"] - 1)
        )
    goals = [t["target"] for t in result["targets"]]
    assert "tca R=0.7 speed-up over unpatched, batch 1" in goals  # batch 8 was not measured
    assert not any("batch 8" in g for g in goals)
    assert sum("nothing removed" in g for g in goals) == 6  # none + tca R=1 + evit R=1, x2 batches
    assert sum(g.startswith("tracing") for g in goals) == 2
    m = result["machine"]
    assert m["cpu_count"] >= 1 and m["torch_threads"] >= 1 and m["torch"] == torch.__version__
    table = bench.format_table(result)
    for text in (
        "open_clip (unpatched)",
        "tca R=0.7 +trace",
        "speed-up",
        "of ideal",
        "GMACs",
        f"torch {torch.__version__}",
        "issue-3 / issue-19 targets",
    ):
        assert text in table


def test_run_bench_keeps_a_patched_model_patched(model):
    tca.patch(model, tca.CondenseConfig(method="tca", keep_rate=0.7))
    try:
        result = bench.run_bench(
            model, [1], ["tome"], [0.7], repeats=2, warmup=0, statistic="min", clock="cpu"
        )
        assert result["clock"] == "cpu" and "CPU time of the timing thread" in bench.format_table(
            result
        )
        with pytest.raises(tca.InputError, match="clock must be one of wall, cpu, got 'sun'"):
            bench.run_bench(model, [1], ["tome"], [0.7], clock="sun")
        assert tca.is_patched(model)
        assert result["statistic"].startswith("min")
        assert all(r["time_ms"] == r["min_ms"] for r in result["rows"])
        assert "min of 2 interleaved repeats" in bench.format_table(result)
    finally:
        tca.unpatch(model)


def test_cli_json_and_table(capsys):
    argv = [
        "bench",
        "--model",
        TINY,
        "--batch-sizes",
        "1",
        "--keep-rates",
        "1,0.7",
        "--methods",
        "tca",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--trace",
    ]
    assert cli_main(argv + ["--json"]) == 0
    out, _ = capsys.readouterr()
    data = json.loads(out)  # one JSON object, nothing else on stdout
    assert data["random_weights"] is True and "RANDOM" in data["model"]
    assert [r["setting"] for r in data["rows"]] == [
        bench.UNPATCHED,
        bench.PATCHED_NONE,
        "tca R=1",
        "tca R=0.7",
        "tca R=0.7 limit",
        "tca R=0.7 +trace",
    ]
    assert {"cpu_count", "torch_threads", "torch"} <= set(data["machine"])
    threads = torch.get_num_threads()
    try:
        assert cli_main(argv + ["--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert "1 thread(s)" in out and "tca R=0.7 +trace" in out and "timing 6 rows" in err
    assert cli_main(argv + ["--no-limits", "--json"]) == 0
    out, _ = capsys.readouterr()
    assert not any(r["limit"] for r in json.loads(out)["rows"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--keep-rates", "0"], "keep rate must be in (0, 1]"),
        (["--methods", "none"], "unknown method 'none' for bench"),
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--warmup", "-1"], "--warmup must be >= 0"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_cli_errors(capsys, extra, message):
    rc = cli_main(["bench", "--model", TINY, *extra])
    _, err = capsys.readouterr()
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("error: ") and message in last
    assert "Traceback" not in err


def test_cli_bad_lists():
    for extra in (["--batch-sizes", "0"], ["--batch-sizes", "a"], ["--keep-rates", "x"]):
        with pytest.raises(SystemExit) as exc:
            cli_main(["bench", "--model", TINY, *extra])
        assert exc.value.code == 2


def test_options_are_checked_before_the_model_loads(capsys):
    rows = bench.check_options([1, 8], ["tca"], [0.7], repeats=1, warmup=0, trace=True)
    assert [r.name for r in rows] == [
        bench.UNPATCHED,
        bench.PATCHED_NONE,
        "tca R=0.7",
        "tca R=0.7 limit",
        "tca R=0.7 +trace",
    ] * 2
    with pytest.raises(tca.InputError, match="batch sizes must be positive integers, got \\[0\\]"):
        bench.check_options([0], ["tca"], [0.7])
    with pytest.raises(tca.InputError, match="statistic must be one of median, min, got 'mean'"):
        bench.check_options([1], ["tca"], [0.7], statistic="mean")
    rc = cli_main(["bench", "--model", "ViT-Q-99", "--repeats", "0"])  # never reaches the model
    assert rc == 2 and capsys.readouterr().err.strip() == "error: --repeats must be >= 1, got 0"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_bench_times_on_the_gpu():
    gpu = tca.load_model(TINY, pretrained="none", seed=0, device="cuda").model
    result = bench.run_bench(gpu, [1, 2], ["tca"], [0.7], repeats=2, warmup=1)
    assert result["machine"]["device"].startswith("cuda") and result["machine"]["gpu"]
    assert [r["setting"] for r in result["rows"]][:3] == [
        bench.UNPATCHED,
        bench.PATCHED_NONE,
        "tca R=0.7",
    ]
    assert all(r["median_ms"] > 0 and len(r["samples_ms"]) == 2 for r in result["rows"])
    assert not tca.is_patched(gpu)
