"""One target under atheris: ``python fuzz/child.py TARGET CORPUS [libFuzzer options]``.

Run by ``fuzz/run.py``, which reads its statistics. image_match and Pillow are imported under
atheris' instrumentation (every Pillow format plugin too), so that libFuzzer keeps the inputs that
reach new lines of theirs.
"""

import sys

import atheris

with atheris.instrument_imports(include=["image_match", "PIL"]):
    from PIL import Image

    Image.init()  # the format plugins, instrumented too
    from image_match import cli_common, drivers, goldberg, loading, records  # noqa: F401
    from image_match.drivers import elasticsearch  # noqa: F401
    from image_match.tasks import submit  # noqa: F401

from targets import TARGETS  # noqa: E402  (fuzz/ is on sys.path: the script's folder)

check, convert = TARGETS[sys.argv[1]]


def test_one_input(data):
    check(convert(data))


atheris.Setup([sys.argv[0], *sys.argv[2:]], test_one_input)
atheris.Fuzz()
