"""How faithful bf16 is to fp32 (issue 19): the same model in both precisions on the curated
images (assets/*.jpg, each also seen in a few fixed crops and flips), every method at one keep
rate, compared image by image.

    HF_HUB_OFFLINE=1 python benchmarks/bf16_fidelity.py [--model ViT-B-16-quickgelu]
        [--pretrained none] [--keep-rate 0.7] [--views 8] [--json out.json]

Reported per method: the cosine between the bf16 and fp32 image features (min and mean), the
agreement of fates (kept / merged / pruned, every patch at every block) and of the token each
patch ends up in, and the agreement of top-1 among each image's curated labels
(assets/examples.json) and among ImageNet's 1,000 class names. The bf16 model is
``tca.precision.cast`` of the fp32 one (open_clip's mixed precision), text embeddings are
computed by each model itself. Weights are random unless --pretrained names cached ones: the
figures then measure the arithmetic, not accuracy (random CLIP logits are near ties, so top-1
agreement on random weights is a pessimistic figure).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from open_clip import zero_shot_metadata  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

import tca  # noqa: E402
from tca.config import CondenseConfig  # noqa: E402
from tca.methods import METHODS  # noqa: E402
from tca.models import parse_labels  # noqa: E402
from tca.precision import bf16_support, cast  # noqa: E402


def views(image: Image.Image, n: int) -> list[Image.Image]:
    """The image itself, then n - 1 fixed crops (90% .. 60% of the short side, corners and
    centre) alternately mirrored: the same views on every run."""
    out = [image]
    w, h = image.size
    spots = [(0.5, 0.5), (0, 0), (1, 0), (0, 1), (1, 1)]
    for i in range(1, n):
        side = int(min(w, h) * (0.9 - 0.3 * (i % 4) / 3))
        fx, fy = spots[i % len(spots)]
        left, top = int((w - side) * fx), int((h - side) * fy)
        crop = image.crop((left, top, left + side, top + side))
        out.append(ImageOps.mirror(crop) if i % 2 else crop)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-16-quickgelu")
    p.add_argument("--pretrained", default="none")
    p.add_argument("--keep-rate", type=float, default=0.7)
    p.add_argument("--views", type=int, default=8, help="views per curated image (1 = as is)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fp32 = tca.load_model(args.model, args.pretrained, seed=0)
    models = {"fp32": fp32, "bf16": cast(fp32, "bf16")}
    for clip in models.values():
        tca.patch(clip.model)
    examples = json.loads((ROOT / "assets" / "examples.json").read_text())
    pixels, owner = [], []
    for i, ex in enumerate(examples):
        image = Image.open(ROOT / "assets" / ex["image"]).convert("RGB")
        for view in views(image, args.views):
            pixels.append(fp32.preprocess(view))
            owner.append(i)
    x = torch.stack(pixels)
    imagenet = list(zero_shot_metadata.IMAGENET_CLASSNAMES)
    text: dict[str, dict[str, Any]] = {
        name: {
            "curated": [clip.encode_text(parse_labels(ex["labels"])) for ex in examples],
            "imagenet": clip.encode_text(imagenet),
        }
        for name, clip in models.items()
    }
    configs = [CondenseConfig(method="none")] + [
        CondenseConfig(method=name, keep_rate=args.keep_rate)
        for name, method in METHODS.items()
        if method.plan is not None
    ]
    rows: list[dict[str, Any]] = []
    for config in configs:
        enc = {}
        with torch.inference_mode():
            for name, clip in models.items():
                enc[name] = tca.encode(clip.model, x.to(clip.dtype), config, trace=True)
        a, b = enc["fp32"], enc["bf16"]
        cos = F.cosine_similarity(b.features.float(), a.features.float(), dim=-1)
        row: dict[str, Any] = {
            "setting": config.describe() if config.method != "none" else "none (baseline)",
            "images": len(x),
            "cosine_min": cos.min().item(),
            "cosine_mean": cos.mean().item(),
            "tokens_equal": a.tokens_per_image == b.tokens_per_image,
        }
        if a.trace is not None and b.trace is not None and a.trace.fate.shape == b.trace.fate.shape:
            row["fate_agreement"] = (a.trace.fate == b.trace.fate).float().mean().item()
            row["final_fate_agreement"] = (
                (a.trace.fate[:, -1] == b.trace.fate[:, -1]).float().mean().item()
            )
            row["token_agreement"] = (
                (a.trace.token_index == b.trace.token_index).float().mean().item()
            )
        for task in ("curated", "imagenet"):
            same = 0
            for j in range(len(x)):
                top = []
                for name, clip in models.items():
                    t = text[name][task][owner[j]] if task == "curated" else text[name][task]
                    feats = enc[name].features[j : j + 1].float().cpu()
                    top.append(int(clip.logits(feats, t).argmax()))
                same += top[0] == top[1]
            row[f"top1_agreement_{task}"] = same / len(x)
        rows.append(row)
    load = [round(v, 2) for v in os.getloadavg()]
    weights = fp32.weights_description
    print(
        f"{weights}: bf16 vs fp32 on {len(examples)} curated images x {args.views} views "
        f"({len(x)} images) | {bf16_support().describe()} | load average {load}"
    )
    head = (
        f"{'setting':<34}{'cos min':>9}{'cos mean':>10}{'fates':>8}{'final':>8}{'tokens':>8}"
        f"{'top-1 curated':>15}{'top-1 1000':>12}"
    )
    print(head + "\n" + "-" * len(head))

    def pct(r: dict[str, Any], key: str) -> str:
        return f"{100 * r[key]:.2f}%" if key in r else "-"

    for r in rows:
        print(
            f"{r['setting'][:33]:<34}{r['cosine_min']:>9.5f}{r['cosine_mean']:>10.5f}"
            f"{pct(r, 'fate_agreement'):>8}{pct(r, 'final_fate_agreement'):>8}"
            f"{pct(r, 'token_agreement'):>8}{pct(r, 'top1_agreement_curated'):>15}"
            f"{pct(r, 'top1_agreement_imagenet'):>12}"
        )
    print(
        "fates / tokens: share of (image, block, patch) with the same fate / the same token in "
        "both precisions; final: at the last block."
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "tool": "benchmarks/bf16_fidelity.py",
                    "model": weights,
                    "views": args.views,
                    "keep_rate": args.keep_rate,
                    "cpu_bf16": bf16_support().describe(),
                    "load_average": load,
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
