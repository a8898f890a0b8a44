#!/usr/bin/env python3
"""Arrange Tux Paint's stamp photos into a small labelled ImageFolder for offline smoke tests.

    python scripts/make_tuxpaint_folder.py OUT_DIR [--classes 6] [--per-class 4]

Needs the Debian package ``tuxpaint-stamps-default`` (``apt-get install --no-install-recommends
tuxpaint-stamps-default``; GPL-2, so the images are installed, never committed). Each class is a
stamp category (e.g. ``animals/birds`` -> ``bird``); cartoon sub-folders are left out so the
images are photos. The RGBA stamps are composited onto white, downscaled to at most
``--max-side`` pixels and saved as ``OUT_DIR/<label>/<stamp>.png``. The selection is
deterministic: the stamps of each category are sorted by path and evenly spaced ones are taken.
``OUT_DIR/manifest.csv`` lists ``path,label,name`` (name = the stamp's English description from
the ``.txt`` beside it) and ``OUT_DIR/SOURCE.txt`` says where the images come from.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from PIL import Image

DEFAULT_STAMPS = Path("/usr/share/tuxpaint/stamps")
# label -> stamp category folders (relative to the stamps root), in the order classes are taken.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "bird": ("animals/birds",),
    "flower": ("plants/flowers",),
    "fruit": ("food/fruit",),
    "insect": ("animals/insects",),
    "vegetable": ("food/vegetables",),
    "fish": ("animals/fish",),
    "tool": ("household/tools",),
    "tree": ("plants/trees",),
}


def stamps_of(root: Path, folders: tuple[str, ...]) -> list[Path]:
    """Sorted photo stamps (PNG) under ``folders``, without cartoon sub-folders."""
    found: list[Path] = []
    for folder in folders:
        base = root / folder
        if base.is_dir():
            found += [
                p
                for p in base.rglob("*.png")
                if "cartoon" not in p.relative_to(base).parts and not p.name.startswith(".")
            ]
    return sorted(found)


def spaced(items: list[Path], n: int) -> list[Path]:
    """``n`` evenly spaced items (all of them if there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def stamp_name(png: Path) -> str:
    """The English description in the ``.txt`` beside a stamp ("A badger." -> "badger")."""
    txt = png.with_suffix(".txt")
    try:
        first = txt.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()
    except (OSError, IndexError):
        return png.stem.replace("_", " ")
    first = first.rstrip(".").strip()
    for article in ("A ", "An ", "The "):
        if first.startswith(article):
            first = first[len(article) :]
    return first or png.stem.replace("_", " ")


def on_white(png: Path, max_side: int) -> Image.Image:
    with Image.open(png) as im:
        rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgb


def build(
    out: Path,
    stamps: Path = DEFAULT_STAMPS,
    classes: int = 6,
    per_class: int = 4,
    max_side: int = 320,
) -> list[dict]:
    """Write the folder; returns the manifest rows. Raises FileNotFoundError without stamps."""
    if not stamps.is_dir():
        raise FileNotFoundError(
            f"{stamps} does not exist: install the Debian package tuxpaint-stamps-default "
            f"(apt-get install --no-install-recommends tuxpaint-stamps-default) or pass --stamps"
        )
    if classes < 2 or classes > len(CATEGORIES):
        raise ValueError(f"--classes must be between 2 and {len(CATEGORIES)}, got {classes}")
    if per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {per_class}")
    rows: list[dict] = []
    taken = 0
    for label, folders in CATEGORIES.items():
        if taken == classes:
            break
        chosen = spaced(stamps_of(stamps, folders), per_class)
        if not chosen:
            continue
        taken += 1
        class_dir = out / label.replace(" ", "_")
        class_dir.mkdir(parents=True, exist_ok=True)
        for png in chosen:
            target = class_dir / f"{png.stem}.png"
            on_white(png, max_side).save(target, optimize=True)
            rows.append(
                {
                    "path": target.relative_to(out).as_posix(),
                    "label": label,
                    "name": stamp_name(png),
                }
            )
    if taken < 2:
        raise FileNotFoundError(f"found stamps for {taken} class(es) under {stamps}; need 2")
    rows.sort(key=lambda r: r["path"])  # the ImageFolder order
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "name"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "SOURCE.txt").write_text(
        f"Photos from Tux Paint's stamps ({stamps}, Debian package tuxpaint-stamps-default, "
        f"GPL-2), composited onto white by scripts/make_tuxpaint_folder.py. Do not commit.\n",
        encoding="utf-8",
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (created)")
    p.add_argument(
        "--stamps",
        type=Path,
        default=DEFAULT_STAMPS,
        help=f"Tux Paint stamps root (default {DEFAULT_STAMPS})",
    )
    p.add_argument(
        "--classes", type=int, default=6, help=f"number of classes (2..{len(CATEGORIES)})"
    )
    p.add_argument("--per-class", type=int, default=4, help="images per class")
    p.add_argument("--max-side", type=int, default=320, help="downscale larger images to this")
    args = p.parse_args(argv)
    try:
        rows = build(args.out, args.stamps, args.classes, args.per_class, args.max_side)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labels = sorted({r["label"] for r in rows})
    print(f"wrote {len(rows)} images in {len(labels)} classes ({', '.join(labels)}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
