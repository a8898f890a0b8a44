"""Loading CLIP models by open_clip name, and the text side (labels, templates, embeddings)."""
from __future__ import annotations

import os
import re
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, cast

import open_clip
import torch
import torch.nn.functional as F
from open_clip import zero_shot_metadata

from .errors import InputError, LabelError, UnknownModelError, WeightsUnavailableError
from .patch import check_supported
from .timing import model_device

DEFAULT_MODEL = "ViT-B-16-quickgelu"
DEFAULT_PRETRAINED = "openai"
# The models the app offers: display name -> open_clip name (OpenAI weights need -quickgelu).
APP_MODELS: dict[str, str] = {
    "ViT-B/32": "ViT-B-32-quickgelu",
    "ViT-B/16": "ViT-B-16-quickgelu",
    "ViT-L/14": "ViT-L-14-quickgelu",
}
# Documented and tested as supported: those and their plain-GELU configs.
SUPPORTED_MODELS = tuple(APP_MODELS.values()) + tuple(
    name.removesuffix("-quickgelu") for name in APP_MODELS.values())
TEMPLATES: dict[str, tuple[str, ...]] = {
    "single": ("a photo of a {}.",),
    "imagenet80": tuple(t("{}") for t in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES),
}
MAX_LABEL_CHARS = 300
WEIGHTS_HELP = (
    "To use real weights: connect to the internet once (open_clip downloads them into the "
    "Hugging Face cache), or pass --checkpoint PATH / set TCA_CHECKPOINT to a local "
    ".safetensors or PyTorch state-dict file for this architecture, or use --pretrained none "
    "for random weights.")


@dataclass
class ClipModel:
    """A loaded CLIP with its preprocessing, tokenizer and a text-embedding cache.

    ``pretrained`` is the tag or checkpoint path the weights came from, or None for random
    initialisation (``is_random``): such predictions are meaningless and must be shown as such.
    """

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    name: str
    pretrained: str | None
    cache_size: int = 32
    warmed: bool = False
    _text_cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def is_random(self) -> bool:
        return self.pretrained is None

    @property
    def weights_description(self) -> str:
        if self.is_random:
            return f"{self.name} with RANDOM weights (predictions are meaningless)"
        return f"{self.name} / {self.pretrained}"

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    @property
    def logit_scale(self) -> float:
        scale = cast(torch.Tensor, self.model.logit_scale)  # an nn.Parameter of open_clip's CLIP
        return float(scale.detach().exp())

    def encode_text(self, labels: Sequence[str], templates: str | Sequence[str] = "single") -> torch.Tensor:
        """Normalised class embeddings (C, E): each label through every template, averaged and
        re-normalised (CLIP's prompt ensembling). Cached per (labels, templates)."""
        temps = resolve_templates(templates)
        key = (tuple(labels), temps)
        with self._lock:
            if key in self._text_cache:
                self._text_cache.move_to_end(key)
                return self._text_cache[key]
        prompts = [t.format(label) for label in labels for t in temps]
        tokens = self.tokenizer(prompts).to(self.device)
        with torch.inference_mode():
            emb = F.normalize(cast(Any, self.model).encode_text(tokens).float(), dim=-1)
        emb = F.normalize(emb.view(len(labels), len(temps), -1).mean(dim=1), dim=-1).cpu()
        with self._lock:
            self._text_cache[key] = emb
            while len(self._text_cache) > self.cache_size:
                self._text_cache.popitem(last=False)
        return emb


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(templates, str):
        if templates in TEMPLATES:
            return TEMPLATES[templates]
        if "{}" in templates:
            return (templates,)
        raise InputError(f"unknown templates {templates!r}; use one of {', '.join(TEMPLATES)} "
                         f"or a format string containing {{}}")
    temps = tuple(templates)
    if not temps or not all("{}" in t for t in temps):
        raise InputError("every prompt template must contain {}")
    return temps


def parse_labels(text: str | Sequence[str]) -> list[str]:
    """Split comma- or newline-separated labels; blank pieces (e.g. a trailing comma) are
    dropped. A list is taken as is (stripped)."""
    if isinstance(text, str):
        return [p.strip() for p in re.split(r"[,\n]", text) if p.strip()]
    return [str(p).strip() for p in text]


def validate_labels(labels: Sequence[str], tokenizer: Callable | None = None,
                    templates: str | Sequence[str] = "single", max_labels: int | None = None,
                    context_length: int = 77) -> list[str]:
    """Check a label list; returns it, or raises LabelError naming the problem."""
    labels = list(labels)
    if len(labels) < 2:
        got = "no labels" if not labels else f"only one label ({labels[0]!r})"
        raise LabelError(f"need at least two candidate labels to classify, got {got}")
    if max_labels is not None and len(labels) > max_labels:
        raise LabelError(f"too many labels: {len(labels)} (at most {max_labels})")
    for i, label in enumerate(labels):
        if not label.strip():
            raise LabelError(f"label {i + 1} is empty")
        if len(label) > MAX_LABEL_CHARS:
            raise LabelError(f"label {i + 1} is {len(label)} characters long "
                             f"(at most {MAX_LABEL_CHARS}): {label[:40]!r}...")
    seen: dict[str, int] = {}
    for label in labels:
        seen[label.lower()] = seen.get(label.lower(), 0) + 1
    dups = [l for l, n in seen.items() if n > 1]
    if dups:
        raise LabelError(f"duplicate label{'s' if len(dups) > 1 else ''}: "
                         f"{', '.join(repr(d) for d in dups)} (labels are compared "
                         f"case-insensitively and must be unique; remove the repeats)")
    if tokenizer is not None and hasattr(tokenizer, "encode"):
        longest = max(resolve_templates(templates), key=len)
        for label in labels:
            n = len(tokenizer.encode(longest.format(label))) + 2  # start + end tokens
            if n > context_length:
                raise LabelError(f"label {label[:40]!r} is too long: {n} tokens with its prompt "
                                 f"template, the text encoder takes at most {context_length}")
    return labels


def load_model(name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
               checkpoint: str | os.PathLike | None = None, device: str = "cpu",
               seed: int = 0, cache_dir: str | os.PathLike | None = None) -> ClipModel:
    """Load an open_clip CLIP by name.

    pretrained: an open_clip tag (e.g. ``openai``), or None / ``"none"`` for random weights
    (seeded by ``seed``). checkpoint: a local ``.safetensors`` or PyTorch state-dict file (loaded
    with ``weights_only``; never unpickles arbitrary objects). The CLI and app read
    $TCA_CHECKPOINT; this function reads no environment, so a checkpoint is never applied to a
    model it was not meant for.
    Raises WeightsUnavailableError with instructions when weights cannot be had: at once when
    they are not cached and the Hub is offline (HF_HUB_OFFLINE=1) or unreachable.
    cache_dir: the Hugging Face hub cache to use (default: the standard one).
    """
    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower().split("-")[0] in m.lower()][:8]
        raise UnknownModelError(f"unknown open_clip model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    if isinstance(pretrained, str) and pretrained.lower() in ("none", "random", ""):
        pretrained = None
    torch.manual_seed(seed)
    if checkpoint is not None:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=device)
        _load_checkpoint(model, Path(checkpoint))
        source: str | None = str(checkpoint)
    elif pretrained is None:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=device)
        source = None
    else:
        if pretrained not in open_clip.list_pretrained_tags_by_model(name):
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise UnknownModelError(f"{name} has no pretrained tag {pretrained!r}; available: "
                             f"{', '.join(tags) or 'none'}")
        model, preprocess = _load_pretrained(name, pretrained, device, cache_dir)
        source = pretrained
    model.eval()
    check_supported(model)
    return ClipModel(model, preprocess, open_clip.get_tokenizer(name), name, source)


def _cached_weights(cfg: dict, cache_dir) -> str | None:
    """Path of already-downloaded weights for an open_clip pretrained config, if any."""
    from huggingface_hub import try_to_load_from_cache
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if filename.endswith(".bin"):
        names.insert(0, filename[:-4] + ".safetensors")
    for fname in names:
        path = try_to_load_from_cache(repo, fname, cache_dir=str(cache_dir) if cache_dir else None)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a download could start at all; avoids minutes of retries on offline machines."""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy only the real request can tell
    from urllib.parse import urlparse
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_pretrained(name: str, tag: str, device: str, cache_dir):
    cfg = open_clip.get_pretrained_cfg(name, tag)
    cached = _cached_weights(cfg, cache_dir)
    kwargs = dict(image_mean=cfg.get("mean"), image_std=cfg.get("std"),
                  image_interpolation=cfg.get("interpolation"),
                  image_resize_mode=cfg.get("resize_mode"), device=device)
    try:
        if cached:  # load the file directly: no network round trip, works offline
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=cached, **kwargs)
        elif not _hub_reachable():
            raise WeightsUnavailableError(
                f"pretrained weights {name}/{tag} are not in the local cache and the Hugging Face "
                f"Hub cannot be reached (offline). {WEIGHTS_HELP}")
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=tag, cache_dir=str(cache_dir) if cache_dir else None,
                device=device)
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # network errors, corrupt downloads, ...
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise WeightsUnavailableError(f"could not load pretrained weights {name}/{tag}: "
                                      f"{type(exc).__name__}: {first}. {WEIGHTS_HELP}") from exc
    return model, preprocess


def _load_checkpoint(model: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise WeightsUnavailableError(f"checkpoint {str(path)!r} does not exist. {WEIGHTS_HELP}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"cannot read checkpoint {str(path)!r} ({type(exc).__name__}: {str(exc)[:200]}); it "
            f"must be a .safetensors file or a PyTorch state dict saved with plain tensors") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"checkpoint {str(path)!r} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    mismatch = _state_mismatch(model.state_dict(), state)
    if mismatch:
        raise WeightsUnavailableError(
            f"checkpoint {str(path)!r} does not fit this architecture: {mismatch}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsUnavailableError(
            f"checkpoint {str(path)!r} does not fit this architecture: "
            f"{str(exc).splitlines()[0][:300]}") from exc


def _state_mismatch(expected: dict, state: dict, show: int = 5) -> str:
    """Which keys of ``state`` do not fit ``expected`` (a model's state dict): missing keys,
    unexpected keys and shape mismatches, the first ``show`` of each named; '' if it fits."""
    def some(keys: list[str]) -> str:
        return ", ".join(keys[:show]) + (", ..." if len(keys) > show else "")

    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shapes = [f"{k} (checkpoint {tuple(getattr(state[k], 'shape', ()))}, model "
              f"{tuple(expected[k].shape)})" for k in sorted(expected.keys() & state.keys())
              if tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)]
    parts = [f"{len(keys)} {what}: {some(keys)}" for what, keys in
             (("missing key(s)", missing), ("unexpected key(s)", unexpected),
              ("shape mismatch(es)", shapes)) if keys]
    return "; ".join(parts)
