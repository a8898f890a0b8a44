"""The field's benchmark data sets, read the way LAION's ``clip_benchmark`` reads them.

``load_benchmark(name, root)`` gives a :class:`~tca.eval.datasets.Dataset` with clip_benchmark's
class names and prompt templates for one of its data set names:

* ``wds/<name>``: WebDataset shards in clip_benchmark's layout (``root/<split>/nshards.txt``,
  ``root/<split>/0.tar`` ..., ``root/classnames.txt``, ``root/zeroshot_classification_templates.txt``;
  each sample a ``.jpg``/``.jpeg``/``.png``/``.webp`` image with a ``.cls`` label). The shards are
  indexed once (member offsets) so every image can be read in any stream order.
* ``imagenetv2``: ``root/ImageNetV2-matched-frequency/<class index>/<image>.jpeg``.
* the other names (``cars``, ``fgvc_aircraft``, ``dtd``, ``eurosat``, ``flowers``, ``food101``,
  ``pets``, ``sun397``, ``caltech101``, ``imagenet1k``, ``imagenet-a``, ``imagenet-r``,
  ``imagenet_sketch``, ...): clip_benchmark's own ``build_dataset`` with ``download=False``, its
  file list taken from the torchvision data set it builds.

ImageNet-A / -R have 200 of ImageNet's 1000 classes and their folders are WordNet ids; each image
is labelled by its folder's id within that subset (not by folder position, which is wrong as
soon as a folder is missing). Nothing is downloaded: a missing root is an error that says where
the data goes (clip_benchmark itself would fetch it).
"""

from __future__ import annotations

import json
import tarfile
import warnings
from pathlib import Path
from typing import Any

from ..errors import EvalError
from .datasets import Dataset, TarMember

WDS_IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # clip_benchmark's, in its order
# clip_benchmark names whose ImageFolder sub-folders are WordNet ids of ImageNet classes.
_WNID_FOLDERS = ("imagenet1k", "imagenet-a", "imagenet-r", "imagenet_sketch", "imagenet-o")
_IMAGENETV2 = "ImageNetV2-matched-frequency"


def _builder() -> Any:
    try:
        from clip_benchmark.datasets import builder
    except ImportError as exc:
        raise EvalError(
            f"clip_benchmark data sets need the clip-benchmark package ({exc}); "
            f"pip install clip-benchmark webdataset"
        ) from None
    return builder


def default_classnames(name: str) -> list[str]:
    """clip_benchmark's English class names of data set ``name`` (e.g. ``imagenet1k``)."""
    path = Path(_builder().__file__).parent / "en_classnames.json"
    return list(json.loads(path.read_text(encoding="utf-8"))[name])


def default_templates(name: str) -> tuple[str, ...]:
    """clip_benchmark's English zero-shot templates of ``name`` (ImageNet's if it has none),
    with ``{}`` for the class name."""
    path = Path(_builder().__file__).parent / "en_zeroshot_classification_templates.json"
    table = json.loads(path.read_text(encoding="utf-8"))
    return _templates(table.get(name, table["imagenet1k"]))


def _templates(raw: Any) -> tuple[str, ...]:
    """clip_benchmark writes ``{c}`` for the class name; tca's prompts use ``{}``."""
    if not isinstance(raw, (list, tuple)) or not all(isinstance(t, str) for t in raw):
        raise EvalError("clip_benchmark templates must be a list of strings")
    return tuple(t.replace("{c}", "{}") for t in raw)


def load_benchmark(name: str, root: str | Path, split: str = "test") -> Dataset:
    """The clip_benchmark data set ``name`` stored under ``root`` (see the module docstring)."""
    root = Path(root)
    if not root.exists():
        raise EvalError(
            f"clip_benchmark data set {name!r}: no such folder {str(root)!r}; download it there "
            f"first (tca never downloads: see docs/evaluation.md)"
        )
    if name.startswith("wds/"):
        return load_wds(root, split, name)
    if name == "imagenetv2":
        return _load_imagenetv2(root)
    return _load_built(name, root, split)


def load_wds(root: Path, split: str = "test", name: str = "wds") -> Dataset:
    """WebDataset shards in clip_benchmark's layout, every image addressable by its offset."""
    try:
        nshards = int((root / split / "nshards.txt").read_text().strip())
    except (OSError, ValueError) as exc:
        raise EvalError(f"{name}: cannot read {root / split / 'nshards.txt'} ({exc})") from None
    try:
        labels = [
            line.strip()
            for line in (root / "classnames.txt").read_text(encoding="utf-8").splitlines()
        ]
    except OSError:
        raise EvalError(f"{name}: {root / 'classnames.txt'} is missing") from None
    template_file = root / "zeroshot_classification_templates.txt"
    templates = (
        _templates([t.strip() for t in template_file.read_text(encoding="utf-8").splitlines()])
        if template_file.exists()
        else None
    )
    paths: list[Path | TarMember] = []
    targets: list[int] = []
    for i in range(nshards):
        for member, label in _shard_samples(root / split / f"{i}.tar", name):
            if not 0 <= label < len(labels):
                raise EvalError(
                    f"{name}: {member.tar.name}/{member.name} has label {label}, but "
                    f"classnames.txt lists {len(labels)} classes"
                )
            paths.append(member)
            targets.append(label)
    if not paths:
        raise EvalError(f"{name}: the shards under {root / split} hold no labelled images")
    return Dataset(
        labels, paths, targets, f"{name} ({root})", "webdataset", root, templates=templates
    )


def _shard_samples(tar: Path, name: str) -> list[tuple[TarMember, int]]:
    """(image member, label) of every sample of one uncompressed tar shard, in shard order; a
    sample is the members sharing a key (the name up to the first dot of the base name)."""
    samples: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(tar, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                head, _, base = m.name.rpartition("/")
                key, _, ext = base.partition(".")
                sample = samples.setdefault(f"{head}/{key}", {})
                ext = ext.lower()
                if ext == "cls":
                    f = tf.extractfile(m)
                    assert f is not None
                    sample["cls"] = f.read().decode().strip()
                elif ext in WDS_IMAGE_EXTENSIONS:
                    sample.setdefault(ext, TarMember(tar, m.name, m.offset_data, m.size))
    except (OSError, tarfile.TarError) as exc:
        raise EvalError(f"{name}: cannot read shard {tar} ({exc})") from None
    out = []
    for key, sample in samples.items():
        image = next((sample[e] for e in WDS_IMAGE_EXTENSIONS if e in sample), None)
        if image is None or "cls" not in sample:
            continue  # clip_benchmark's to_tuple skips samples without both as well
        try:
            out.append((image, int(sample["cls"])))
        except ValueError:
            raise EvalError(f"{name}: {tar.name}/{key}.cls is not a class index") from None
    return out


def _load_imagenetv2(root: Path) -> Dataset:
    folder = root / _IMAGENETV2
    if not folder.is_dir():
        raise EvalError(
            f"imagenetv2: expected the images under {str(folder)!r} (<class index>/<image>.jpeg)"
        )
    labels = default_classnames("imagenet1k")
    files = sorted(folder.glob("*/*.jpeg"))
    bad = sorted({f.parent.name for f in files if not f.parent.name.isdigit()})
    if bad:
        raise EvalError(f"imagenetv2: class folders must be indices 0-999, found {bad[:5]}")
    return Dataset(
        labels,
        list[Path | TarMember](files),
        [int(f.parent.name) for f in files],
        f"imagenetv2 ({root})",
        "clip_benchmark",
        root,
        templates=default_templates("imagenet1k"),
    )


def _load_built(name: str, root: Path, split: str) -> Dataset:
    builder = _builder()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "split argument ignored" for eurosat, sun397, ...
            ds = builder.build_dataset(
                name, root=str(root), transform=None, split=split, download=False
            )
    except (RuntimeError, FileNotFoundError, AssertionError, OSError) as exc:
        raise EvalError(f"clip_benchmark data set {name!r} under {root}: {exc}") from None
    except ValueError as exc:
        raise EvalError(f"clip_benchmark: {exc}") from None
    files, targets = _file_list(ds, name)
    labels = list(ds.classes)
    if name in _WNID_FOLDERS:
        targets = _wnid_targets(builder, files, labels, name)
    elif hasattr(ds, "class_to_idx") and len(ds.class_to_idx) != len(labels):
        raise EvalError(  # folder positions would name the wrong classes
            f"{name} under {root}: {len(ds.class_to_idx)} class folders, but clip_benchmark "
            f"names {len(labels)} classes; every class folder must be there"
        )
    return Dataset(
        labels,
        list[Path | TarMember](files),
        targets,
        f"{name} ({root})",
        "clip_benchmark",
        root,
        templates=_templates(ds.templates),
    )


def _file_list(ds: Any, name: str) -> tuple[list[Path], list[int]]:
    """(image files, class indices) of a torchvision-style data set built by clip_benchmark,
    without decoding any image."""
    if hasattr(ds, "samples"):  # ImageFolder and its subclasses (EuroSAT, ImageNet, ...)
        pairs = ds.samples
    elif hasattr(ds, "_samples"):  # StanfordCars
        pairs = ds._samples
    elif hasattr(ds, "_labels") and hasattr(ds, "_image_files"):  # Food101, DTD, SUN397, ...
        pairs = list(zip(ds._image_files, ds._labels))
    elif hasattr(ds, "_labels") and hasattr(ds, "_images"):  # OxfordIIITPet
        pairs = list(zip(ds._images, ds._labels))
    elif hasattr(ds, "categories") and hasattr(ds, "index") and hasattr(ds, "y"):  # Caltech101
        base = Path(ds.root) / "101_ObjectCategories"
        pairs = [
            (base / ds.categories[y] / f"image_{i:04d}.jpg", y) for i, y in zip(ds.index, ds.y)
        ]
    else:
        raise EvalError(f"clip_benchmark data set {name!r} has no file list tca can read")
    shift = getattr(ds, "target_transform", None)  # clip_benchmark's fix of 1-based labels
    return [Path(p) for p, _ in pairs], [int(shift(t) if shift else t) for _, t in pairs]


def _wnid_targets(builder: Any, files: list[Path], labels: list[str], name: str) -> list[int]:
    """Each image's class within ``labels`` from its folder's WordNet id. ``labels`` is
    clip_benchmark's class list: ImageNet's 1000 names, or the 200 of ImageNet-A / -R in
    ImageNet's order, matched here to their ids."""
    ids: list[str] = list(builder.all_imagenet_wordnet_ids)
    names = default_classnames("imagenet1k")
    subset: list[str] = []
    j = 0
    for wnid, label in zip(ids, names):  # labels is an ordered sub-list of names
        if j < len(labels) and labels[j] == label:
            subset.append(wnid)
            j += 1
    if j != len(labels):
        raise EvalError(f"{name}: clip_benchmark's class names are not ImageNet's")
    index = {wnid: i for i, wnid in enumerate(subset)}
    unknown = sorted({f.parent.name for f in files if f.parent.name not in index})
    if unknown:
        raise EvalError(
            f"{name}: folders {', '.join(unknown[:5])} are not WordNet ids of its "
            f"{len(labels)} classes"
        )
    return [index[f.parent.name] for f in files]


__all__ = ["load_benchmark", "load_wds", "default_classnames", "default_templates"]
