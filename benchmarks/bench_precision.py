"""CPU precision (issue 19): fp32 and bf16 of the same model, interleaved in one process, each
with unpatched open_clip, a condensing setting and that setting's zero-overhead limit
(``tca.zero_overhead``: the tower's own blocks on the same token counts, tokens sliced, no scoring).

    HF_HUB_OFFLINE=1 python benchmarks/bench_precision.py [--model ViT-B-16-quickgelu]
        [--batch-sizes 1,8] [--method tca] [--keep-rate 0.7] [--repeats 15] [--threads 2]
        [--clock wall|cpu]

The bf16 model is ``tca.precision.cast`` of the fp32 one (open_clip's mixed precision). Every
repeat visits every (precision, batch, row) once, round-robin, starting one place later each
repeat (as ``python -m tca bench``); medians (and minima) are reported with the ratios that
matter: bf16 over fp32, the setting over unpatched, and the setting over its limit. The load
average before and after is printed with the figures: the machine is shared, prefer the ratios.
Weights are random: timing does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import tca  # noqa: E402
from tca import bench  # noqa: E402
from tca.precision import bf16_support, cast  # noqa: E402
from tca.towers import input_dtype  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-16-quickgelu")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--method", default="tca")
    p.add_argument("--keep-rate", type=float, default=0.7)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--clock",
        choices=tuple(bench.CLOCKS),
        default="wall",
        help="wall (default) or cpu: CPU time of the timing thread (with --threads 1; "
        "leaves out waiting for a core on a loaded machine)",
    )
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    fp32 = tca.load_model(args.model, "none", seed=0)
    models = {"fp32": fp32.model, "bf16": cast(fp32, "bf16").model}
    for m in models.values():
        tca.patch(m)
    rows = [
        (prec, row)
        for prec in models
        for row in bench.make_rows(batches, [args.method], [args.keep_rate])
        if row.name != bench.PATCHED_NONE
    ]
    gen = torch.Generator().manual_seed(0)
    images = {b: torch.randn(b, 3, 224, 224, generator=gen) for b in batches}
    inputs = {(p, b): images[b].to(input_dtype(m)) for p, m in models.items() for b in batches}
    samples: dict[tuple[str, int, str], list[float]] = {
        (p, r.batch_size, r.name): [] for p, r in rows
    }
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    with torch.inference_mode():
        for rep in range(args.warmup + args.repeats):
            shift = rep % len(rows)
            for prec, row in rows[shift:] + rows[:shift]:
                ms = bench._time_once(
                    models[prec], row, inputs[(prec, row.batch_size)], bench.CLOCKS[args.clock]
                )
                if rep >= args.warmup:
                    samples[(prec, row.batch_size, row.name)].append(ms)
            print(
                f"round {rep + 1}/{args.warmup + args.repeats} "
                f"({time.perf_counter() - t_start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in samples.items()}
    low = {k: min(v) for k, v in samples.items()}
    setting = f"{args.method} R={args.keep_rate:g}"
    names = (bench.UNPATCHED, setting, setting + bench.LIMIT_SUFFIX)
    info = bench.machine_info()
    print(
        f"{args.model} (random weights) | {info['processor']}, {info['cpu_bf16']} | "
        f"torch {torch.__version__}, {args.threads} thread(s), {args.clock} clock | median (min) of "
        f"{args.repeats} interleaved repeats after {args.warmup} warm-up | load average "
        f"before {[round(x, 2) for x in load_before]}, after {[round(x, 2) for x in load_after]}"
    )
    head = f"{'batch':>5} {'precision':>9}  " + "".join(f"{n:>28}" for n in names)
    print(head + f"{'setting/unpatched':>19}{'setting vs limit':>18}")
    out = []
    for b in batches:
        for prec in models:
            cells = "".join(
                f"{med[(prec, b, n)]:>17.1f} ms ({low[(prec, b, n)]:>5.1f})" for n in names
            )
            base, cond, lim = (med[(prec, b, n)] for n in names)
            print(
                f"{b:>5} {prec:>9}  {cells}{base / cond:>18.2f}x{100 * (cond / lim - 1):>+17.1f}%"
            )
            out.append(
                {
                    "batch_size": b,
                    "precision": prec,
                    **{
                        n: {
                            "median_ms": med[(prec, b, n)],
                            "min_ms": low[(prec, b, n)],
                            "samples_ms": samples[(prec, b, n)],
                        }
                        for n in names
                    },
                    "speedup_over_unpatched": base / cond,
                    "limit_speedup_over_unpatched": base / lim,
                    "overhead_vs_limit_percent": 100 * (cond / lim - 1),
                }
            )
        f32, b16 = (med[(p, b, bench.UNPATCHED)] for p in ("fp32", "bf16"))
        print(
            f"{'':>5} bf16 over fp32, unpatched: {f32 / b16:.2f}x; {setting}: "
            f"{med[('fp32', b, setting)] / med[('bf16', b, setting)]:.2f}x"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "tool": "benchmarks/bench_precision.py",
                    "model": args.model,
                    "threads": args.threads,
                    "clock": args.clock,
                    "repeats": args.repeats,
                    "warmup": args.warmup,
                    "cpu_bf16": bf16_support().describe(),
                    "machine": info,
                    "load_average_before": load_before,
                    "load_average_after": load_after,
                    "rows": out,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
