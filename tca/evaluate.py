"""Kept for existing imports: the evaluation now lives in :mod:`tca.eval` (one module per
concept) and its command line in :mod:`tca.cli`."""

from .eval import *  # noqa: F403
from .eval import __all__  # noqa: F401
