"""Where a model's weights come from: the Hugging Face cache, a Hub download, or a local checkpoint
file; each failure a :class:`WeightsUnavailableError` that says how to supply weights.

The work is the libraries': open_clip creates and loads (``create_model_and_transforms``,
``load_checkpoint``), ``huggingface_hub`` answers whether a file is cached
(``try_to_load_from_cache``) and whether the Hub may be asked at all (offline mode,
``HF_HUB_OFFLINE=1``). This module adds the cache look-up that lets cached weights load without a
Hub round trip, the fast failure offline, and messages a person can act on.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Callable

import open_clip
import torch

from .errors import WeightsUnavailableError

WEIGHTS_HELP = (
    "To use real weights: connect to the internet once (open_clip downloads them into the "
    "Hugging Face cache), or pass --checkpoint PATH / set TCA_CHECKPOINT to a local "
    ".safetensors or PyTorch state-dict file for this architecture, or use --pretrained none "
    "for random weights."
)
# What open_clip.load_checkpoint reads without torch.load: safetensors, and numpy archives of
# big_vision (SigLIP) weights, which np.load reads with allow_pickle=False.
_NOT_PICKLED = (".safetensors", ".npz", ".npy")
# torch's message for one shape mismatch (Module.load_state_dict, unchanged since torch 1.0).
_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from "
    r"checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)"
)


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE=1``): nothing may be
    downloaded, so whatever is not cached is unavailable at once (no request, no retries)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cached_file(
    repo: str, filenames: tuple[str, ...], cache_dir: str | os.PathLike | None = None
) -> str | None:
    """The local path of the first of ``filenames`` of Hub repository ``repo`` that is in the
    Hugging Face cache (``cache_dir``, default the standard one), or None; never asks the Hub."""
    from huggingface_hub import try_to_load_from_cache

    for fname in filenames:
        path = try_to_load_from_cache(repo, fname, cache_dir=str(cache_dir) if cache_dir else None)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def tokenizer_cached(repo: str, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the Hugging Face tokenizer ``repo`` is in the cache."""
    return cached_file(repo, ("tokenizer.json", "tokenizer_config.json"), cache_dir) is not None


def cached_weights(cfg: dict, cache_dir: str | os.PathLike | None = None) -> str | None:
    """Path of already-downloaded weights for an open_clip pretrained config, if any: the file
    its ``hf_hub`` entry names (its ``.safetensors`` twin first), or open_clip's default names."""
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    repo, filename = (
        os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    )
    names = (
        [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    )
    if filename.endswith(".bin"):
        names.insert(0, filename[:-4] + ".safetensors")
    return cached_file(repo, tuple(names), cache_dir)


def load_pretrained(
    name: str,
    tag: str,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    precision: str = "fp32",
) -> tuple[torch.nn.Module, Callable]:
    """open_clip model ``name`` with its pretrained weights ``tag``, and its preprocessing.

    Cached weights load straight from the file (no Hub round trip, works offline). Otherwise, in
    offline mode this raises WeightsUnavailableError at once; online, open_clip downloads them
    (huggingface_hub retries a failing connection for about 25 s per file before giving up).
    The model's random initialisation draws from the global RNG: the caller forks it.
    """
    cfg = open_clip.get_pretrained_cfg(name, tag)
    cached = cached_weights(cfg, cache_dir)
    if not cached and hub_offline():
        raise WeightsUnavailableError(
            f"pretrained weights {name}/{tag} are not in the local cache and the Hugging Face "
            f"Hub is offline (HF_HUB_OFFLINE=1). {WEIGHTS_HELP}"
        )
    try:
        if cached:  # a file path loses the tag's preprocessing settings: pass them along
            model, _, preprocess = open_clip.create_model_and_transforms(
                name,
                pretrained=cached,
                image_mean=cfg.get("mean"),
                image_std=cfg.get("std"),
                image_interpolation=cfg.get("interpolation"),
                image_resize_mode=cfg.get("resize_mode"),
                device=device,
                precision=precision,
            )
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name,
                pretrained=tag,
                cache_dir=str(cache_dir) if cache_dir else None,
                device=device,
                precision=precision,
            )
    except Exception as exc:  # network errors, corrupt downloads, ...
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise WeightsUnavailableError(
            f"could not load pretrained weights {name}/{tag}: "
            f"{type(exc).__name__}: {first}. {WEIGHTS_HELP}"
        ) from exc
    return model, preprocess


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load the local checkpoint ``path`` into ``model`` (in place) with
    ``open_clip.load_checkpoint``, which also unwraps ``{"state_dict": ...}`` and a ``module.``
    prefix, converts older open_clip key names and resizes position embeddings.

    Only data is read: ``.safetensors``, big_vision ``.npz``, or a PyTorch file of plain tensors
    (``weights_only``); a pickle that would run code is refused. A missing file, an unreadable
    one, or one that does not fit ``model`` (missing, unexpected or mis-shaped keys, the first
    few named) raises WeightsUnavailableError.
    """
    path = Path(path)
    where = repr(str(path))
    if not path.is_file():
        raise WeightsUnavailableError(f"checkpoint {where} does not exist. {WEIGHTS_HELP}")
    unreadable = "it must be a .safetensors file or a PyTorch state dict saved with plain tensors"
    if path.suffix not in _NOT_PICKLED:
        try:
            _check_plain_tensors(path)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"cannot read checkpoint {where} ({_why(exc)}); {unreadable}"
            ) from exc
    seen: list[tuple[list[str], list[str]]] = []
    # The root module's post-hook sees every missing and unexpected key, also when a shape
    # mismatch then makes load_state_dict raise (which drops them).
    hook = model.register_load_state_dict_post_hook(
        lambda _module, keys: seen.append((list(keys.missing_keys), list(keys.unexpected_keys)))
    )
    shapes: list[str] = []
    try:
        open_clip.load_checkpoint(model, str(path), strict=False, weights_only=True)
    except RuntimeError as exc:
        shapes = _shape_mismatches(str(exc))
        if not shapes:
            raise WeightsUnavailableError(
                f"cannot read checkpoint {where} ({_why(exc)}); {unreadable}"
            ) from exc
    except Exception as exc:  # not a state dict, an empty one, a corrupt safetensors file, ...
        raise WeightsUnavailableError(
            f"cannot read checkpoint {where} ({_why(exc)}); {unreadable}"
        ) from exc
    finally:
        hook.remove()
    missing, unexpected = seen[-1] if seen else ([], [])
    mismatch = describe_mismatch(missing, unexpected, shapes)
    if mismatch:
        raise WeightsUnavailableError(
            f"checkpoint {where} does not fit this architecture: {mismatch}"
        )


def _check_plain_tensors(path: Path) -> None:
    """Raise unless ``path`` loads with ``torch.load(weights_only=True)``.

    open_clip's ``load_state_dict`` retries a ``torch.load`` that raises TypeError without
    ``weights_only`` (open_clip/factory.py); a weights-only load of a crafted pickle can raise
    TypeError, and the retry would unpickle it in full where torch < 2.6 or
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` makes that the default. So the file is read weights-only
    here first (memory-mapped where the format allows: no tensor data is read), and open_clip only
    gets files that load that way, on which it never retries."""
    mmap = zipfile.is_zipfile(path)  # torch.save's format; the legacy one cannot be mapped
    torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)


def _why(exc: Exception) -> str:
    """A one-line reason for a failed read. torch's weights-only refusal is cut to what it refused
    (the rest of its message suggests ``weights_only=False``, which must not be shown as advice)."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
        after = text.split("WeightsUnpickler error:", 1)[1]
        detail = next((line.strip() for line in after.splitlines() if line.strip()), "")
        detail = detail.split(" Please ", 1)[0].rstrip(". ")[:200]
        return f"refused by a weights-only load, which unpickles tensors only: {detail}"
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}"


def _shape_mismatches(message: str) -> list[str]:
    """'KEY (checkpoint (A, B), model (C, D))' for each shape mismatch named in torch's
    load_state_dict error ``message``."""

    def shape(dims: str) -> tuple[int, ...]:
        return tuple(int(d) for d in dims.split(",") if d.strip())

    return [
        f"{key} (checkpoint {shape(got)}, model {shape(want)})"
        for key, got, want in _SIZE_MISMATCH.findall(message)
    ]


def describe_mismatch(
    missing: list[str], unexpected: list[str], shapes: list[str], show: int = 5
) -> str:
    """One line on how a checkpoint does not fit a model: the counts of missing keys, unexpected
    keys and shape mismatches, the first ``show`` of each named (sorted); '' if it fits."""

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:show]) + (", ..." if len(keys) > show else "")

    parts = [
        f"{len(keys)} {what}: {some(sorted(keys))}"
        for what, keys in (
            ("missing key(s)", missing),
            ("unexpected key(s)", unexpected),
            ("shape mismatch(es)", shapes),
        )
        if keys
    ]
    return "; ".join(parts)


__all__ = [
    "WEIGHTS_HELP",
    "hub_offline",
    "cached_file",
    "cached_weights",
    "tokenizer_cached",
    "load_pretrained",
    "load_checkpoint",
    "describe_mismatch",
]
