"""scripts/run-1x-tests, on a stand-in for a checkout of image-match 1.x: test files written here
the way 1.x's are (they download a picture through GitHub's camo proxy at import, build
``Elasticsearch()`` with no host, delete their index positionally), since 1.x's own are not ours
to keep in this repository.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, central_crop, rgb

REPOSITORY = Path(__file__).resolve().parent.parent
SCRIPT = REPOSITORY / "scripts" / "run-1x-tests"
FLICKR = "https://c2.staticflickr.com/8/7158/6814444991_08d82de57e_z.jpg"

STAND_IN = f'''
import os
import urllib.request

import pytest
from elasticsearch import Elasticsearch, NotFoundError

from image_match.elasticsearch_driver import SignatureES
from image_match.goldberg import ImageSignature

test_img_url = "https://camo.githubusercontent.com/0123abcd/" + {FLICKR!r}.encode().hex()
urllib.request.urlretrieve(test_img_url, "test.jpg")
INDEX = "test_environment_" + os.urandom(6).hex()


@pytest.fixture
def es():
    es = Elasticsearch()
    yield es
    try:
        es.indices.delete(INDEX)
    except NotFoundError:
        pass


def test_url_and_file_sign_alike():
    gis = ImageSignature()
    assert (gis.generate_signature(test_img_url) == gis.generate_signature("test.jpg")).all()


def test_search_on_the_node(es):
    ses = SignatureES(es=es, index=INDEX)
    ses.add_image(test_img_url, refresh_after=True)
    assert ses.search_image("test.jpg")[0]["dist"] == 0.0


def test_reported_when_it_fails():
    assert False
'''


def run(*arguments, env=None):
    environment = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", str(SCRIPT), *map(str, arguments)], capture_output=True,
                          text=True, env=environment, timeout=900)


def test_without_a_checkout_it_says_so_and_does_nothing():
    result = run(env={"IMAGE_MATCH_1X_CHECKOUT": ""})
    assert result.returncode == 0
    assert result.stdout.startswith("run-1x-tests: skipped: no checkout of image-match 1.x given")


def test_a_folder_that_is_not_a_checkout_is_refused(tmp_path):
    result = run(tmp_path)
    assert result.returncode != 0 and "not a checkout of image-match 1.x" in result.stderr


@pytest.mark.engine
def test_1xs_tests_run_with_local_pictures_and_the_node_as_client(tmp_path, opensearch_url,
                                                                  elasticsearch_url):
    checkout = tmp_path / "image-match-1x"
    (checkout / "tests").mkdir(parents=True)
    (checkout / "tests" / "__init__.py").write_text("")
    (checkout / "tests" / "test_goldberg.py").write_text(STAND_IN)
    # A file that does not import is one failure; the others still run.
    broken = "from image_match.no_such_module import CorruptImageError\n"
    (checkout / "tests" / "test_elasticsearch_driver.py").write_text(broken)
    pictures = checkout / "docs" / "source" / "_images"
    pictures.mkdir(parents=True)
    shutil.copy(DATA / "pbd86b081f99.jpg", pictures / "MonaLisa_Wikipedia.jpg")
    central_crop(rgb(DATA / "pbd86b081f99.jpg"), 0.7).save(pictures / "MonaLisa_Remix_Flickr.jpg")

    result = run(checkout, env={"IMAGE_MATCH_TEST_ES_URL": opensearch_url,
                                "IMAGE_MATCH_TEST_ES7_URL": elasticsearch_url})
    assert result.returncode == 1, result.stdout[-3000:]
    lines = result.stdout.splitlines()
    for engine in ("opensearch", "elasticsearch"):
        (line,) = [line for line in lines if line.startswith(f"image-match-1x {engine} ")]
        assert line.endswith(" 2 of 4   passed; failed: ::tests.test_elasticsearch_driver, "
                             "test_goldberg::test_reported_when_it_fails"), line
    assert list(checkout.rglob("conftest.py")) == []  # the checkout is left as it was
