"""Labelled images for evaluation: an ImageFolder layout or a CSV / JSON manifest of (path, label).

Nothing is guessed quietly: an empty class folder is reported (``empty_classes``), not made a
candidate label; a dangling symbolic link or a link to itself stays in the data set so the
evaluation reports it as unreadable and counts it (``dangling_links``, ``looping_links``); a
folder link that leads back into the tree (``rootloop -> .``) would count every image twice, so
it is reported (``skipped_links``) and not followed.
"""

from __future__ import annotations

import csv
import errno
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


@dataclass(frozen=True)
class TarMember:
    """One image inside an uncompressed tar shard (a WebDataset sample), read by offset."""

    tar: Path
    name: str  # the member's name in the tar
    offset: int  # where its bytes start
    size: int

    def read(self) -> bytes:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


@dataclass
class Dataset:
    """Labelled images. ``labels`` are the candidate class names (prompted as "a photo of a
    {label}."), ``paths[i]`` has label ``labels[targets[i]]``. ``templates``: the data set's own
    prompt templates (``{}`` for the class name) where it defines them (clip_benchmark's)."""

    labels: list[str]
    paths: list[Path | TarMember]
    targets: list[int]
    source: str
    kind: str  # "folder", "csv", "json", "clip_benchmark" or "webdataset"
    root: Path
    ignored_files: int = 0  # files in the folder without an image extension
    empty_classes: list[str] = field(default_factory=list)  # class folders without images
    dangling_links: int = 0  # image paths that are symbolic links to nothing (kept: unreadable)
    looping_links: int = 0  # image paths that are symbolic link loops (kept: unreadable)
    skipped_links: list[str] = field(default_factory=list)  # folder links back into the tree
    templates: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def rel(self, i: int) -> str:
        p = self.paths[i]
        if isinstance(p, TarMember):
            p, suffix = p.tar, "/" + p.name
        else:
            suffix = ""
        try:
            return p.relative_to(self.root).as_posix() + suffix
        except ValueError:
            return str(p) + suffix

    def fingerprint(self) -> str:
        blob = json.dumps([self.labels, [self.rel(i) for i in range(len(self))], self.targets])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def link_problem(path: Path) -> str | None:
    """Why the symbolic link ``path`` cannot be read as a file (None when it is not a link or
    leads to something): a link to nothing, or a loop (a link to itself, or round a chain)."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path.name} is a symbolic link loop (it leads back to itself)"
        if exc.errno == errno.ENOENT:
            return f"{path.name} is a symbolic link to a missing file"
        return f"{path.name} is a symbolic link that cannot be followed: {exc.strerror}"
    return None


def _link_counts(paths: list[Path]) -> tuple[int, int]:
    """(links to nothing, link loops) among ``paths``."""
    problems = [link_problem(p) for p in paths]
    loops = sum(p is not None and "loop" in p for p in problems)
    return sum(p is not None for p in problems) - loops, loops


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
    dangling, loops = _link_counts(paths)
    return Dataset(
        list(labels),
        list[Path | TarMember](paths),
        [index[label] for _, label in rows],
        str(path),
        suffix[1:],
        base,
        dangling_links=dangling,
        looping_links=loops,
    )


def _load_folder(root: Path) -> Dataset:
    top = root.resolve()
    skipped: list[str] = []
    classes = []
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        if _leads_back(d, top):
            skipped.append(d.relative_to(root).as_posix())
        else:
            classes.append(d)
    if not classes:
        loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = f" (it holds {len(loose)} loose image(s))" if loose else ""
        raise EvalError(
            f"{root} has no class sub-folders{hint}: the ImageFolder layout is "
            f"DATA_DIR/<label>/<image>, or pass a .csv/.json manifest of path,label"
        )
    labels: list[str] = []
    paths: list[Path | TarMember] = []
    targets: list[int] = []
    empty: list[str] = []
    ignored = 0
    for d in classes:
        images, skipped_files = _class_images(d, root, top, skipped)
        ignored += skipped_files
        if not images:
            empty.append(d.name)
            continue
        targets += [len(labels)] * len(images)
        labels.append(d.name.replace("_", " ").strip())
        paths += images
    if not paths:
        raise EvalError(
            f"{root} has class folders ({', '.join(d.name for d in classes[:5])}"
            f"{', ...' if len(classes) > 5 else ''}) but no image files in them"
        )
    dangling, loops = _link_counts([p for p in paths if isinstance(p, Path)])
    return Dataset(
        labels,
        paths,
        targets,
        str(root),
        "folder",
        root,
        ignored,
        empty,
        dangling,
        loops,
        skipped,
    )


def _leads_back(folder: Path, top: Path, seen: frozenset[Path] = frozenset()) -> bool:
    """Whether the folder link ``folder`` leads back into the tree under ``top`` (or to a folder
    already being walked, or above ``top``): following it would list images a second time."""
    if not folder.is_symlink():
        return False
    target = folder.resolve()
    return target.is_relative_to(top) or top.is_relative_to(target) or target in seen


def _class_images(
    folder: Path, root: Path, top: Path, skipped: list[str]
) -> tuple[list[Path], int]:
    """(image paths, non-image files) under one class folder, recursively, hidden entries
    skipped. A link to nothing or a link loop with an image extension is kept: the evaluation
    reports it as unreadable instead of dropping it unseen. Folder links leading back into the
    tree are not followed; they are appended to ``skipped`` (relative to ``root``)."""
    images: list[Path] = []
    ignored = 0
    walking = {folder.resolve()}
    pending = [folder]
    while pending:
        here = pending.pop()
        for p in sorted(here.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_dir():
                if _leads_back(p, top, frozenset(walking)):
                    skipped.append(p.relative_to(root).as_posix())
                    continue
                walking.add(p.resolve())
                pending.append(p)
            elif p.suffix.lower() in IMAGE_EXTENSIONS:
                if p.is_file() or link_problem(p) is not None:
                    images.append(p)
            elif p.is_file():
                ignored += 1
    return sorted(images), ignored


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


__all__ = ["Dataset", "TarMember", "load_dataset", "link_problem", "IMAGE_EXTENSIONS"]
