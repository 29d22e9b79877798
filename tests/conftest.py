"""Fixtures and helpers shared by the test suite."""

import io
from pathlib import Path

import numpy as np
import pytest
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


def rgb(path=PHOTO):
    """A photograph, decoded to RGB."""
    with Image.open(path) as image:
        return image.convert("RGB")


def central_crop(image, area):
    """The centred crop of a PIL image keeping ``area`` (0-1) of it, with its aspect ratio."""
    side = np.sqrt(area)
    width, height = round(image.width * side), round(image.height * side)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def corner_crop(image, area, corner):
    """The crop keeping ``area`` of a PIL image, with its aspect ratio, at a corner such as
    ``"bottom-right"``."""
    side = np.sqrt(area)
    width, height = round(image.width * side), round(image.height * side)
    vertical, horizontal = corner.split("-")
    left = image.width - width if horizontal == "right" else 0
    top = image.height - height if vertical == "bottom" else 0
    return image.crop((left, top, left + width, top + height))


def jpeg_bytes(image, quality=90):
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# --- real search engines, started once per test session ----------------------------------------

def _engine_fixture(kind, url_variable):
    """A session fixture giving the base URL of a real ``kind`` node: the one ``url_variable``
    names, or one built and started here from engines/ (stopped at the end of the session)."""

    @pytest.fixture(scope="session")
    def fixture(tmp_path_factory):
        import os

        configured = os.environ.get(url_variable, "").strip()
        if configured:
            yield configured.rstrip("/")
            return
        from image_match import local_engine
        from image_match.errors import ImageMatchError

        try:
            engine = local_engine.start(kind, data_dir=tmp_path_factory.mktemp(kind),
                                        stop_with_caller=True)
        except ImageMatchError as error:
            if os.environ.get("IMAGE_MATCH_TEST_REQUIRE_ENGINES"):
                raise
            pytest.skip(f"cannot start a local {kind} node: {str(error).splitlines()[0]}")
        try:
            yield engine.url
        finally:
            engine.stop()

    return fixture


def engine_client(address):
    """A client of the right library for the node at ``address`` (opensearch-py for OpenSearch,
    elasticsearch-py for Elasticsearch), to write and read indices past the driver."""
    import json
    import urllib.request

    with urllib.request.urlopen(address + "/", timeout=5) as response:
        info = json.load(response)
    if info["version"].get("distribution") == "opensearch":
        import opensearchpy

        return opensearchpy.OpenSearch([address])
    import elasticsearch

    return elasticsearch.Elasticsearch([address])


opensearch_url = _engine_fixture("opensearch", "IMAGE_MATCH_TEST_ES_URL")
elasticsearch_url = _engine_fixture("elasticsearch", "IMAGE_MATCH_TEST_ES7_URL")

from redis_server import redis_server, redis_url  # noqa: E402,F401  (a real redis-server per session)
