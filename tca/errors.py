"""Everything a user can get wrong, under one base class.

The CLI, eval and the app catch :class:`UserError` (and nothing else) as a user mistake: its
message is shown as one line. Any other exception is a bug and keeps its traceback. Each class
also derives from the standard exception it used to be, so ``except ValueError`` still works.
"""

from __future__ import annotations

import re


class UserError(Exception):
    """A problem with the user's input or environment; the message names it and says what to do."""


class ConfigError(UserError, ValueError):
    """Condensation settings that cannot work (rates, layers, K, method)."""


class ImageError(UserError, ValueError):
    """The input is not a usable image."""


class LabelError(UserError, ValueError):
    """The candidate labels are unusable."""


class InputError(UserError, ValueError):
    """An app or CLI input is missing or unusable (no image, unknown choice, ...)."""


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights could not be loaded; the message says how to supply them."""


class UnsupportedModelError(UserError, ValueError):
    """The model cannot be condensed (no CLS token, non-standard blocks, ...)."""


class UnknownModelError(UserError, ValueError):
    """No open_clip model of that name, or no pretrained weights with that tag."""


class EvalError(UserError, ValueError):
    """A user error in the evaluation input (folder, manifest, options)."""


class CliError(UserError):
    """A command-line option or environment setting that cannot work."""


# A directory part of an absolute path ("/a/b/" of "/a/b/file"); not after a word character, a
# dot, a colon or a slash, so "1/3", "./x" and URLs are left alone.
_DIRS = re.compile(r"(?<![\w.:/])((?:/[^\s'\"/]+)+/)([^\s'\"/]*)")


def without_dirs(text: str) -> str:
    """``text`` with every absolute path cut to its file name: the one scrubber of server
    paths from messages a visitor or a log reader sees (``/tmp/gradio/ab12/cat.png`` ->
    ``cat.png``)."""
    return _DIRS.sub(lambda m: m.group(2), text)


__all__ = [
    "UserError",
    "ConfigError",
    "ImageError",
    "LabelError",
    "InputError",
    "WeightsUnavailableError",
    "UnsupportedModelError",
    "UnknownModelError",
    "EvalError",
    "CliError",
]
