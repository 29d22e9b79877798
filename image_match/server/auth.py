"""API keys: who may read (search, compare, get, list) and who may also write (add, delete, jobs).

``IMAGE_MATCH_API_KEYS`` holds comma-separated keys, each ``KEY`` (read and write) or
``KEY:read``. A request presents one as ``Authorization: Bearer KEY``, as ``X-API-Key: KEY``, or
as HTTP Basic credentials with the key as the user name (or the password): a dsys/match client
keeps its code and puts the key in its base URL, ``http://KEY:@host:8000``. No key: 401; a read
key on a write: 403. With no keys configured every request may do everything, and the service
answers only loopback clients (``guard``) unless started with ``--no-auth``.
"""

import base64
import binascii
import hmac
from dataclasses import dataclass

from ..errors import InvalidParameterError

READ, WRITE = "read", "write"


class Denied(Exception):
    """A request without the right key (401) or with a key that may not do this (403)."""

    def __init__(self, status, message):
        self.status = status
        self.message = message
        self.headers = {"WWW-Authenticate": 'Bearer realm="image-match"'} if status == 401 else {}
        super().__init__(message)


@dataclass(frozen=True)
class Keys:
    """The configured keys: ``{key: READ or WRITE}``; empty when there are none."""

    scopes: dict

    @classmethod
    def parse(cls, entries):
        """Keys from ``IMAGE_MATCH_API_KEYS``' entries (``KEY`` or ``KEY:read``)."""
        scopes = {}
        for entry in entries:
            key, _, scope = entry.partition(":")
            key, scope = key.strip(), scope.strip() or WRITE
            if not key or scope not in (READ, WRITE):
                raise InvalidParameterError(
                    f"IMAGE_MATCH_API_KEYS: {_masked(entry)!r} is not KEY or KEY:read")
            scopes[key] = scope
        return cls(scopes)

    def __bool__(self):
        return bool(self.scopes)

    def scope_of(self, presented):
        """READ, WRITE or None for a presented key; every key is compared in constant time."""
        found = None
        for key, scope in self.scopes.items():
            if hmac.compare_digest(key.encode(), presented.encode()):
                found = scope
        return found

    def check(self, headers, needed):
        """Raise ``Denied`` unless ``headers`` (a mapping, lower-case names) carry a key allowed
        to do what ``needed`` (READ or WRITE) says; nothing to check without keys."""
        if not self.scopes:
            return
        presented = presented_key(headers)
        if presented is None:
            raise Denied(401, "an API key is needed: Authorization: Bearer KEY, or X-API-Key: KEY")
        scope = self.scope_of(presented)
        if scope is None:
            raise Denied(401, "this API key is not one of the service's")
        if needed == WRITE and scope != WRITE:
            raise Denied(403, "this API key may only read (search, compare, get, list)")


def presented_key(headers):
    """The key a request presents, or None."""
    header = headers.get("x-api-key")
    if header:
        return header.strip()
    authorization = headers.get("authorization", "")
    kind, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if kind.lower() == "bearer" and credentials:
        return credentials
    if kind.lower() == "basic" and credentials:
        try:
            user, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user or password or None
    return None


def _masked(entry):
    key = entry.partition(":")[0]
    return entry.replace(key, key[:2] + "***", 1) if len(key) > 4 else "***"
