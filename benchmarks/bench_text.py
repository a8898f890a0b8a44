"""The text side (issue 8): class embeddings for the 80-template ImageNet ensemble, our cut
pass (``tca.text``, context cut to the longest prompt of each batch) against open_clip's
``encode_text`` at the full 77-token context, same prompts, same batches, random weights, CPU.

    HF_HUB_OFFLINE=1 python benchmarks/bench_text.py [--model ViT-B-32-quickgelu]
        [--labels 15] [--repeats 5]

Interleaved round by round (open_clip, then ours, fresh cache each time); medians and their
ratio reported, with the largest difference between the two embeddings. Target: >= 5x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from open_clip import zero_shot_metadata  # noqa: E402

import tca  # noqa: E402
from tca import text  # noqa: E402
from tca.prompts import TEMPLATES  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32-quickgelu")
    p.add_argument("--labels", type=int, default=15, help="ImageNet class names to encode")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    clip = tca.load_model(args.model, "none", seed=0)
    labels = list(zero_shot_metadata.IMAGENET_CLASSNAMES[: args.labels])
    temps = TEMPLATES["imagenet80"]
    tower = clip.text_tower
    assert tower is not None, f"{args.model}: no exact cut pass (falls back to encode_text)"

    def ours() -> torch.Tensor:
        return text.class_embeddings(
            clip.model, clip.tokenizer, labels, temps, text.LabelCache(), clip.device, tower
        )

    def reference() -> torch.Tensor:  # the same chunks, through open_clip at full context
        return text.class_embeddings(
            clip.model, clip.tokenizer, labels, temps, text.LabelCache(), clip.device, None
        )

    ours(), reference()  # warm-up
    t_ref, t_ours, diff = [], [], 0.0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        a = reference()
        t1 = time.perf_counter()
        b = ours()
        t2 = time.perf_counter()
        t_ref.append(t1 - t0)
        t_ours.append(t2 - t1)
        diff = max(diff, float((a - b).abs().max()))
    tokens = clip.tokenizer([t.format(l) for l in labels for t in temps])
    lengths = tokens.argmax(dim=-1) + 1
    ref, fast = statistics.median(t_ref), statistics.median(t_ours)
    print(
        f"model {args.model}, {len(labels)} labels x {len(temps)} templates = "
        f"{len(labels) * len(temps)} prompts, {args.threads} threads, {args.repeats} rounds"
    )
    print(
        f"prompt length (tokens incl. start/end): median {int(lengths.median())}, "
        f"max {int(lengths.max())} of {tokens.shape[1]}"
    )
    print(
        f"open_clip encode_text (77 tokens): {ref * 1e3:8.0f} ms  "
        f"({ref * 1e3 / len(labels):.0f} ms per label)"
    )
    print(
        f"tca.text cut pass:                 {fast * 1e3:8.0f} ms  "
        f"({fast * 1e3 / len(labels):.0f} ms per label)"
    )
    print(f"speed-up: {ref / fast:.1f}x   max |difference| of class embeddings: {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
