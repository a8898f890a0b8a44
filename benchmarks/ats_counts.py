"""ATS's per-image token counts and mean GMACs on ViT-B/16 (random weights, CPU), for the README.

    HF_HUB_OFFLINE=1 python benchmarks/ats_counts.py

The four photos in assets/ and eight Gaussian-noise images go through ViT-B/16 in one batch
each (per-image counts through the padded path); GMACs are per image from its own counts,
averaged as the ATS paper reports them. With random weights the scores are nearly uniform, so
ATS keeps close to its budget; trained CLIP concentrates them and keeps fewer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tca  # noqa: E402
from tca.flops import Geometry, macs_per_image, mean_gmacs  # noqa: E402


def main() -> int:
    clip = tca.load_model("ViT-B-16-quickgelu", pretrained="none", seed=0)
    tca.patch(clip.model)
    photos = torch.cat([tca.prepare_image(clip, p) for p in sorted(ROOT.glob("assets/*.jpg"))])
    noise = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    geom = Geometry.from_model(clip.model)
    print(f"{'images':<8}{'R':>5}  {'tokens after blocks 3/6/9, per image':<60}{'mean GMACs':>11}")
    for name, x in (("photos", photos), ("noise", noise)):
        for r in (0.9, 0.7):
            cfg = tca.CondenseConfig(method="ats", keep_rate=r)
            with torch.inference_mode():
                enc = tca.encode(clip.model, x, cfg)
            gmacs = mean_gmacs(macs_per_image(geom, enc.schedule, enc.tokens_per_image))
            counts = " ".join("/".join(str(t[i]) for i in (3, 6, 9)) for t in enc.tokens_per_image)
            print(f"{name:<8}{r:>5}  {counts[:58]:<60}{gmacs:>11.3f}")
    budget = {
        r: tca.macs_for(geom, tca.CondenseConfig(method="ats", keep_rate=r)).gmacs
        for r in (0.9, 0.7)
    }
    print(
        f"budget (upper bound): R=0.9 {budget[0.9]:.3f}, R=0.7 {budget[0.7]:.3f} GMACs; "
        "paper (trained CLIP): 11.15, 8.76"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
