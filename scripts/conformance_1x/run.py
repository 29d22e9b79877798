"""image-match 1.x's own test suite against this image-match: see scripts/run-1x-tests.

For each checkout of 1.x and each engine: its ``tests/`` files are copied into a temporary folder
with ``conftest.py`` from here beside them (which changes only where they download images and
where they build the client), and pytest runs them there against the installed image_match, on
the OpenSearch 2.19 and Elasticsearch 7.17 nodes that IMAGE_MATCH_TEST_ES_URL and
IMAGE_MATCH_TEST_ES7_URL name, or nodes started here from engines/ and stopped after. Prints one
line per checkout and engine (passed of collected, and what failed); exits 1 if anything failed.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent.parent
ENGINES = {"opensearch": "IMAGE_MATCH_TEST_ES_URL", "elasticsearch": "IMAGE_MATCH_TEST_ES7_URL"}
IMAGES = Path("docs/source/_images")


def describe(checkout):
    """The checkout's tag or commit, for the report."""
    try:
        return subprocess.run(["git", "-C", str(checkout), "describe", "--tags", "--always"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return checkout.name


def check_checkout(checkout):
    """The reason ``checkout`` is not a checkout of image-match 1.x, or None."""
    if not (checkout / "tests" / "test_goldberg.py").is_file():
        return f"{checkout}: no tests/test_goldberg.py (not a checkout of image-match 1.x)"
    if not (checkout / IMAGES / "MonaLisa_Wikipedia.jpg").is_file():
        return f"{checkout}: no {IMAGES}/MonaLisa_Wikipedia.jpg (the pictures its tests use)"
    return None


def engine_url(kind, folder, started):
    """The URL of a ``kind`` node: the environment's, or one started in ``folder``."""
    url = os.environ.get(ENGINES[kind], "").strip()
    if url:
        return url.rstrip("/")
    sys.path.insert(0, str(REPOSITORY))
    from image_match import local_engine

    print(f"starting a local {kind} node (engines/)...", file=sys.stderr)
    engine = local_engine.start(kind, data_dir=Path(folder) / f"node-{kind}", stop_with_caller=True)
    started.append(engine)
    return engine.url


def run(checkout, kind, url, folder, pytest_args):
    """Run one checkout's tests on one node; ``(passed, collected, [failed test ids])``."""
    work = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=folder))
    shutil.copytree(checkout / "tests", work / "tests",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(HERE / "conftest.py", work / "tests" / "conftest.py")
    (work / "pytest.ini").write_text("[pytest]\n")  # none of this repository's settings
    report = work / "report.xml"
    environment = dict(os.environ, IMAGE_MATCH_1X_IMAGES=str(checkout / IMAGES),
                       IMAGE_MATCH_1X_ENGINE_URL=url, IMAGE_MATCH_1X_ENGINE=kind)
    # A file that does not import is one failure; the others still run.
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                    "--continue-on-collection-errors", f"--junitxml={report}", "tests",
                    *pytest_args], cwd=work, env=environment)
    if not report.exists():
        return 0, 0, ["(pytest did not run)"]
    passed, failed = 0, []
    for case in ElementTree.parse(report).iter("testcase"):
        outcomes = {child.tag for child in case}
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if outcomes & {"failure", "error"}:
            failed.append(name)
        elif "skipped" not in outcomes:
            passed += 1
    collected = sum(1 for _ in ElementTree.parse(report).iter("testcase"))
    return passed, collected, failed


def main():
    parser = argparse.ArgumentParser(prog="run-1x-tests", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="checkouts of image-match 1.x")
    parser.add_argument("--engine", choices=sorted(ENGINES), action="append",
                        help="only this engine (repeatable; default both)")
    parser.epilog = "Arguments after -- go to pytest (-- -k test_difference)."
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, pytest_args = parser.parse_args(argv[:split]), argv[split + 1:]
    checkouts = [checkout.resolve() for checkout in args.checkouts]
    problems = [problem for problem in map(check_checkout, checkouts) if problem]
    if problems:
        sys.exit("run-1x-tests: " + "; ".join(problems))
    lines, all_passed, started = [], True, []
    with tempfile.TemporaryDirectory(prefix="image-match-1x-tests-") as folder:
        try:
            for kind in args.engine or sorted(ENGINES, reverse=True):
                url = engine_url(kind, folder, started)
                for checkout in checkouts:
                    passed, collected, failed = run(checkout, kind, url, folder, pytest_args)
                    all_passed &= passed == collected and not failed
                    outcome = f"{passed:>3} of {collected:<3} passed"
                    if failed:
                        outcome += f"; failed: {', '.join(failed)}"
                    lines.append(f"{describe(checkout):<12} {kind:<14} {outcome}")
        finally:
            for engine in started:
                engine.stop()
    print("\nimage-match 1.x's own tests against this image-match:")
    print("\n".join(lines))
    sys.exit(0 if all_passed else 1)


if __name__ == "__main__":
    main()
