"""Which image files a visitor may hand the app: only files under the app's upload roots (the
web framework's upload folder and the app's own curated examples), each within a size cap.

Everything else (another server file, a missing file, a relative or ``..`` path, a link out of
the roots) gets one and the same refusal, :data:`REFUSED`, which says nothing about the path;
nothing outside the roots is opened, read or stat-ed for its contents.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote, urlsplit

from tca.errors import ImageError, InputError

REFUSED = (
    "image: only an uploaded image is accepted (drop a file on the page, or send one "
    "with gradio_client.handle_file); other file references are refused"
)
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # the app's upload cap (its launch(max_file_size) too)


class UploadRefused(InputError):
    """An image input that is not an upload (always with the message :data:`REFUSED`)."""

    def __init__(self) -> None:
        super().__init__(REFUSED)


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclass(frozen=True)
class UploadPolicy:
    """roots: the folders uploads live in (resolved at construction); max_bytes: the size cap."""

    roots: tuple[Path, ...]
    max_bytes: int = MAX_UPLOAD_BYTES

    @classmethod
    def of(
        cls, roots: Sequence[str | os.PathLike], max_bytes: int = MAX_UPLOAD_BYTES
    ) -> UploadPolicy:
        return cls(tuple(Path(os.path.abspath(r)).resolve() for r in roots), max_bytes)

    def check(self, path: str | os.PathLike | None) -> Path:
        """The resolved path of an accepted upload; :class:`UploadRefused` otherwise.

        The lexical test (absolute, normalised, under a root) comes first, so a path outside
        the roots is refused without touching the file system; only then are links resolved
        (a link inside a root that points out is refused too) and the file's size read.
        """
        if not path or not isinstance(path, (str, os.PathLike)) or "\x00" in str(path):
            raise UploadRefused()
        raw = Path(str(path))
        if not raw.is_absolute():
            raise UploadRefused()
        lexical = Path(os.path.normpath(raw))
        if not any(_under(lexical, root) for root in self.roots):
            raise UploadRefused()
        real = lexical.resolve()
        if not any(_under(real, root) for root in self.roots) or not real.is_file():
            raise UploadRefused()
        size = real.stat().st_size
        if size > self.max_bytes:
            raise ImageError(too_large(size, self.max_bytes))
        return real


# The route a Gradio app serves its files under (uploads among them): /gradio_api/file=<path>.
FILE_ROUTE = "/gradio_api/file="


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def served_path(url: str) -> str | None:
    """The server path an http(s) URL of this app's file route names (``.../gradio_api/file=
    /tmp/gradio/<hash>/x.png``, as an upload's URL is), else None. The URL's host is not
    used: nothing is ever fetched, the file is looked up here, where the policy checks it."""
    if not is_url(url):
        return None
    path = urlsplit(url).path
    _, found, rest = path.partition(FILE_ROUTE)
    return unquote(rest) if found and rest else None


def too_large(size: int, max_bytes: int) -> str:
    return (
        f"image: the file is {size / 2**20:.1f} MB; the limit is "
        f"{max_bytes / 2**20:.0f} MB (downscale or compress it first)"
    )


def check_data_url(url: str, max_bytes: int = MAX_UPLOAD_BYTES) -> None:
    """Refuse a ``data:`` URL whose decoded bytes would exceed ``max_bytes``, before decoding
    (base64 carries 3 bytes per 4 characters)."""
    _, _, payload = url.partition(",")
    size = len(payload) * 3 // 4
    if size > max_bytes:
        raise ImageError(too_large(size, max_bytes))


__all__ = [
    "FILE_ROUTE",
    "REFUSED",
    "MAX_UPLOAD_BYTES",
    "UploadRefused",
    "UploadPolicy",
    "check_data_url",
    "is_url",
    "served_path",
    "too_large",
]
