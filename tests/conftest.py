"""Fixtures and helpers shared by the test suite."""

import io
from pathlib import Path

import pytest  # noqa: F401
from PIL import Image

from http_server import http_server  # noqa: F401  (pytest puts tests/ on sys.path)

DATA = Path(__file__).resolve().parent / "data"
# A 640x427 photograph (CC-BY-2.0, see data/MANIFEST.tsv).
PHOTO = DATA / "p8378025ad25.jpg"
# The dev corpus, when this checkout sits beside ../shared (engineers' machines and CI).
SHARED_CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "dev"


def photos():
    """The JPEG photographs shipped in tests/data."""
    return sorted(p for p in DATA.glob("p*.jpg"))


def jpeg_bytes(image, quality=90):
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
