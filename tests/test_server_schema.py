"""The OpenAPI schema, tried by schemathesis against a real ``image-match serve`` process: every
operation with generated requests (valid and invalid), each answer checked against the schema
(status, content type, body, headers), no server error, invalid data refused, the keys enforced.

Bounded for CI: ``IMAGE_MATCH_TEST_SCHEMA_EXAMPLES`` examples an operation (default 25) and no
per-example deadline (the machine is shared)."""

import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from conftest import PHOTO, photos
from service_process import ServiceProcess

WRITE = "schema-write-key"
EXAMPLES = int(os.environ.get("IMAGE_MATCH_TEST_SCHEMA_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
    env = {"IMAGE_MATCH_API_KEYS": f"{WRITE},schema-read-key:read",
           "IMAGE_MATCH_MAX_UPLOAD_BYTES": "2000000"}
    try:
        env["IMAGE_MATCH_BROKER_URL"] = request.getfixturevalue("redis_url")
    except pytest.skip.Exception:
        pass
    database = f"sqlite:///{tmp_path_factory.mktemp('schema') / 'images.db'}"
    with ServiceProcess(database, env) as service:
        headers = {"Authorization": f"Bearer {WRITE}"}
        for n, photo in enumerate([PHOTO, *photos()[:3]]):
            with open(photo, "rb") as image:
                response = requests.post(service.url + "/v1/images", headers=headers,
                                         files={"image": image}, data={"id": f"known-{n}"})
            assert response.status_code == 201, response.text
        yield service


def test_the_served_schema_is_the_one_tried(served):
    assert requests.get(served.url + "/openapi.json").json() == _document()


def _document():
    # The application's own document, made without serving (collection needs it before the
    # server runs); the test above checks the served one is the same.
    from image_match.server.app import create_app

    return create_app(database="sqlite:///unused.db").openapi()


# An image or URL the schema cannot tell from a good one (random bytes, an unreachable host) is a
# valid request the service cannot process: 413, 415, 422 and 502 are answers to it, not faults.
CONFIG = schemathesis.Config.from_dict({"checks": {"positive_data_acceptance": {
    "expected-statuses": ["2xx", "401", "403", "404", "409", "413", "415", "422", "502", "503"]}}})
schema = schemathesis.openapi.from_dict(_document(), config=CONFIG)


# A form's fields are text: an integer, a number or a boolean where the schema says string arrives
# as the same text a caller could have meant, so type mutations of a form cannot be refused (a
# missing form field is, and tests/test_server.py checks the 400 for each).
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck), print_blob=True)
def test_the_api_keeps_to_its_schema(case, served):
    # What the schema cannot tell from good values, and 400 is right for: a cursor the store did
    # not give, text that is not a JSON object in a form's metadata.
    loose = [positive_data_acceptance] if "cursor" in (case.query or {}) or (
        isinstance(case.body, dict) and isinstance(case.body.get("metadata"), str)) else []
    if case.media_type in FORMS:
        loose.append(negative_data_rejection)
    case.call_and_validate(base_url=served.url, headers={"Authorization": f"Bearer {WRITE}"},
                           excluded_checks=loose, timeout=60)
