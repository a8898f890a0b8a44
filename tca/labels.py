"""Candidate labels: parsing the text a person typed, and checking the list before the text tower
sees it (each mistake a :class:`LabelError` naming the label)."""

from __future__ import annotations

import re
from typing import Callable, Sequence

from .errors import LabelError
from .prompts import resolve_templates

MAX_LABEL_CHARS = 300


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
    """Check a label list; returns it, or raises LabelError naming the problem. With a
    ``tokenizer`` that can ``encode``, each label in the longest of ``templates`` must fit the
    text tower's ``context_length``."""
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


__all__ = ["MAX_LABEL_CHARS", "parse_labels", "validate_labels"]
