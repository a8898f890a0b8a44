"""Loading CLIP models by open_clip name (with their tokenizer and text-embedding cache), and the
lists of models the package supports and the app offers. Labels: ``tca.labels``; prompt
templates: ``tca.prompts``; where weights come from: ``tca.weights``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence, cast

import open_clip
import torch
import torch.nn.functional as F

from . import labels, prompts, text, weights
from .errors import ConfigError, UnknownModelError, WeightsUnavailableError
from .patch import check_supported
from .prompts import resolve_templates
from .timing import model_device
from .towers import input_dtype

# Names that moved out of this module, kept only for the app-layer modules being moved to tca/app/
# in parallel (explore, serving, panels); remove at merge.
parse_labels = labels.parse_labels  # moved: import from tca.labels
validate_labels = labels.validate_labels  # moved: import from tca.labels
TEMPLATES = prompts.TEMPLATES  # moved: import from tca.prompts
WEIGHTS_HELP = weights.WEIGHTS_HELP  # moved: import from tca.weights

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
    name.removesuffix("-quickgelu") for name in APP_MODELS.values()
)
# --precision choices: open_clip's names for float32 and its mixed fp16 / bf16 modes.
PRECISIONS = ("fp32", "fp16", "bf16")


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
    (seeded by ``seed``; the global RNG is not touched). checkpoint: a local ``.safetensors`` or
    PyTorch state-dict file (``tca.weights.load_checkpoint``: loaded with ``weights_only``, never
    unpickles arbitrary objects). The CLI and app read $TCA_CHECKPOINT; this function reads no
    environment, so a checkpoint is never applied to a model it was not meant for.
    Raises WeightsUnavailableError with instructions when weights cannot be had: at once when
    they are not cached and the Hub is offline (HF_HUB_OFFLINE=1).
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
    if pretrained is not None and checkpoint is None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise UnknownModelError(
                f"{name} has no pretrained tag {pretrained!r}; available: "
                f"{', '.join(tags) or 'none'}"
            )
    # open_clip initialises from the global RNG (before any weights are loaded), building on the
    # CPU and then moving the model (factory.create_model): draw from a fork of the CPU
    # generator, seeded, so a seed gives the same model and the caller's RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if checkpoint is not None:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=None, device=device, precision=precision
            )
            weights.load_checkpoint(model, checkpoint)
            source: str | None = str(checkpoint)
        elif pretrained is None:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=None, device=device, precision=precision
            )
            source = None
        else:
            model, preprocess = weights.load_pretrained(
                name, pretrained, device, cache_dir, precision
            )
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
    the Hub is offline (HF_HUB_OFFLINE=1), this fails at once with WeightsUnavailableError, like
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
    if (
        reason is None
        and weights.hub_offline()
        and not weights.tokenizer_cached(hf_name, cache_dir)
    ):
        reason = (
            f"{name}'s tokenizer {hf_name} is not in the local cache and the Hugging Face "
            f"Hub is offline (HF_HUB_OFFLINE=1)"
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
