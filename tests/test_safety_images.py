"""One error for every undecodable image (issue 8): whatever Pillow raises, tca.load_image
raises ImageError with a one-line message, and the CLI prints that line (no traceback), also
past Pillow's hard decompression-bomb limit."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tca

ROOT = Path(__file__).resolve().parent.parent


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG file that declares ``width`` x ``height`` 1-bit pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 8))
        + _chunk(b"IEND", b"")
    )


def _valid_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def test_past_pillows_hard_limit_is_one_image_error(tmp_path):
    assert 20000 * 10000 > 2 * Image.MAX_IMAGE_PIXELS  # Pillow raises DecompressionBombError
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(20000, 10000))
    with pytest.raises(tca.ImageError, match="too many pixels"):
        tca.load_image(bomb)
    with pytest.raises(tca.ImageError, match="too many pixels"):
        tca.load_image(bomb.read_bytes())


CORRUPT = {
    "random bytes": b"\x00\x01garbage" * 100,
    "empty": b"",
    "truncated png": _valid_png()[:200],
    "png, bad body": _valid_png()[:60] + b"\xff" * 400,
    "gif header only": b"GIF89a" + b"\x10\x00\x10\x00\x80\x00\x00",
    "bmp bad header": b"BM" + b"\xff" * 60,
    "jpeg markers only": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\xff" * 50,
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_corrupt_files_give_one_image_error(tmp_path, name):
    path = tmp_path / "in.img"
    path.write_bytes(CORRUPT[name])
    with pytest.raises(tca.ImageError) as err:
        tca.load_image(path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) not in msg and msg.startswith("in.img ")


def test_cli_prints_one_line_past_the_hard_limit(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(20000, 10000))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tca",
            "predict",
            str(bomb),
            "--labels",
            "cat,dog",
            "--pretrained",
            "none",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin"},
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "too many pixels" in lines[0], proc.stderr
