"""Loading CLIP models by open_clip name, and the text side (labels, templates, embeddings)."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, cast

import open_clip
import torch
import torch.nn.functional as F

from . import text
from .errors import (
    ConfigError,
    InputError,
    LabelError,
    UnknownModelError,
    WeightsUnavailableError,
)
from .patch import check_supported
from .prompts import TEMPLATES
from .timing import model_device
from .towers import input_dtype

DEFAULT_MODEL = "ViT-B-16-quickgelu"
DEFAULT_PRETRAINED = "openai"
# The models the app offers: display name -> open_clip name (OpenAI weights need -quickgelu).
APP_MODELS: dict[str, str] = {
    "ViT-B/32": "ViT-B-32-quickgelu",
    "ViT-B/16": "ViT-B-16-quickgelu",
    "ViT-L/14": "ViT-L-14-quickgelu",
    "SigLIP 2 B/16": "ViT-B-16-SigLIP2",  # no CLS token: its pool's query ranks the tokens
}
# Documented and tested as supported: those and their plain-GELU configs.
SUPPORTED_MODELS = tuple(APP_MODELS.values()) + tuple(
    name.removesuffix("-quickgelu") for name in APP_MODELS.values() if name.endswith("-quickgelu")
)
MAX_LABEL_CHARS = 300
# --precision choices: open_clip's names for float32 and its mixed fp16 / bf16 modes.
PRECISIONS = ("fp32", "fp16", "bf16")
WEIGHTS_HELP = (
    "To use real weights: connect to the internet once (open_clip downloads them into the "
    "Hugging Face cache), or pass --checkpoint PATH / set TCA_CHECKPOINT to a local "
    ".safetensors or PyTorch state-dict file for this architecture, or use --pretrained none "
    "for random weights."
)


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
    warmed: bool = False
    text_cache: text.LabelCache = field(default_factory=text.LabelCache, repr=False)
    text_tower: text.TextTower | None = field(init=False, repr=False)  # None: encode_text

    def __post_init__(self) -> None:
        self.text_tower = text.text_tower(self.model)

    @property
    def is_random(self) -> bool:
        return self.pretrained is None

    @property
    def weights_description(self) -> str:
        if self.is_random:
            stand_in = ", byte-level stand-in tokenizer" if self.tokenizer_note else ""
            return f"{self.name} with RANDOM weights{stand_in} (predictions are meaningless)"
        return f"{self.name} / {self.pretrained}"

    @property
    def tokenizer_note(self) -> str | None:
        """Why the model's own tokenizer is not used (a :class:`ByteTokenizer` stands in), or None."""
        return getattr(self.tokenizer, "reason", None)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype images must have: that of the vision tower's patch embedding."""
        return input_dtype(self.model)

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    @property
    def logit_scale(self) -> float:
        scale = cast(torch.Tensor, self.model.logit_scale)  # an nn.Parameter of open_clip's CLIP
        return float(scale.detach().exp())

    @property
    def logit_bias(self) -> float:
        """SigLIP's learned logit bias (0 for CLIP, which has none)."""
        bias = getattr(self.model, "logit_bias", None)
        return float(bias.detach()) if bias is not None else 0.0

    def logits(self, image_features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The model's own logits (B, C): scale · cos(image, text) + bias, in float32.
        image_features: (B, E), not necessarily normalised; text: (C, E) normalised."""
        z = F.normalize(image_features.float(), dim=-1)
        return self.logit_scale * z @ text.to(z.device, torch.float32).T + self.logit_bias

    def encode_text(
        self,
        labels: Sequence[str],
        templates: str | Sequence[str] = "single",
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Normalised class embeddings (C, E) on the CPU: each label through every template,
        averaged and re-normalised (CLIP's prompt ensembling). Prompts are encoded at the
        length of the longest one where that is exact (``tca.text``); embeddings are cached
        per (label, templates), so a new label costs one label. progress(done, total) counts
        prompts as they are encoded."""
        return text.class_embeddings(
            self.model,
            self.tokenizer,
            list(labels),
            resolve_templates(templates),
            self.text_cache,
            self.device,
            self.text_tower,
            progress=progress,
        )


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(templates, str):
        if templates in TEMPLATES:
            return TEMPLATES[templates]
        if "{}" in templates:
            return (templates,)
        raise InputError(
            f"unknown templates {templates!r}; use one of {', '.join(TEMPLATES)} "
            f"or a format string containing {{}}"
        )
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


def validate_labels(
    labels: Sequence[str],
    tokenizer: Callable | None = None,
    templates: str | Sequence[str] = "single",
    max_labels: int | None = None,
    context_length: int = 77,
) -> list[str]:
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
            raise LabelError(
                f"label {i + 1} is {len(label)} characters long "
                f"(at most {MAX_LABEL_CHARS}): {label[:40]!r}..."
            )
    seen: dict[str, int] = {}
    for label in labels:
        seen[label.lower()] = seen.get(label.lower(), 0) + 1
    dups = [l for l, n in seen.items() if n > 1]
    if dups:
        raise LabelError(
            f"duplicate label{'s' if len(dups) > 1 else ''}: "
            f"{', '.join(repr(d) for d in dups)} (labels are compared "
            f"case-insensitively and must be unique; remove the repeats)"
        )
    if tokenizer is not None and hasattr(tokenizer, "encode"):
        longest = max(resolve_templates(templates), key=len)
        for label in labels:
            n = len(tokenizer.encode(longest.format(label))) + 2  # start + end tokens
            if n > context_length:
                raise LabelError(
                    f"label {label[:40]!r} is too long: {n} tokens with its prompt "
                    f"template, the text encoder takes at most {context_length}"
                )
    return labels


def load_model(
    name: str = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    checkpoint: str | os.PathLike | None = None,
    device: str = "cpu",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    precision: str = "fp32",
) -> ClipModel:
    """Load an open_clip CLIP by name.

    pretrained: an open_clip tag (e.g. ``openai``), or None / ``"none"`` for random weights
    (seeded by ``seed``). checkpoint: a local ``.safetensors`` or PyTorch state-dict file (loaded
    with ``weights_only``; never unpickles arbitrary objects). The CLI and app read
    $TCA_CHECKPOINT; this function reads no environment, so a checkpoint is never applied to a
    model it was not meant for.
    Raises WeightsUnavailableError with instructions when weights cannot be had: at once when
    they are not cached and the Hub is offline (HF_HUB_OFFLINE=1) or unreachable.
    cache_dir: the Hugging Face hub cache to use (default: the standard one).
    precision: ``fp32``, or ``fp16`` / ``bf16``: open_clip's mixed precision (weights in half
    precision, LayerNorms in float32). Random weights are drawn in float32 and then cast, so a
    seed gives the same model at every precision, up to rounding.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower().split("-")[0] in m.lower()][:8]
        raise UnknownModelError(
            f"unknown open_clip model {name!r}"
            + (f"; similar: {', '.join(close)}" if close else "")
        )
    if isinstance(pretrained, str) and pretrained.lower() in ("none", "random", ""):
        pretrained = None
    torch.manual_seed(seed)
    if checkpoint is not None:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=None, device=device, precision=precision
        )
        _load_checkpoint(model, Path(checkpoint))
        source: str | None = str(checkpoint)
    elif pretrained is None:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=None, device=device, precision=precision
        )
        source = None
    else:
        if pretrained not in open_clip.list_pretrained_tags_by_model(name):
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise UnknownModelError(
                f"{name} has no pretrained tag {pretrained!r}; available: "
                f"{', '.join(tags) or 'none'}"
            )
        model, preprocess = _load_pretrained(name, pretrained, device, cache_dir, precision)
        source = pretrained
    model.eval()
    check_supported(model)
    return ClipModel(
        model,
        preprocess,
        load_tokenizer(name, random=source is None, cache_dir=cache_dir),
        name,
        source,
    )


class ByteTokenizer:
    """Token ids from UTF-8 bytes, for random-weight models whose own tokenizer is a Hub
    download that is not available (offline, or without ``transformers``). The text tower then
    runs for real on these ids; with random weights no tokenizer gives meaning, so nothing is
    lost. ``reason`` says why the model's own tokenizer is not used."""

    def __init__(self, context_length: int, vocab_size: int, reason: str) -> None:
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.reason = reason

    def encode(self, text: str) -> list[int]:
        # ids 1..256 (0 is padding), folded into the vocabulary if it is smaller
        return [1 + (b % (self.vocab_size - 1)) for b in text.encode("utf-8")]

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        n = context_length or self.context_length
        out = torch.zeros((len(texts), n), dtype=torch.long)
        for i, prompt in enumerate(texts):
            ids = self.encode(prompt)[:n]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def load_tokenizer(name: str, random: bool = False, cache_dir: str | os.PathLike | None = None):
    """The tokenizer of open_clip model ``name``.

    CLIP's BPE vocabulary ships with open_clip. SigLIP-style models use a Hugging Face tokenizer
    downloaded from the Hub on first use (and need ``transformers``): when it is not cached and
    the Hub is offline or unreachable, this fails at once with WeightsUnavailableError, like
    missing weights. With ``random`` weights it returns a :class:`ByteTokenizer` instead, so the
    model still runs end to end offline.
    """
    text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    hf_name = text_cfg.get("hf_tokenizer_name")
    if not hf_name:
        return open_clip.get_tokenizer(name)
    reason = None
    try:
        import transformers  # noqa: F401  (open_clip's HFTokenizer needs it)
    except ImportError:
        reason = f"{name}'s tokenizer {hf_name} needs the transformers package (pip install transformers)"
    if reason is None and not _tokenizer_cached(hf_name, cache_dir) and not _hub_reachable():
        reason = (
            f"{name}'s tokenizer {hf_name} is not in the local cache and the Hugging Face "
            f"Hub cannot be reached (offline)"
        )
    if reason is None:
        try:
            return open_clip.get_tokenizer(name, cache_dir=str(cache_dir) if cache_dir else None)
        except Exception as exc:  # network errors, partial caches, ...
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            reason = f"could not load {name}'s tokenizer {hf_name}: {type(exc).__name__}: {first}"
    if random:
        return ByteTokenizer(
            int(text_cfg.get("context_length", 77)), int(text_cfg.get("vocab_size", 49408)), reason
        )
    raise WeightsUnavailableError(
        f"{reason}. Connect to the internet once (the tokenizer is "
        f"cached like the weights), or use --pretrained none for random "
        f"weights with a byte-level stand-in tokenizer."
    )


def _tokenizer_cached(repo: str, cache_dir) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for fname in ("tokenizer.json", "tokenizer_config.json"):
        path = try_to_load_from_cache(repo, fname, cache_dir=str(cache_dir) if cache_dir else None)
        if isinstance(path, str) and os.path.isfile(path):
            return True
    return False


def _cached_weights(cfg: dict, cache_dir) -> str | None:
    """Path of already-downloaded weights for an open_clip pretrained config, if any."""
    from huggingface_hub import try_to_load_from_cache

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


def _load_pretrained(name: str, tag: str, device: str, cache_dir, precision: str = "fp32"):
    cfg = open_clip.get_pretrained_cfg(name, tag)
    cached = _cached_weights(cfg, cache_dir)
    kwargs = dict(
        image_mean=cfg.get("mean"),
        image_std=cfg.get("std"),
        image_interpolation=cfg.get("interpolation"),
        image_resize_mode=cfg.get("resize_mode"),
        device=device,
        precision=precision,
    )
    try:
        if cached:  # load the file directly: no network round trip, works offline
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=cached, **kwargs
            )
        elif not _hub_reachable():
            raise WeightsUnavailableError(
                f"pretrained weights {name}/{tag} are not in the local cache and the Hugging Face "
                f"Hub cannot be reached (offline). {WEIGHTS_HELP}"
            )
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name,
                pretrained=tag,
                cache_dir=str(cache_dir) if cache_dir else None,
                device=device,
                precision=precision,
            )
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # network errors, corrupt downloads, ...
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise WeightsUnavailableError(
            f"could not load pretrained weights {name}/{tag}: "
            f"{type(exc).__name__}: {first}. {WEIGHTS_HELP}"
        ) from exc
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
            f"must be a .safetensors file or a PyTorch state dict saved with plain tensors"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"checkpoint {str(path)!r} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    mismatch = _state_mismatch(model.state_dict(), state)
    if mismatch:
        raise WeightsUnavailableError(
            f"checkpoint {str(path)!r} does not fit this architecture: {mismatch}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsUnavailableError(
            f"checkpoint {str(path)!r} does not fit this architecture: "
            f"{str(exc).splitlines()[0][:300]}"
        ) from exc


def _state_mismatch(expected: dict, state: dict, show: int = 5) -> str:
    """Which keys of ``state`` do not fit ``expected`` (a model's state dict): missing keys,
    unexpected keys and shape mismatches, the first ``show`` of each named; '' if it fits."""

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:show]) + (", ..." if len(keys) > show else "")

    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shapes = [
        f"{k} (checkpoint {tuple(getattr(state[k], 'shape', ()))}, model "
        f"{tuple(expected[k].shape)})"
        for k in sorted(expected.keys() & state.keys())
        if tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)
    ]
    parts = [
        f"{len(keys)} {what}: {some(keys)}"
        for what, keys in (
            ("missing key(s)", missing),
            ("unexpected key(s)", unexpected),
            ("shape mismatch(es)", shapes),
        )
        if keys
    ]
    return "; ".join(parts)
