"""What the commands of ``image-match`` share: error handling, output options, the ``--db`` option,
progress bars, ``key=value`` options and the expansion of paths into image files.

Errors leave as one line on stderr (``error: ...``): a user mistake (a bad option, a bad store URL)
exits 2, a failure (an unreadable image, an unreachable engine, a disk error) exits 1, and the
traceback is shown only with ``-v``.
"""

import codecs
import glob
import json
import os
import sys
from contextlib import contextmanager

import click

from . import settings
from .errors import NO_SUCH_FILE, ImageMatchError, InvalidParameterError

EXIT_FAILURE = 1
EXIT_USAGE = 2

_URL_PREFIXES = ("http://", "https://")


class Context:
    """What every command shares: verbosity and output mode."""

    def __init__(self, verbose=0, quiet=False):
        self.verbose = verbose
        self.quiet = quiet
        self.as_json = False

    def info(self, message):
        """A message for people (stderr), unless ``-q``."""
        if not self.quiet:
            click.echo(message, err=True)

    def show_progress(self):
        return not self.quiet and not self.as_json and _is_terminal(sys.stderr)


def _file_name_bytes(error):
    """The codec error handler of ``print_file_names_as_they_are``."""
    try:
        return codecs.lookup_error("surrogateescape")(error)
    except UnicodeError:  # a lone surrogate that no file name decodes to
        return codecs.lookup_error("backslashreplace")(error)


def print_file_names_as_they_are():
    """A file name that is not valid UTF-8 reaches Python with its bytes as surrogate escapes:
    let stdout write those bytes back as they were (as ``ls`` prints them) instead of failing."""
    try:
        codecs.lookup_error("image_match.file_names")
    except LookupError:
        codecs.register_error("image_match.file_names", _file_name_bytes)
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        try:
            sys.stdout.reconfigure(errors="image_match.file_names")
        except (ValueError, OSError):
            pass


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def can_ask():
    """Whether the user can be asked a question (stdin is a terminal). Tests replace it."""
    return _is_terminal(sys.stdin)


class Group(click.Group):
    """A click group that turns every error into one line and an exit status."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            _usage(ctx, error)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            _usage(ctx, error)
        except InvalidParameterError as error:
            _fail(ctx, error, EXIT_USAGE)
        except ImageMatchError as error:
            _fail(ctx, error, EXIT_FAILURE)
        except BrokenPipeError:
            # The reader went away (`image-match export | head`): stop quietly.
            _silence_stdout()
            ctx.exit(EXIT_FAILURE)
        except OSError as error:
            message = (f"{error.filename}: {error.strerror}" if error.filename and error.strerror
                       else str(error))
            _fail(ctx, message, EXIT_FAILURE)
        except click.ClickException as error:
            _fail(ctx, error.format_message(), error.exit_code)


# ``image-match`` alone prints the help (click >= 8.2 raises this UsageError for it).
_HELP_INSTEAD = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _usage(ctx, error):
    if isinstance(error, _HELP_INSTEAD):
        raise error
    where = error.ctx.command_path if error.ctx is not None else ctx.command_path
    _fail(ctx, f"{error.format_message()} (see '{where} --help')", EXIT_USAGE)


def _fail(ctx, error, status):
    """Print ``error: <first line>`` (the whole message and the traceback with -v) and exit."""
    state = ctx.find_object(Context)
    verbose = state is not None and state.verbose
    message = str(error)
    if verbose and isinstance(error, BaseException):
        import traceback

        traceback.print_exc()
    if not verbose:
        message = message.splitlines()[0] if message else type(error).__name__
    click.echo(f"error: {message}", err=True)
    ctx.exit(status)


def _silence_stdout():
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def usage_error(message):
    """A user mistake found by a command itself: one line, exit 2."""
    raise InvalidParameterError(message)


def json_line(value):
    click.echo(json.dumps(value, separators=(", ", ": ")))


def state_of(ctx):
    return ctx.ensure_object(Context)


# --- options every command takes ----------------------------------------------------------------

def _more_verbose(ctx, param, value):
    if value:
        state_of(ctx).verbose += value


def _be_quiet(ctx, param, value):
    if value:
        state_of(ctx).quiet = True


def _json_mode(ctx, param, value):
    state_of(ctx).as_json = bool(value)
    return value


def output_options(function, json_help="Print JSON (one object per line) for scripts."):
    """``--json``, ``-v`` and ``-q``; the two last may also come before the command."""
    function = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_be_quiet,
                            help="Say only what was asked for (no progress, no summary).")(function)
    function = click.option("-v", "--verbose", count=True, expose_value=False,
                            callback=_more_verbose, help="Say more; show tracebacks on errors.")(function)
    function = click.option("--json", "as_json", is_flag=True, callback=_json_mode,
                            help=json_help)(function)
    return function


def db_option(function):
    return click.option(
        "--db", "db_url", metavar="URL",
        help="The store: sqlite:///file.db or http(s)://host:port/index. Default: "
             "$IMAGE_MATCH_DATABASE, else the embedded SQLite file "
             f"{settings.default_database_url()}.")(function)


_QUERY_OPTIONS = (
    ("--frames", "Also find copies with caption bars, letterbox bars or a border added (the "
                 "query's central frames are searched too)."),
    ("--small-rotations", "Also find copies turned by up to about 15 degrees (the query turned "
                          "back by 5, 10 and 15 degrees each way is searched too)."),
    ("--insets", "Also find copies pasted into a larger picture, a collage or a screenshot (the "
                 "rectangles bounded by long straight edges in the query are searched too)."),
    ("--corner-crops", "In a store made with crop windows: also find copies cropped at a corner "
                       "(about a tenth of each side cut away)."),
    ("--robust", "All of --frames, --small-rotations, --insets and, in a store with crop "
                 "windows, --corner-crops."),
)


def query_options(function):
    """``--frames``, ``--small-rotations``, ``--insets``, ``--corner-crops`` and ``--robust``: what
    a search also signs of a query (flags, in this order in ``--help``)."""
    for name, text in reversed(_QUERY_OPTIONS):
        function = click.option(name, is_flag=True, help=text)(function)
    return function


def workers_option(default=None):
    """``--workers N``: processes signing images (None: every core)."""
    return click.option("--workers", type=click.IntRange(1), default=default,
                        show_default=default is not None,
                        help="Processes signing images" + (" (default: every core)."
                                                           if default is None else "."))


def database_url(db_url):
    return db_url or settings.get("DATABASE")


def open_store(db_url, create=False, **kwargs):
    """The store ``--db`` names (or the default). ``create=False`` for commands that only read or
    delete: a mistyped SQLite file name fails instead of making a new empty store."""
    from .drivers import open_database

    return open_database(database_url(db_url), create=create, **kwargs)


# --- progress -----------------------------------------------------------------------------------

class _NoBar:
    def update(self, steps):
        pass


@contextmanager
def progress(state, length, label):
    """A progress bar on stderr when it is a terminal (not with --json or -q), else nothing."""
    if state.show_progress() and length:
        with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
            yield bar
    else:
        yield _NoBar()


class _Cutoff(click.FloatRange):
    """A distance cutoff: a number in [0, 1]. FloatRange alone lets NaN through (it is neither
    below nor above the range), and a NaN cutoff matches nothing."""

    def __init__(self):
        super().__init__(0, 1)

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number in the range 0<=x<=1.", param, ctx)
        return number


CUTOFF = _Cutoff()


# --- key=value options ----------------------------------------------------------------------------

def json_scalar(text):
    """``"3"`` -> 3, ``"2.5"`` -> 2.5, ``"true"`` -> True, ``'"3"'`` -> "3"; anything else is the
    string itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        return text
    return value if isinstance(value, (str, int, float, bool)) else text


def split_assignment(text, option):
    key, equals, value = text.partition("=")
    key = key.strip()
    if not equals or not key:
        usage_error(f"{option} {text!r}: expected KEY=VALUE")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes of another encoding, which no store can hold
        usage_error(f"{option} {text!r}: not valid UTF-8 text")
    return key, json_scalar(value)


def parse_metadata(assignments):
    """``--metadata`` options as a dict; dotted keys nest (``camera.make=X``), as filters read them."""
    metadata = {}
    for text in assignments:
        key, value = split_assignment(text, "--metadata")
        target = metadata
        parts = key.split(".")
        for part in parts[:-1]:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                usage_error(f"--metadata {text!r}: {part!r} is already a value")
            target = child
        target[parts[-1]] = value
    return metadata or None


def parse_filter(assignments):
    """``--filter`` options as a portable pre_filter; one key given twice accepts either value."""
    pre_filter = {}
    for text in assignments:
        key, value = split_assignment(text, "--filter")
        pre_filter.setdefault(key, []).append(value)
    return {key: values[0] if len(values) == 1 else values for key, values in pre_filter.items()} or None


# --- paths --------------------------------------------------------------------------------------

def is_url(text):
    return isinstance(text, str) and text.lower().startswith(_URL_PREFIXES)


_image_extensions = None


def image_extensions():
    """File name extensions of the formats Pillow can open (``.jpg``, ``.png``, ``.webp``...)."""
    global _image_extensions
    if _image_extensions is None:
        from PIL import Image

        Image.init()
        _image_extensions = frozenset(ext for ext, fmt in Image.registered_extensions().items()
                                      if fmt in Image.OPEN)
    return _image_extensions


def _walk_images(folder):
    """Image files under ``folder``, recursively, in sorted order; hidden files and folders
    (thumbnail caches, ``.git``) are left out."""
    extensions = image_extensions()
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions:
                yield os.path.join(root, name)


def expand_paths(arguments):
    """Files, folders (recursive: their image files) and globs as a list of ``(path, root)``,
    and the arguments that named nothing as ``[(argument, reason)]``.

    ``root`` is the folder argument a file was found under (None for files given directly, globs
    and URLs). URLs are kept as they are. Each path comes once.
    """
    found, missing, seen = [], [], set()

    def keep(path, root):
        key = path if is_url(path) else os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            found.append((path, root))

    for argument in arguments:
        if is_url(argument):
            keep(argument, None)
        elif os.path.isdir(argument):
            for path in _walk_images(argument):
                keep(path, argument)
        elif os.path.exists(argument):
            keep(argument, None)
        elif glob.has_magic(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                missing.append((argument, "no file matches this pattern"))
            for match in matches:
                if os.path.isdir(match):
                    for path in _walk_images(match):
                        keep(path, match)
                else:
                    keep(match, None)
        else:
            missing.append((argument, NO_SUCH_FILE))
    return found, missing


def human_bytes(size):
    if size is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
