"""Labelled images for evaluation: an ImageFolder layout or a CSV / JSON manifest of (path, label).

Nothing is guessed quietly: an empty class folder is reported (``empty_classes``), not made a
candidate label; a dangling symbolic link stays in the data set so the evaluation reports it as
unreadable and counts it (``dangling_links``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EvalError

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jfif",
        ".png",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)


@dataclass
class Dataset:
    """Labelled images. ``labels`` are the candidate class names (prompted as "a photo of a
    {label}."), ``paths[i]`` has label ``labels[targets[i]]``."""

    labels: list[str]
    paths: list[Path]
    targets: list[int]
    source: str
    kind: str  # "folder", "csv" or "json"
    root: Path
    ignored_files: int = 0  # files in the folder without an image extension
    empty_classes: list[str] = field(default_factory=list)  # class folders without images
    dangling_links: int = 0  # image paths that are symbolic links to nothing (kept: unreadable)

    def __len__(self) -> int:
        return len(self.paths)

    def rel(self, i: int) -> str:
        p = self.paths[i]
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    def fingerprint(self) -> str:
        blob = json.dumps([self.labels, [self.rel(i) for i in range(len(self))], self.targets])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_dataset(source: str | os.PathLike) -> Dataset:
    """A :class:`Dataset` from an ImageFolder directory (one sub-folder per class; the folder
    name with ``_`` -> space is the label; images found recursively) or from a ``.csv`` (columns
    ``path,label``, header optional) / ``.json`` manifest (a list of ``{"path", "label"}`` or
    ``[path, label]``, or ``{"labels": [...], "images": [...]}`` to fix the candidate labels).
    Relative manifest paths are relative to the manifest. Missing or unreadable image files are
    not an error here: the evaluation reports, skips and counts them."""
    path = Path(source)
    if path.is_dir():
        return _load_folder(path)
    if not path.exists():
        raise EvalError(f"no such folder or manifest: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        labels, rows = None, _read_csv(path)
    elif suffix == ".json":
        labels, rows = _read_json(path)
    else:
        raise EvalError(f"{path.name}: expected an ImageFolder directory or a .csv/.json manifest")
    if not rows:
        raise EvalError(f"manifest {path.name} lists no images")
    if labels is None:
        labels = sorted({label for _, label in rows})
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({label for _, label in rows if label not in index})
    if unknown:
        raise EvalError(
            f"manifest {path.name}: images labelled {', '.join(map(repr, unknown[:5]))} "
            f'but those are not in its "labels" list'
        )
    base = path.parent
    paths = [(base / p) if not Path(p).is_absolute() else Path(p) for p, _ in rows]
    dangling = sum(p.is_symlink() and not p.exists() for p in paths)
    return Dataset(
        list(labels),
        paths,
        [index[label] for _, label in rows],
        str(path),
        suffix[1:],
        base,
        dangling_links=dangling,
    )


def _load_folder(root: Path) -> Dataset:
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = f" (it holds {len(loose)} loose image(s))" if loose else ""
        raise EvalError(
            f"{root} has no class sub-folders{hint}: the ImageFolder layout is "
            f"DATA_DIR/<label>/<image>, or pass a .csv/.json manifest of path,label"
        )
    labels: list[str] = []
    paths: list[Path] = []
    targets: list[int] = []
    empty: list[str] = []
    ignored = dangling = 0
    for d in classes:
        images, skipped, broken = _class_images(d)
        ignored += skipped
        if not images:
            empty.append(d.name)
            continue
        targets += [len(labels)] * len(images)
        labels.append(d.name.replace("_", " ").strip())
        paths += images
        dangling += broken
    if not paths:
        raise EvalError(
            f"{root} has class folders ({', '.join(d.name for d in classes[:5])}"
            f"{', ...' if len(classes) > 5 else ''}) but no image files in them"
        )
    return Dataset(labels, paths, targets, str(root), "folder", root, ignored, empty, dangling)


def _class_images(folder: Path) -> tuple[list[Path], int, int]:
    """(image paths, non-image files, dangling links among the images) under one class folder,
    recursively, hidden entries skipped. A link to nothing with an image extension is kept: the
    evaluation reports it as unreadable instead of dropping it unseen."""
    images, ignored, dangling = [], 0, 0
    for p in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        broken = p.is_symlink() and not p.exists()
        if not (p.is_file() or broken):
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(p)
            dangling += broken
        else:
            ignored += 1
    return images, ignored, dangling


_PATH_COLUMNS = ("path", "image", "file", "filename", "filepath")
_LABEL_COLUMNS = ("label", "class", "category", "target")


def _read_csv(path: Path) -> list[tuple[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EvalError(f"cannot read manifest {path.name}: {exc}") from None
    if not rows:
        return []
    head = [c.strip().lower() for c in rows[0]]
    pcol = next((head.index(c) for c in _PATH_COLUMNS if c in head), None)
    lcol = next((head.index(c) for c in _LABEL_COLUMNS if c in head), None)
    if pcol is not None and lcol is not None:
        rows = rows[1:]
    elif pcol is not None or lcol is not None:
        raise EvalError(
            f"manifest {path.name}: its header needs both a path column "
            f"({'/'.join(_PATH_COLUMNS)}) and a label column ({'/'.join(_LABEL_COLUMNS)})"
        )
    else:
        pcol, lcol = 0, 1
    out = []
    for n, r in enumerate(rows, start=2 if pcol is not None else 1):
        if len(r) <= max(pcol, lcol) or not r[pcol].strip() or not r[lcol].strip():
            raise EvalError(f"manifest {path.name} row {n}: expected a path and a label, got {r!r}")
        out.append((r[pcol].strip(), r[lcol].strip()))
    return out


def _read_json(path: Path) -> tuple[list[str] | None, list[tuple[str, str]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvalError(f"cannot read manifest {path.name}: {exc}") from None
    labels = None
    if isinstance(data, dict):
        labels = data.get("labels")
        data = data.get("images", data.get("items"))
        if labels is not None and not (
            isinstance(labels, list) and all(isinstance(l, str) for l in labels)
        ):
            raise EvalError(f'manifest {path.name}: "labels" must be a list of strings')
    if not isinstance(data, list):
        raise EvalError(
            f'manifest {path.name}: expected a list of {{"path", "label"}} objects '
            f'(or {{"labels": [...], "images": [...]}})'
        )
    out = []
    for n, e in enumerate(data):
        if isinstance(e, dict):
            p = next((e[c] for c in _PATH_COLUMNS if c in e), None)
            label = next((e[c] for c in _LABEL_COLUMNS if c in e), None)
        elif isinstance(e, (list, tuple)) and len(e) == 2:
            p, label = e
        else:
            p = label = None
        if (
            not isinstance(p, str)
            or not isinstance(label, str)
            or not p.strip()
            or not label.strip()
        ):
            raise EvalError(
                f"manifest {path.name} item {n}: expected a path and a label, got {e!r}"
            )
        out.append((p.strip(), label.strip()))
    return ([l.strip() for l in labels] if labels is not None else None), out


__all__ = ["Dataset", "load_dataset", "IMAGE_EXTENSIONS"]
