"""Time each method's condensing step alone (no block), against one plain ViT-B/16 block, at the
first condensing block's size (197 tokens, width 768, 12 heads), batch 1, interleaved medians.

    OMP_NUM_THREADS=1 python benchmarks/step_overhead.py [--repeats 41] [--threads 2] \
        [--dtype bf16] [--clock cpu]

The step's share of a block is what a method pays on top of the smaller matrices; the attention
it reads (keys, full probabilities, the CLS row) is part of the block and not counted here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tca import beyond, condense  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=41)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="tokens and block")
    ap.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: the thread's CPU time"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    g = torch.Generator().manual_seed(0)
    n, d, h = 197, 768, 12
    x = torch.randn(1, n, d, generator=g).to(dtype)
    keys = torch.randn(1, n, d // h, generator=g).to(dtype)
    probs = torch.randn(1, h, n, n, generator=g).softmax(-1).to(dtype)
    cls_row = probs[:, :, 0]
    size = torch.ones(1, n)
    shift = torch.rand(1, n, generator=g)
    block = torch.nn.TransformerEncoderLayer(d, h, 4 * d, batch_first=True, norm_first=True)
    block = block.eval().to(dtype)
    r = condense.tome_r(n, 0.7)
    t1, t2, t3 = condense.tca_tier_sizes(n, 0.1)
    mean = condense.head_mean_score(cls_row[..., 1:])
    steps = {
        "block (plain, 197 tokens)": lambda: block(x),
        "tca": lambda: condense.prune_merge_fuse(x, mean, mean, t1, t2, 2),
        "tome": lambda: condense.tome_merge(x, size, keys, r),
        "pitome": lambda: beyond.pitome_merge(x, size, keys, r, beyond.pitome_margin(3, 12)),
        "tofu (prune)": lambda: beyond.tofu_prune(x, size, keys, r),
        "tofu (merge)": lambda: beyond.tofu_merge(x, size, keys, r),
        "zero-tprune": lambda: beyond.zero_tprune_prune(x, probs, keys, r),
        "  of it: PageRank (10 it.)": lambda: beyond.weighted_pagerank(probs),
        "repshift": lambda: beyond.repshift_prune(x, shift, 58),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    with torch.inference_mode():
        for f in steps.values():
            f()
        for _ in range(args.repeats):
            for name, f in steps.items():
                t0 = clock()
                f()
                times[name].append(clock() - t0)
    base = statistics.median(times["block (plain, 197 tokens)"])
    print(f"{'step':<28}{'median ms':>10}{'% of a block':>14}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<28}{1e3 * m:>10.3f}{100 * m / base:>13.1f}%")


if __name__ == "__main__":
    main()
