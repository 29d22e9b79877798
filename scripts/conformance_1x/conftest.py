"""Placed by scripts/run-1x-tests beside image-match 1.x's own test files (copied at run time from
a checkout of 1.x, never into this repository), to run them against image-match 2 with only the
changes the conformance job allows:

- the images they download from the internet come from a local HTTP server instead: the same
  pictures, from the 1.x checkout's ``docs/source/_images`` (``IMAGE_MATCH_1X_IMAGES``);
- the client they build (``Elasticsearch()``, no host) points at the node under test
  (``IMAGE_MATCH_1X_ENGINE_URL``). For an OpenSearch node it is opensearch-py's client, under the
  names the tests import from elasticsearch (with its exceptions), taking the index positionally
  as elasticsearch-py 7 did.

Nothing else in the tests or in image-match changes. Fetching any other URL fails.
"""

import os
import shutil
import threading
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

IMAGES = Path(os.environ["IMAGE_MATCH_1X_IMAGES"])
ENGINE_URL = os.environ["IMAGE_MATCH_1X_ENGINE_URL"].rstrip("/")
ENGINE = os.environ["IMAGE_MATCH_1X_ENGINE"]  # "opensearch" or "elasticsearch"

# The pictures 1.x's tests download (through GitHub's camo proxy, whose URLs end with the
# original's address in hex), and their copies in 1.x's docs.
PICTURES = {
    "https://upload.wikimedia.org/wikipedia/commons/thumb/e/ec/Mona_Lisa,_by_Leonardo_da_Vinci,"
    "_from_C2RMF_retouched.jpg/687px-Mona_Lisa,_by_Leonardo_da_Vinci,_from_C2RMF_retouched.jpg":
        "MonaLisa_Wikipedia.jpg",
    "https://c2.staticflickr.com/8/7158/6814444991_08d82de57e_z.jpg": "MonaLisa_Remix_Flickr.jpg",
}
CAMO = "https://camo.githubusercontent.com/"


def picture_of(url):
    """The file name of the picture a URL of 1.x's tests stands for, or None."""
    if not isinstance(url, str):
        return None
    if url.startswith(CAMO):
        try:
            url = bytes.fromhex(url.rsplit("/", 1)[1]).decode("utf-8")
        except ValueError:
            return None
    return PICTURES.get(url)


# --- the images: a local server, and urlretrieve copying from the checkout ----------------------

class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


_server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(IMAGES)))
threading.Thread(target=_server.serve_forever, daemon=True).start()
LOCAL = f"http://127.0.0.1:{_server.server_address[1]}/"
# image-match refuses loopback addresses unless allowed (server-side request forgery).
os.environ["IMAGE_MATCH_FETCH_ALLOWLIST"] = "127.0.0.1"


def _urlretrieve(url, filename=None, *args, **kwargs):
    name = picture_of(url)
    if name is None:
        raise RuntimeError(f"{url}: the conformance run fetches nothing from the internet")
    shutil.copyfile(IMAGES / name, filename)
    return filename, None


urllib.request.urlretrieve = _urlretrieve  # before the test modules import it


def pytest_collection_modifyitems(items):
    """The URLs the test modules hold (their module-level constants) -> the local server's."""
    for module in {item.module for item in items if getattr(item, "module", None)}:
        for name, value in list(vars(module).items()):
            picture = picture_of(value)
            if picture is not None:
                setattr(module, name, LOCAL + picture)


# --- the client ---------------------------------------------------------------------------------

import elasticsearch  # noqa: E402

if ENGINE == "opensearch":
    import opensearchpy

    class _Indices:
        """opensearch-py's indices client, taking the index positionally as 1.x's calls do
        (``es.indices.delete(index_name)``)."""

        def __init__(self, indices):
            self._indices = indices

        def __getattr__(self, name):
            method = getattr(self._indices, name)

            def call(*args, **kwargs):
                if args:
                    kwargs["index"], args = args[0], args[1:]
                return method(*args, **kwargs)

            return call

    class Elasticsearch(opensearchpy.OpenSearch):
        def __init__(self, hosts=None, **kwargs):
            super().__init__(hosts or [ENGINE_URL], **kwargs)
            self.indices = _Indices(self.indices)

    for _name in ("ConnectionError", "RequestError", "NotFoundError", "TransportError"):
        setattr(elasticsearch, _name, getattr(opensearchpy, _name))
else:
    class Elasticsearch(elasticsearch.Elasticsearch):
        def __init__(self, hosts=None, **kwargs):
            super().__init__(hosts or [ENGINE_URL], **kwargs)

elasticsearch.Elasticsearch = Elasticsearch
