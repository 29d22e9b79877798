"""What the docs tell a new user to type: installs that install this project, and examples that use
the engine ``image-match engine start`` started. (``scripts/check-quickstart``, run in CI, runs the
README's first commands themselves on a fresh virtualenv.)"""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.rst", ROOT / "engines" / "README.md", *sorted((ROOT / "docs").rglob("*.rst")),
        *sorted((ROOT / "docs").rglob("*.md"))]
SOURCES = [*sorted((ROOT / "image_match").rglob("*.py")), *sorted((ROOT / "scripts").iterdir()),
           ROOT / ".ci" / "run", ROOT / "setup.py", *sorted((ROOT / "benchmarks").glob("*.py"))]
# The distribution name alone, with extras or a version: what pip takes from PyPI, where
# image-match is 1.1.2 (2017). "image-match[x] @ file:///..." (a direct reference) is ours.
FROM_PYPI = re.compile(r"image[-_]match(\[[^\]]*\])?([<>=!~].*)?", re.IGNORECASE)


def _pip_installs(text):
    """The arguments of each ``pip install`` in a text, up to the end of its line, a comment or
    the end of an inline literal."""
    for match in re.finditer(r"pip3? install ([^\n#`]*)", text):
        try:
            yield match.group(0), shlex.split(match.group(1))
        except ValueError:  # an unbalanced quote (a command inside a string): bare words
            yield match.group(0), [word.strip("'\"(),;") for word in match.group(1).split()]


@pytest.mark.parametrize("path", DOCS + SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_install_command_takes_image_match_from_pypi(path):
    if not path.is_file():
        pytest.skip("not in this checkout")
    text = path.read_text(errors="replace")
    wrong = [command for command, words in _pip_installs(text)
             for index, word in enumerate(words)
             if FROM_PYPI.fullmatch(word) and words[index + 1:index + 2] != ["@"]]
    assert not wrong, f"{path.name}: these install image-match 1.x from PyPI: {wrong}"
    # A requirement written out in prose, image-match[extra]>=2 or alone, says the same.
    requirements = [found.group(0) for found in re.finditer(r"image-match\[[^\]]*\][^\s`']*", text)
                    if not text[found.end():found.end() + 3].lstrip().startswith("@")]
    assert not requirements, f"{path.name}: requirements PyPI resolves to 1.x: {requirements}"


@pytest.mark.parametrize("path", [p for p in DOCS if p.suffix == ".rst"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_take_the_url_engine_start_prints(path):
    """No example sends a user's data to whatever holds port 9200 on their machine."""
    if not path.is_file():
        pytest.skip("not in this checkout")
    literal = re.findall(r"::\n\n((?:(?:    .*)?\n)+)", path.read_text())
    fixed = [line.strip() for block in literal for line in block.splitlines()
             if re.search(r"(localhost|127\.0\.0\.1):9200", line)]
    assert not fixed, fixed
