"""What to install for an optional part of image-match, as a command a user can paste.

The name ``image-match`` on PyPI is image-match 1.x's (1.1.2, 2017), so a hint must never ask pip
for image-match itself with an extra: on a machine without image-match 2 installed from its
repository that installs 1.x. A hint names the packages an extra adds instead, read from the
installed distribution's own metadata (setup.cfg's ``[options.extras_require]``), so it can neither
drift from the extras nor reach for the wrong project.
"""

import re
import shlex
from importlib import metadata

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def packages(extra):
    """The requirements the extra ``extra`` adds (``["opensearch-py>=2.0"]``), or [] when this
    installation has no metadata (run from a source folder without installing it)."""
    try:
        requirements = metadata.requires("image-match") or []
    except metadata.PackageNotFoundError:
        return []
    found = []
    for requirement in requirements:
        specifier, _, marker = requirement.partition(";")
        match = _EXTRA_MARKER.search(marker)
        if match and match.group(1) == extra:
            found.append(specifier.strip().replace(" ", ""))
    return found


def install_command(extra):
    """``pip install 'opensearch-py>=2.0'`` for the extra ``opensearch``: its packages, quoted for
    a POSIX shell; or, without metadata, the extra from image-match's source folder."""
    needed = packages(extra)
    if not needed:
        return f"pip install '.[{extra}]' in image-match's source folder"
    return "pip install " + " ".join(shlex.quote(requirement) for requirement in needed)
