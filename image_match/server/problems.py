"""Error documents of the JSON API: RFC 9457 problems, and the one line that says what in a
request did not fit its schema."""

from http import HTTPStatus

from fastapi.responses import JSONResponse


def problem(status, message, instance=None, headers=None):
    """An ``application/problem+json`` answer whose ``detail`` is ``message``."""
    return JSONResponse(problem_document(status, message, instance), status, headers=headers,
                        media_type="application/problem+json")


def problem_document(status, message, instance=None):
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
            "detail": message}
    if instance:
        body["instance"] = instance
    return body


def validation_message(errors):
    """One line for a request that does not fit its schema: the first field and what is wrong
    (pydantic's or FastAPI's list of errors)."""
    if not errors:
        return "the request does not fit the API's schema"
    first = errors[0]
    location = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body",))
    message = first.get("msg", "invalid")
    return f"{location}: {message}" if location else message
