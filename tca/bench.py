"""`python -m tca bench`: how close to the FLOP-ideal speed-up condensation gets on this machine.

    python -m tca bench --batch-sizes 1,8 --keep-rates 1.0,0.9,0.7 --trace

Unpatched open_clip ``encode_image`` and every setting run interleaved in one process: each
repeat visits every (batch size, setting) once, round-robin, starting one place later each
repeat, so slow drifts of a shared machine hit all settings alike. After warm-up rounds the
median time per batch is reported with the speed-up over unpatched open_clip next to the GMACs
ratio (the FLOP-ideal speed-up). Beside every condensing setting, its zero-overhead limit
(``tca.zero_overhead``: the tower's own blocks on the same token counts, tokens simply sliced, no
scoring) is timed too, so the cost of choosing the tokens is visible at every batch size.
Weights are random by default: timing does not depend on them.
``tca`` is timed without domain anchors (an empty reservoir; anchors add one token at the
condensing layers).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .config import CondenseConfig
from .errors import ConfigError, InputError
from .flops import CONVENTION, Geometry, macs_for
from .methods import COMPARED, METHODS
from .patch import encode, is_patched, patch, schedule_for, unpatch
from .precision import bf16_support
from .timing import synchronize
from .towers import tower_for
from .zero_overhead import sliced_forward

DEFAULT_BATCH_SIZES = (1, 8)
DEFAULT_KEEP_RATES = (1.0, 0.9, 0.7, 0.5)
# Every condensing method can be timed; unpatched and patched "none" always are.
BENCH_METHODS = tuple(name for name, m in METHODS.items() if m.plan is not None)
DEFAULT_METHODS = COMPARED
UNPATCHED = "open_clip (unpatched)"
PATCHED_NONE = "none (patched)"
LIMIT_SUFFIX = " limit"  # a limit row is named after its setting: "tca R=0.7 limit"
# Issue 3's targets on a 2-core CPU with ViT-B/16.
TARGET_IDENTITY_OVERHEAD = 3.0  # %, patched with nothing removed vs unpatched
TARGET_TCA07 = {1: 1.30, 8: 1.45}  # speed-up of tca R=0.7 over unpatched, per batch size
TARGET_TRACE_OVERHEAD = 5.0  # %
# Issue 19's target: tca R=0.7 at batch 1 within this much of its zero-overhead limit.
TARGET_LIMIT_OVERHEAD = 5.0  # %
# median (the default) or min: the least-disturbed run, steadier on a busy shared machine.
STATISTICS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}
# wall (the default): elapsed time. cpu: CPU time of the timing thread, which leaves out the time
# spent waiting for a core on a loaded shared machine; meaningful on the CPU with one torch thread.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


@dataclass(frozen=True)
class Row:
    """One timed setting at one batch size."""

    batch_size: int
    name: str
    config: CondenseConfig | None  # None: unpatched open_clip
    trace: bool = False
    limit: bool = False  # the zero-overhead limit of ``config``'s schedule (tca.zero_overhead)

    @property
    def key(self) -> tuple[int, str]:
        return self.batch_size, self.name


def make_rows(
    batch_sizes: Sequence[int],
    methods: Sequence[str],
    keep_rates: Sequence[float],
    trace: bool = False,
    limits: bool = True,
) -> list[Row]:
    """Unpatched, patched ``none``, each method x keep rate, each followed (with ``limits``) by
    its zero-overhead limit where it condenses, and (with ``trace``) traced copies of the
    condensing ``tca`` settings (R < 1; of every setting when there are none)."""
    rows = []
    for b in batch_sizes:
        rows.append(Row(b, UNPATCHED, None))
        rows.append(Row(b, PATCHED_NONE, CondenseConfig(method="none")))
        settings = [
            Row(b, f"{m} R={r:g}", CondenseConfig(method=m, keep_rate=r))
            for m in methods
            for r in keep_rates
        ]
        for s in settings:
            rows.append(s)
            if limits and s.config is not None and not s.config.is_identity:
                rows.append(Row(b, s.name + LIMIT_SUFFIX, s.config, limit=True))
        if trace:
            traced = [s for s in settings if s.config and s.config.method == "tca"] or settings
            traced = [s for s in traced if s.config and not s.config.is_identity] or traced
            rows += [Row(b, s.name + " +trace", s.config, True) for s in traced]
    return rows


def check_options(
    batch_sizes: Sequence[int],
    methods: Sequence[str],
    keep_rates: Sequence[float],
    repeats: int = 5,
    warmup: int = 1,
    trace: bool = False,
    statistic: str = "median",
    limits: bool = True,
) -> list[Row]:
    """The rows to time, or a :class:`tca.errors.UserError` naming the bad option. The CLI calls
    it before loading the model, :func:`run_bench` again with the model."""
    if repeats < 1:
        raise InputError(f"--repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise InputError(f"--warmup must be >= 0, got {warmup}")
    if statistic not in STATISTICS:
        raise InputError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise InputError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    for m in methods:
        if m not in BENCH_METHODS:
            raise ConfigError(
                f"unknown method {m!r} for bench; choose from "
                f"{', '.join(BENCH_METHODS)} (unpatched and patched 'none' are "
                f"always timed)"
            )
    return make_rows(batch_sizes, methods, keep_rates, trace, limits)  # checks every keep rate


def machine_info() -> dict:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict = {
        "cpu_count": os.cpu_count(),
        "cpus_available": cpus,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_bf16": bf16_support().describe(),
    }
    try:
        import open_clip

        info["open_clip"] = open_clip.__version__
    except Exception:  # noqa: BLE001 - informational only
        pass
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_bench(
    model: torch.nn.Module,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    methods: Sequence[str] = DEFAULT_METHODS,
    keep_rates: Sequence[float] = DEFAULT_KEEP_RATES,
    repeats: int = 5,
    warmup: int = 1,
    trace: bool = False,
    seed: int = 0,
    name: str | None = None,
    statistic: str = "median",
    progress: Callable[[str], None] | None = None,
    limits: bool = True,
    clock: str = "wall",
) -> dict:
    """Time every row interleaved; returns a JSON-ready dict (``rows``, ``targets``, ``machine``).

    The model is left unpatched if it came unpatched, patched (``none``) otherwise. Inputs are
    made on the model's device; on CUDA every time is taken after synchronising.
    """
    rows = check_options(
        batch_sizes, methods, keep_rates, repeats, warmup, trace, statistic, limits
    )
    if clock not in CLOCKS:
        raise InputError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    was_patched = is_patched(model)
    patch(model, CondenseConfig(method="none"))  # validates layers against this model
    geom = Geometry.from_model(model)
    for row in rows:  # fail fast on settings this model cannot run
        if row.config is not None:
            macs_for(geom, row.config)
    size = geom.image_size
    gen = torch.Generator().manual_seed(seed)  # CPU draws: the same inputs on every device
    tower = tower_for(model)
    weight = tower.patch_embed_weight(getattr(model, "visual", model))
    device = weight.device
    inputs = {
        b: torch.randn(b, 3, size, size, generator=gen).to(device, weight.dtype)
        for b in batch_sizes
    }
    samples: dict[tuple[int, str], list[float]] = {row.key: [] for row in rows}
    load_before = machine_info().get("load_average")
    t_start = time.perf_counter()
    try:
        with torch.inference_mode():
            for rep in range(warmup + repeats):
                shift = rep % len(rows)
                for row in rows[shift:] + rows[:shift]:
                    ms = _time_once(model, row, inputs[row.batch_size], CLOCKS[clock])
                    if rep >= warmup:
                        samples[row.key].append(ms)
                if progress is not None:
                    what = "warm-up" if rep < warmup else f"repeat {rep - warmup + 1}/{repeats}"
                    progress(f"{what} done ({time.perf_counter() - t_start:.0f} s)")
    finally:
        if was_patched:
            patch(model, CondenseConfig(method="none"))
        else:
            unpatch(model)

    base_gmacs = macs_for(geom, CondenseConfig(method="none")).gmacs
    medians = {k: STATISTICS[statistic](v) for k, v in samples.items()}
    out_rows = []
    visual = getattr(model, "visual", model)
    for row in rows:
        med = medians[row.key]
        ref = medians[(row.batch_size, UNPATCHED)]
        report = macs_for(geom, row.config) if row.config is not None else None
        gmacs = base_gmacs if report is None else report.gmacs
        if report is not None and row.limit:
            gmacs = report.model / 1e9  # the same blocks without the condensation's overhead
        entry: dict = {
            "batch_size": row.batch_size,
            "setting": row.name,
            "method": "open_clip" if row.config is None else row.config.method,
            "keep_rate": None
            if row.config is None or row.config.method == "none"
            else row.config.keep_rate,
            "trace": row.trace,
            "limit": row.limit,
            "tokens_per_layer": list(
                schedule_for(
                    visual, row.config or CondenseConfig(method="none"), tower=tower
                ).tokens
            ),
            "median_ms": statistics.median(samples[row.key]),
            "min_ms": min(samples[row.key]),
            "time_ms": med,
            "ms_per_image": med / row.batch_size,
            "images_per_s": 1e3 * row.batch_size / med,
            "speedup": ref / med,
            "gmacs": gmacs,
            "gmacs_ratio": base_gmacs / gmacs,
            "samples_ms": samples[row.key],
        }
        entry["percent_of_ideal"] = 100.0 * entry["speedup"] / entry["gmacs_ratio"]
        if row.trace:
            plain = medians[(row.batch_size, row.name.removesuffix(" +trace"))]
            entry["trace_overhead_percent"] = 100.0 * (med / plain - 1.0)
        limit = medians.get((row.batch_size, row.name + LIMIT_SUFFIX))
        if limit is not None:
            entry["limit_ms"] = limit
            entry["limit_overhead_percent"] = 100.0 * (med / limit - 1.0)
        out_rows.append(entry)
    info = machine_info()
    info["load_average_before"] = load_before
    info["device"] = str(device)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return {
        "tool": "python -m tca bench",
        "model": name,
        "dtype": str(weight.dtype).removeprefix("torch."),
        "image_size": size,
        "repeats": repeats,
        "warmup": warmup,
        "statistic": f"{statistic} over interleaved repeats",
        "clock": clock,
        "convention": CONVENTION,
        "machine": info,
        "wall_s": time.perf_counter() - t_start,
        "rows": out_rows,
        "targets": targets(out_rows),
    }


def _time_once(
    model, row: Row, x: torch.Tensor, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Milliseconds of one forward of ``x`` (on the model's device) in ``row``'s setting, read
    from ``clock`` (see :data:`CLOCKS`)."""
    if row.limit:
        assert row.config is not None  # a limit row follows a setting's schedule
        visual = getattr(model, "visual", model)
        tower = tower_for(visual)
        schedule = schedule_for(visual, row.config, tower=tower)
        return _timed(lambda: sliced_forward(visual, x, schedule, tower), x.device, clock)
    if row.config is None:
        unpatch(model)
        try:
            return _timed(lambda: model.encode_image(x), x.device, clock)
        finally:
            patch(model, CondenseConfig(method="none"))
    config = row.config
    return _timed(lambda: encode(model, x, config, trace=row.trace), x.device, clock)


def _timed(
    forward: Callable[[], object], device: torch.device, clock: Callable[[], float]
) -> float:
    """Milliseconds ``forward()`` takes by ``clock``, the device idle before and after."""
    synchronize(device)
    t0 = clock()
    forward()
    synchronize(device)
    return (clock() - t0) * 1e3


def targets(rows: list[dict]) -> list[dict]:
    """Issue 3's speed targets and issue 19's limit target, for the rows that were measured."""
    by = {(r["batch_size"], r["setting"]): r for r in rows}
    out = []
    for r in rows:
        b = r["batch_size"]
        if (r["keep_rate"] == 1.0 and not r["trace"]) or r["setting"] == PATCHED_NONE:
            overhead = 100.0 * (1.0 / r["speedup"] - 1.0)
            out.append(
                {
                    "target": f"patched, nothing removed ({r['setting']}) vs unpatched, batch {b}",
                    "value": f"{overhead:+.1f}%",
                    "goal": f"<= +{TARGET_IDENTITY_OVERHEAD:g}%",
                    "met": overhead <= TARGET_IDENTITY_OVERHEAD,
                }
            )
    for b, goal in TARGET_TCA07.items():
        t = by.get((b, "tca R=0.7"))
        if t is not None:
            out.append(
                {
                    "target": f"tca R=0.7 speed-up over unpatched, batch {b}",
                    "value": f"{t['speedup']:.2f}x (FLOP-ideal {t['gmacs_ratio']:.2f}x)",
                    "goal": f">= {goal:.2f}x",
                    "met": t["speedup"] >= goal,
                }
            )
    t = by.get((1, "tca R=0.7"))
    if t is not None and "limit_ms" in t:
        o = t["limit_overhead_percent"]
        out.append(
            {
                "target": "tca R=0.7 vs its zero-overhead limit (issue 19), batch 1",
                "value": f"{o:+.1f}%",
                "goal": f"<= +{TARGET_LIMIT_OVERHEAD:g}%",
                "met": o <= TARGET_LIMIT_OVERHEAD,
            }
        )
    for r in rows:
        if r["trace"]:
            o = r["trace_overhead_percent"]
            out.append(
                {
                    "target": f"tracing {r['setting'].removesuffix(' +trace')}, batch "
                    f"{r['batch_size']}",
                    "value": f"{o:+.1f}%",
                    "goal": f"<= +{TARGET_TRACE_OVERHEAD:g}%",
                    "met": o <= TARGET_TRACE_OVERHEAD,
                }
            )
    return out


def _on_device(machine: dict) -> str:
    device = machine.get("device", "cpu")
    return "" if device == "cpu" else f", on {machine.get('gpu') or device}"


def format_table(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"{result['model'] or 'model'} @ {result['image_size']}px, {result.get('dtype', 'float32')}"
        f"  |  {m['cpus_available']} CPU(s) "
        f"({m['processor']}), torch {m['torch']} with {m['torch_threads']} thread(s)"
        f"{_on_device(m)}  |  "
        f"{result['statistic'].split()[0]} of {result['repeats']} interleaved repeats after "
        f"{result['warmup']} warm-up"
        + (", CPU time of the timing thread" if result.get("clock") == "cpu" else "")
    ]
    if m.get("load_average_before") is not None:
        lines.append(
            f"load average before {m['load_average_before']}, after {m.get('load_average')} "
            f"(other processes on the machine slow every row alike, not the ratios)"
        )
    head = (
        f"{'batch':>5}  {'setting':<22}{'ms/batch':>10}{'ms/img':>9}{'img/s':>8}"
        f"{'speed-up':>10}{'GMACs':>8}{'ideal':>8}{'of ideal':>10}{'vs limit':>10}"
    )
    lines += [head, "-" * len(head)]
    last_b = None
    for r in result["rows"]:
        if last_b is not None and r["batch_size"] != last_b:
            lines.append("")
        last_b = r["batch_size"]
        extra = f"  (trace {r['trace_overhead_percent']:+.1f}%)" if r["trace"] else ""
        vs_limit = (
            f"{r['limit_overhead_percent']:>+9.1f}%" if "limit_overhead_percent" in r else " " * 10
        )
        lines.append(
            f"{r['batch_size']:>5}  {r['setting']:<22}{r['time_ms']:>10.1f}"
            f"{r['ms_per_image']:>9.1f}{r['images_per_s']:>8.2f}{r['speedup']:>9.2f}x"
            f"{r['gmacs']:>8.2f}{r['gmacs_ratio']:>7.2f}x{r['percent_of_ideal']:>9.0f}%{vs_limit}"
            f"{extra}"
        )
    stat = result["statistic"].split()[0]
    lines.append(
        f"speed-up = unpatched {stat} / setting {stat}; ideal = GMACs ratio (the FLOP-ideal "
        f"speed-up); <setting> limit = the tower's own blocks on that setting's token counts, "
        f"tokens sliced, no scoring (its GMACs without the condensation's overhead); vs limit = "
        f"setting {stat} / limit {stat} - 1; {CONVENTION}."
    )
    if result["targets"]:
        lines.append(
            f"\nissue-3 / issue-19 targets (set for ViT-B/16 on the project's 2-core CPU; "
            f"this run: {result['model'] or 'model'}, {m['cpus_available']} CPU(s)):"
        )
        for t in result["targets"]:
            lines.append(
                f"  {'met    ' if t['met'] else 'NOT met'}  {t['target']}: {t['value']} "
                f"(goal {t['goal']})"
            )
    return "\n".join(lines)


__all__ = [
    "run_bench",
    "check_options",
    "make_rows",
    "format_table",
    "targets",
    "machine_info",
    "BENCH_METHODS",
    "STATISTICS",
]
