"""Every error a user of image-match can catch, in one hierarchy.

Catch :class:`ImageMatchError` for all of them. Each message names the input it is about (a path,
a URL, ``bytes (N bytes)``, a store URL) and the reason, on one line, so that a command line can
print it as it is and a bulk job can record it next to the item that failed.
"""

#: The reason given for a path that names nothing, by the loader and by the commands that expand
#: files, folders and globs alike (``add``, ``dedupe``): one wording for one situation.
NO_SUCH_FILE = "no such file"


class ImageMatchError(Exception):
    """The base of every error image-match raises on purpose."""


class InvalidParameterError(ImageMatchError, ValueError):
    """A parameter has a value the function cannot work with (a negative cutoff, a bad URL scheme)."""


class ImageLoadError(ImageMatchError, ValueError):
    """An input could not be turned into a grey image.

    ``source`` describes the input (a path, a URL, ``bytes (N bytes)``, ``array (shape, dtype)``);
    ``reason`` says what was wrong with it. ``str(error)`` is ``"<source>: <reason>"``.
    """

    def __init__(self, source, reason):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")

    def __reduce__(self):
        # Errors cross process boundaries (batch signing, Celery): rebuild them from their parts.
        return (type(self), (self.source, self.reason))


class CorruptImageError(ImageLoadError, RuntimeError):
    """The input's bytes are not an image that can be decoded (empty, an unknown format, broken).

    image-match 1.x's name (a RuntimeError there), importable from ``image_match.goldberg`` as it
    was; an ``ImageLoadError`` like every other input that cannot be signed.
    """


class FetchError(ImageLoadError):
    """A URL could not be fetched.

    ``transient`` is True for failures worth retrying later (timeouts, connection resets, HTTP 5xx
    and 429) and False for permanent ones (HTTP 4xx, refused address, too large, not an image).
    ``status`` is the HTTP status when there was one; ``retry_after`` the seconds the server asked
    to wait (``Retry-After``), or None.
    """

    def __init__(self, source, reason, transient=False, status=None, retry_after=None):
        self.transient = transient
        self.status = status
        self.retry_after = retry_after
        super().__init__(source, reason)

    def __reduce__(self):
        return (type(self), (self.source, self.reason, self.transient, self.status, self.retry_after))


class DatabaseError(ImageMatchError):
    """A store could not do what was asked: unreachable, refused the request, or holds bad data.

    ``transient`` is True when retrying later may succeed (the engine is down or overloaded).
    """

    def __init__(self, message, transient=False):
        self.transient = transient
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.transient))


class RecordNotFoundError(DatabaseError, KeyError):
    """No record has the id that was asked for."""

    def __init__(self, message, transient=False):
        super().__init__(message, transient)

    def __str__(self):
        # KeyError would quote the message; keep it a plain line like every other error here.
        return Exception.__str__(self)


class UnavailableError(ImageMatchError):
    """Something the call needs cannot take it now: a service's queue of work is full, or the
    broker of bulk ingestion does not answer. Retrying after ``retry_after`` seconds may succeed.
    """

    def __init__(self, message, retry_after=1):
        self.retry_after = retry_after
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.retry_after))
