"""Each method's time against its zero-overhead limit, three ways, from one ``python -m tca
bench --json`` run (interleaved rounds): the ratio of medians (what the bench prints), the ratio
of minima (the least disturbed round of each), and the median of the per-round ratios (each
round times a setting and its limit back to back, so a load that drifts between rounds cancels).

    python -m tca bench --model ViT-B-16 --precision fp32 --batch-sizes 1 \\
        --methods pitome,tofu,zero-tprune,repshift,tca --keep-rates 0.9,0.7 \\
        --repeats 21 --warmup 2 --threads 1 --clock cpu --json > bench.json
    python benchmarks/vs_limit.py bench.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys

LIMIT = " limit"  # tca.bench's suffix of a limit row


def table(result: dict) -> str:
    """The vs-limit table of a bench result (``tca.bench.run_bench``'s dict)."""
    rows = {(r["batch_size"], r["setting"]): r for r in result["rows"]}
    lines = [
        f"{'batch':>5}  {'setting':<20}{'median ms':>10}{'limit ms':>10}"
        f"{'vs limit':>10}{'by min':>9}{'paired':>9}",
    ]
    for (batch, name), r in rows.items():
        lim = rows.get((batch, name + LIMIT))
        if lim is None:
            continue
        ratios = [a / b for a, b in zip(r["samples_ms"], lim["samples_ms"])]
        lines.append(
            f"{batch:>5}  {name:<20}{r['median_ms']:>10.1f}{lim['median_ms']:>10.1f}"
            f"{100 * (r['median_ms'] / lim['median_ms'] - 1):>+9.1f}%"
            f"{100 * (r['min_ms'] / lim['min_ms'] - 1):>+8.1f}%"
            f"{100 * (statistics.median(ratios) - 1):>+8.1f}%"
        )
    before = result["machine"].get("load_average_before")
    after = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    lines.append(
        f"{result['model']}, {result['dtype']}, {result['repeats']} interleaved repeats, "
        f"{result['clock']} clock; load average before {before}, now {after}"
    )
    return "\n".join(lines)


def main() -> None:
    src = open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin
    print(table(json.load(src)))


if __name__ == "__main__":
    main()
