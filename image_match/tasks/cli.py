"""The bulk ingestion commands: ``image-match ingest``, ``image-match worker``, ``image-match job``.

Registered on the main group (``image_match.cli``) and written with its shared pieces
(``image_match.cli_common``): ``--json``, ``-v`` and ``-q``, ``--db``, one ``error: ...`` line and
exit 1 on a failure (2 for a usage mistake). Celery and redis-py are imported when a command runs,
so this module imports without them; a command then says which extra to install.
"""

import sys
import time

import click

from ..cli_common import EXIT_FAILURE, database_url, db_option, json_line, output_options, state_of
from ..errors import ImageMatchError
from ..extras import install_command
from . import config
from .submit import DEFAULT_BATCH_SIZE

FAILURES_SHOWN = 50
# Seconds a command waits for an unreachable broker before saying so (a command that waits for a
# job rides out longer outages: see submit.wait).
BROKER_PATIENCE = 10.0


def _need(*modules):
    """Import the optional dependencies a command needs, or fail with the install hint."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ImageMatchError(f"bulk ingestion needs Celery and redis-py ({name} is missing): "
                                  f"{install_command('celery')}") from None


def _jobs():
    from .jobs import Jobs, redis_client

    return Jobs(redis_client(patience=BROKER_PATIENCE))


@click.command()
# A line that is not UTF-8 (a file name in a legacy encoding) keeps its bytes as surrogate escapes,
# as Python gives file names: such a path is still read, and stored with its bytes written \xNN.
@click.argument("file", type=click.File("r", encoding="utf-8", errors="surrogateescape"))
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=DEFAULT_BATCH_SIZE,
              show_default=True, help="Images per task (one store round trip each).")
@click.option("--wait", is_flag=True, help="Show progress until the job ends, then its failures.")
@click.option("--allow-failures", is_flag=True,
              help="With --wait, exit 0 even when some images failed.")
@click.option("--fail-without-workers", is_flag=True,
              help="With --wait, exit 1 when no worker is consuming the queue (rather than say so "
                   "and keep waiting for one).")
@db_option
@output_options
@click.pass_context
def ingest(ctx, file, batch_size, wait, allow_failures, fail_without_workers, db_url, as_json):
    """Fetch, sign and store every image listed in FILE ('-' for stdin), on the workers.

    FILE has one URL or path per line, or JSON lines with "url" (or "path") and optionally "id"
    and "metadata". Prints the job's id; with --wait, shows progress until the job ends and exits
    1 if any image failed (unless --allow-failures). Start workers with `image-match worker`.
    """
    _need("celery", "redis")
    from ..drivers import open_database
    from .submit import submit

    state = state_of(ctx)
    database = database_url(db_url)
    open_database(database)  # a bad URL or an unreachable store fails here, not on every item
    job, count = submit(file, database=database, batch_size=batch_size,
                        source=getattr(file, "name", "-"), jobs=_jobs())
    if not wait:
        if as_json:
            json_line({"job": job, "items": count})
        else:
            click.echo(job)
            state.info(f"submitted {count} images; follow with: image-match job {job} --wait")
        return
    state.info(f"job {job}: {count} images submitted")
    _wait_and_report(state, job, as_json, allow_failures, fail_without_workers)


@click.command()
@click.argument("job_id", metavar="ID")
@click.option("--wait", is_flag=True, help="Show progress until the job ends.")
@click.option("--allow-failures", is_flag=True, help="Exit 0 even when some images failed.")
@click.option("--fail-without-workers", is_flag=True,
              help="With --wait, exit 1 when no worker is consuming the queue.")
@output_options
@click.pass_context
def job(ctx, job_id, wait, allow_failures, fail_without_workers, as_json):
    """Show a job's counts and its failures with their reasons.

    Jobs are kept for IMAGE_MATCH_RESULT_TTL seconds after their last activity. Exits 1 if any
    image failed (unless --allow-failures). With --json, one object listing every failure.
    """
    _need("redis")
    state = state_of(ctx)
    if wait:
        _wait_and_report(state, job_id, as_json, allow_failures, fail_without_workers)
        return
    jobs = _jobs()
    _report(jobs, _status(jobs, job_id), as_json, allow_failures)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-c", "--concurrency", type=click.IntRange(1), default=None,
              help="Worker processes (default: one per core, plus one).")
@click.option("-l", "--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False))
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(concurrency, loglevel, celery_args):
    """Run an ingestion worker (Celery) until stopped; start one on each machine.

    It takes batches from IMAGE_MATCH_BROKER_URL and stores them where each job says. Arguments
    after -- go to `celery worker`.
    """
    _need("celery", "redis")
    from .worker import app

    argv = ["worker", f"--loglevel={loglevel.upper()}"]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    app.worker_main(argv + list(celery_args))


def _status(jobs, job_id):
    import redis

    try:
        status = jobs.status(job_id)
    except redis.exceptions.RedisError as error:
        raise ImageMatchError(f"cannot reach the broker: {error}") from None
    if status is None:
        raise ImageMatchError(f"job {job_id}: no such job (unknown, or expired)")
    return status


def _wait_and_report(state, job_id, as_json, allow_failures, fail_without_workers=False):
    from .submit import wait

    jobs = _jobs()
    first = _status(jobs, job_id)
    workers = _WorkerWatch(state, jobs, fail_without_workers)
    if not state.show_progress():
        _report(jobs, wait(job_id, jobs, on_no_worker=workers.update), as_json, allow_failures)
        return
    with click.progressbar(length=first.total or first.submitted or 1, label="ingesting",
                           file=sys.stderr, item_show_func=lambda text: text) as bar:
        status = wait(job_id, jobs, on_status=_Progress(bar).update, on_no_worker=workers.update)
    _report(jobs, status, as_json, allow_failures)


class _WorkerWatch:
    """Says when no worker consumes the queue (a job then never moves), and when one does again;
    with --fail-without-workers, stops waiting instead."""

    def __init__(self, state, jobs, fail):
        self.state, self.jobs, self.fail = state, jobs, fail

    def update(self, present):
        if present:
            self.state.info("\na worker is consuming the queue now")
            return
        from .jobs import mask_password
        from .. import settings

        hint = (f"no worker is consuming the queue {config.QUEUE!r} at "
                f"{mask_password(settings.get('BROKER_URL'))}: start one with `image-match "
                "worker` where IMAGE_MATCH_BROKER_URL names this broker")
        if self.fail:
            raise ImageMatchError(hint)
        self.state.info(f"\n{hint} (still waiting; Ctrl-C stops waiting, the job stays queued)")


class _Progress:
    """Moves the bar to a job's settled count; shows its counts and its rate of the last seconds."""

    def __init__(self, bar):
        self.bar = bar
        self.shown = 0
        self.samples = []  # (time, settled) over the last 5 s

    def update(self, status):
        settled = status.done + status.failed
        now = time.monotonic()
        self.samples = [s for s in self.samples if now - s[0] <= 5.0] + [(now, settled)]
        (t0, s0), (t1, s1) = self.samples[0], self.samples[-1]
        rate = (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0
        self.bar.length = max(status.total if status.total is not None else status.submitted, 1)
        self.bar.update(max(settled - self.shown, 0),
                        f"done {status.done}  failed {status.failed}  remaining {status.remaining}  "
                        f"{rate:.0f} images/s")
        self.shown = max(settled, self.shown)


def _report(jobs, status, as_json, allow_failures):
    failures = jobs.failures(status.job) if status.failed else []
    if as_json:
        json_line(dict(status.as_dict(), failures=failures))
    else:
        _print_status(status, failures)
    if status.failed and not allow_failures:
        sys.exit(EXIT_FAILURE)


def _print_status(status, failures):
    verb = "finished in" if status.state == "finished" else f"{status.state} for"
    click.echo(f"job {status.job}: {verb} {status.elapsed:.1f} s, into {status.database}")
    total = status.total if status.total is not None else f"{status.submitted} so far"
    click.echo(f"  images     {total}")
    click.echo(f"  done       {status.done}")
    click.echo(f"  failed     {status.failed}")
    click.echo(f"  remaining  {status.remaining}")
    click.echo(f"  rate       {status.images_per_second:.1f} images/s")
    if failures:
        click.echo("failures:")
        for failure in failures[:FAILURES_SHOWN]:
            click.echo(f"  line {failure['line']}: {failure['source']}: {failure['reason']}")
        if len(failures) > FAILURES_SHOWN:
            click.echo(f"  ... and {len(failures) - FAILURES_SHOWN} more (--json lists them all)")
