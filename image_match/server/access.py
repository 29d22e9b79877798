"""The routes' dependencies: the request's service, and its key checked (``auth``) for reading or
writing; declared as security in the OpenAPI schema (a bearer token, or ``X-API-Key``)."""

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPBearer

from .auth import READ, WRITE

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")


def service(request: Request):
    return request.app.state.service


def _reader(request: Request, _bearer=Depends(_bearer), _key=Depends(_api_key)):
    request.app.state.keys.check(request.headers, READ)


def _writer(request: Request, _bearer=Depends(_bearer), _key=Depends(_api_key)):
    request.app.state.keys.check(request.headers, WRITE)


read = Depends(_reader)
write = Depends(_writer)
