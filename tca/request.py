"""One classification request, validated once where it enters (the CLI, the app's events, its
API): the decoded image, the parsed labels, the model, the prompt templates and the condensation
settings. It is the only thing that crosses from a boundary into a Run; two requests are equal
when they would give the same result (the same picture, whatever its file, the same labels ...).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .config import CondenseConfig
from .errors import InputError
from .images import load_image
from .models import parse_labels, validate_labels
from .prompts import DEFAULT_TEMPLATES, TEMPLATES


@dataclass(frozen=True)
class Request:
    """A validated request. ``image`` is RGB and decoded once; ``image_key`` is a content hash
    of it (equal pictures, equal keys); ``labels`` are parsed and checked (count, length,
    duplicates; the tokenizer's length check needs the model: :meth:`check_tokens`)."""

    image: Image.Image = field(compare=False, repr=False)
    image_key: str
    labels: tuple[str, ...]
    model: str
    templates: str
    config: CondenseConfig
    image_name: str | None = field(default=None, compare=False)  # the file name, never a path

    @classmethod
    def build(
        cls,
        image: str | os.PathLike | bytes | Image.Image | np.ndarray,
        labels: str | Sequence[str],
        model: str,
        templates: str = DEFAULT_TEMPLATES,
        config: CondenseConfig | None = None,
        max_labels: int | None = None,
    ) -> Request:
        """Check and decode everything that can be checked without the model; raises a
        :class:`tca.errors.UserError` naming the field."""
        if templates not in TEMPLATES:
            raise InputError(
                f"unknown prompt templates {templates!r}; choose one of {', '.join(TEMPLATES)}"
            )
        label_list = validate_labels(parse_labels(labels), max_labels=max_labels)
        picture = load_image(image)
        return cls(
            picture,
            image_key(image, picture),
            tuple(label_list),
            model,
            templates,
            config if config is not None else CondenseConfig(),
            image_name(image),
        )

    def check_tokens(self, tokenizer, context_length: int) -> None:
        """LabelError if a label with its longest prompt exceeds the text encoder's context."""
        validate_labels(self.labels, tokenizer, self.templates, None, context_length)

    def with_config(self, config: CondenseConfig) -> Request:
        return replace(self, config=config)

    def same_inputs(self, other: Request | None) -> bool:
        """The same image, labels, model and prompts (condensation settings aside): a baseline
        computed for one is the baseline of the other."""
        return other is not None and (
            self.image_key,
            self.labels,
            self.model,
            self.templates,
        ) == (other.image_key, other.labels, other.model, other.templates)


def image_name(image) -> str | None:
    """The base name of an image given as a path (for exports), else None."""
    if isinstance(image, (str, os.PathLike)):
        return Path(image).name
    return getattr(image, "orig_name", None) or None


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime: float) -> str:
    with open(path, "rb") as f:
        return hashlib.blake2b(f.read(), digest_size=12).hexdigest()


def image_key(source, picture: Image.Image) -> str:
    """A content key: a file's bytes (cached by path, size and time), else the decoded pixels."""
    if isinstance(source, (str, os.PathLike)):
        st = os.stat(source)
        return _file_digest(str(source), st.st_size, st.st_mtime)
    return hashlib.blake2b(picture.tobytes(), digest_size=12).hexdigest()


__all__ = ["Request", "image_key", "image_name"]
