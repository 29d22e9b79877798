"""A job's bookkeeping in Redis: its batches until they are settled, what is done, what failed
and why. Needs redis-py only (not Celery): ``image-match job`` reads jobs with it.

Keys, all expiring ``IMAGE_MATCH_RESULT_TTL`` seconds after the job's last activity
(``<job>`` is ``image-match:job:<id>``):

=========================  ======  ==========================================================================
key                        type    what
=========================  ======  ==========================================================================
``<job>``                  hash    ``created`` and ``finished`` (epoch seconds), ``database`` (password masked),
                                   ``source`` (what was ingested), ``submitted`` (items sent so far),
                                   ``total`` (once the submission is complete; until then: "submitting")
``<job>:done``             set     the items stored
``<job>:failed``           hash    item -> JSON ``{"source", "reason", "status", "attempts"}``
``<job>:batches``          hash    batch -> JSON ``{"items", "attempt", "database"}``, until the batch is settled
``<job>:queued``           zset    batches sent and not started, scored by when they were sent
``<job>:leased``           zset    batches started (or waiting for their retry time), scored by the time by
                                   which they must be settled
``image-match:jobs``       zset    the jobs not finished (what the reapers look at)
``image-match:workers``    zset    the workers alive, scored by when that stops being true unless
                                   they say so again (``announce_worker``)
=========================  ======  ==========================================================================

An item is its line number in the submitted file. A message on the queue names a batch, whose
items are read from ``<job>:batches`` when a worker starts it (``start``). Outcomes are written by
one Lua script per batch (``finish``), which also drops the batch and registers its follow-ups,
so a batch delivered twice writes the same thing twice: ``done`` is a set, a failure is never
recorded for an item already done, storing an item removes an earlier failure, and counts are the
sizes of the two, never counters.

Why a ledger of batches beside the broker's own: the Redis transport takes a message from its list
(BRPOP) and records it as unacknowledged in a second command, so a worker killed between the two
loses the message for good (celery/kombu#305, celery/celery#7950). ``reap`` hands back any batch
whose lease ran out (its worker died while on it) and, once the queue is empty, any batch sent
but never started: every item is eventually settled, whatever happened to its messages.

Leases are short (``config.lease_seconds``) and renewed by the worker that holds the batch
(``renew``): a worker that dies stops renewing and its batches come back within the lease, while
a live worker's batch is never handed to another, however long it runs.
"""

import json
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit, urlunsplit

from .. import settings
from ..errors import ImageMatchError
from ..extras import install_command

_PREFIX = "image-match:job:"
ACTIVE = "image-match:jobs"
WORKERS = "image-match:workers"

# KEYS: job, done, failed, batches, queued, leased, active. ARGV[1]: JSON {ttl, now, job, batch,
# done: [item], failed: [[item, failure JSON]], follow_ups: [[batch, deadline, payload]]}.
_FINISH = """
local a = cjson.decode(ARGV[1])
for _, item in ipairs(a.done) do
    redis.call('SADD', KEYS[2], item)
    redis.call('HDEL', KEYS[3], item)
end
for _, pair in ipairs(a.failed) do
    if redis.call('SISMEMBER', KEYS[2], pair[1]) == 0 then
        redis.call('HSET', KEYS[3], pair[1], pair[2])
    end
end
if a.batch ~= '' then
    redis.call('HDEL', KEYS[4], a.batch)
    redis.call('ZREM', KEYS[5], a.batch)
    redis.call('ZREM', KEYS[6], a.batch)
end
for _, f in ipairs(a.follow_ups) do
    redis.call('HSET', KEYS[4], f[1], f[3])
    redis.call('ZADD', KEYS[6], f[2], f[1])
end
local total = redis.call('HGET', KEYS[1], 'total')
if total and redis.call('SCARD', KEYS[2]) + redis.call('HLEN', KEYS[3]) >= tonumber(total) then
    redis.call('HSETNX', KEYS[1], 'finished', a.now)
    redis.call('ZREM', KEYS[7], a.job)
end
for i = 1, 6 do redis.call('EXPIRE', KEYS[i], a.ttl) end
return 1
"""

# KEYS: batches, queued, leased. ARGV: batch, deadline. The batch's payload, or nil if it is settled.
_START = """
local payload = redis.call('HGET', KEYS[1], ARGV[1])
if payload then
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
end
return payload
"""

# KEYS: job, done, failed, batches, queued, leased, active, the broker's queue (a list).
# ARGV: job, now, grace, limit. The batches to send again: those whose lease ran out, and, when
# the queue is empty, those sent more than `grace` seconds ago and never started. Each is
# (re)queued at `now`, so another reaper does not send it too.
_REAP = """
local job, now, grace, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'finished') == 1 then
    redis.call('ZREM', KEYS[7], job)
    return {}
end
local out = {}
local function requeue(batch)
    if redis.call('HEXISTS', KEYS[4], batch) == 1 then
        redis.call('ZADD', KEYS[5], now, batch)
        table.insert(out, batch)
    else
        redis.call('ZREM', KEYS[5], batch)
    end
    redis.call('ZREM', KEYS[6], batch)
end
for _, batch in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, limit)) do
    requeue(batch)
end
if redis.call('LLEN', KEYS[8]) == 0 then
    for _, batch in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now - grace, 'LIMIT', 0, limit)) do
        requeue(batch)
    end
end
return out
"""


# KEYS: leased, queued (of one job). ARGV: lease end, now, batch... Each batch still leased gets a
# lease ending no earlier than the lease end; each still queued (received by a worker, waiting
# there for its turn) is marked sent now, so that no reaper takes it for lost. A settled batch is
# in neither, and stays so. Never moved earlier: a follow-up waiting for its retry time keeps it.
_RENEW = """
local lease_end, now = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, #ARGV do
    local leased = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if leased and tonumber(leased) < lease_end then
        redis.call('ZADD', KEYS[1], lease_end, ARGV[i])
    end
    local queued = redis.call('ZSCORE', KEYS[2], ARGV[i])
    if queued and tonumber(queued) < now then
        redis.call('ZADD', KEYS[2], now, ARGV[i])
    end
end
return 1
"""


@dataclass
class JobStatus:
    """Where a job stands. ``total`` is None while it is still being submitted."""

    job: str
    state: str  # "submitting", "running" or "finished"
    total: int
    submitted: int
    done: int
    failed: int
    remaining: int
    created: float
    finished: float
    database: str
    source: str

    @property
    def elapsed(self):
        return (self.finished or time.time()) - self.created

    @property
    def images_per_second(self):
        """Items settled (stored or failed) per second since the job was created."""
        return (self.done + self.failed) / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self):
        return dict(asdict(self), elapsed=round(self.elapsed, 3),
                    images_per_second=round(self.images_per_second, 1))


def redis_client(url=None, patience=30.0):
    """A redis-py client for the broker's Redis (``IMAGE_MATCH_BROKER_URL``) whose commands wait
    up to about ``patience`` seconds for a Redis that is restarting or unreachable."""
    try:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry
    except ImportError:
        raise ImageMatchError(f"jobs need redis-py: {install_command('celery')}") from None
    url = url or settings.get("BROKER_URL")
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ImageMatchError(f"{mask_password(url)}: jobs are kept in Redis; "
                              "IMAGE_MATCH_BROKER_URL must be a redis:// URL")
    cap = 2.0
    return redis.Redis.from_url(
        url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=cap, base=0.1), max(1, int(patience / cap) + 4)),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError])


def _payload(items, attempt, database):
    return json.dumps({"items": items, "attempt": attempt, "database": database},
                      separators=(",", ":"))


def mask_password(url):
    """``url`` with its password, if any, replaced by ``***`` (for messages and job records)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return url


class Jobs:
    """Jobs in one Redis; each method is a round trip or two.

    Parameters
    ----------
    client : redis.Redis, optional
        Default: ``redis_client()`` for ``IMAGE_MATCH_BROKER_URL``.
    ttl : int, optional
        Seconds a job is kept after its last activity (default ``IMAGE_MATCH_RESULT_TTL``).
    """

    def __init__(self, client=None, ttl=None):
        self.client = client if client is not None else redis_client()
        self.ttl = int(ttl if ttl is not None else settings.get("RESULT_TTL")) or 1
        self._finish = self.client.register_script(_FINISH)
        self._start = self.client.register_script(_START)
        self._reap = self.client.register_script(_REAP)
        self._renew = self.client.register_script(_RENEW)

    @staticmethod
    def _keys(job):
        key = _PREFIX + job
        return (key, key + ":done", key + ":failed", key + ":batches", key + ":queued",
                key + ":leased", ACTIVE)

    # --- submitting --------------------------------------------------------------------------

    def create(self, job, database, source):
        keys = self._keys(job)
        now = time.time()
        with self.client.pipeline() as pipe:
            pipe.hset(keys[0], mapping={"created": repr(now), "database": mask_password(database),
                                        "source": source, "submitted": 0})
            pipe.expire(keys[0], self.ttl)
            pipe.zadd(ACTIVE, {job: now})
            pipe.execute()

    def add_batch(self, job, batch, items, database):
        """Record a batch of new items about to be sent (before its message is)."""
        keys = self._keys(job)
        with self.client.pipeline() as pipe:
            pipe.hset(keys[3], batch, _payload(items, 0, database))
            pipe.zadd(keys[4], {batch: time.time()})
            pipe.hincrby(keys[0], "submitted", len(items))
            for key in (*keys[:1], *keys[3:5]):
                pipe.expire(key, self.ttl)
            pipe.execute()

    def add_submitted(self, job, count):
        """``count`` more items were submitted without a batch (lines that hold no item, recorded
        failed with ``finish``)."""
        key = self._keys(job)[0]
        with self.client.pipeline() as pipe:
            pipe.hincrby(key, "submitted", count)
            pipe.expire(key, self.ttl)
            pipe.execute()

    def end_submission(self, job):
        """Every item is submitted: the job's total is what was; returns it."""
        key = self._keys(job)[0]
        total = int(self.client.hget(key, "submitted") or 0)
        self.client.hset(key, "total", total)
        self.finish(job)  # the last outcomes may have arrived before the total
        return total

    # --- working -------------------------------------------------------------------------------

    def start(self, job, batch, lease):
        """A batch's ``{"items", "attempt", "database"}``, now leased for ``lease`` seconds; None if
        it is settled already (a message delivered twice)."""
        keys = self._keys(job)
        payload = self._start(keys=keys[3:6], args=[batch, repr(time.time() + lease)])
        return None if payload is None else json.loads(payload)

    def finish(self, job, batch=None, done=(), failed=None, follow_ups=()):
        """Record a batch's outcomes and drop it, in one step.

        ``done``: the items stored; ``failed``: ``{item: failure dict}``; ``follow_ups``:
        ``[(batch, deadline, items, attempt, database)]``, batches to register as leased until
        ``deadline`` (epoch seconds) before their messages are sent.
        """
        arguments = {
            "ttl": self.ttl, "now": repr(time.time()), "job": job, "batch": batch or "",
            "done": [str(item) for item in done],
            "failed": [[str(item), json.dumps(failure, separators=(",", ":"))]
                       for item, failure in (failed or {}).items()],
            "follow_ups": [[key, repr(deadline), _payload(items, attempt, database)]
                           for key, deadline, items, attempt, database in follow_ups],
        }
        self._finish(keys=self._keys(job), args=[json.dumps(arguments)])

    def unsettled(self, job, items):
        """The items among ``items`` (line numbers) that have no outcome yet, in order."""
        _, done, failed = self._keys(job)[:3]
        with self.client.pipeline(transaction=False) as pipe:
            for item in items:
                pipe.sismember(done, item)
                pipe.hexists(failed, item)
            answers = pipe.execute()
        return [item for item, is_done, has_failed in zip(items, answers[::2], answers[1::2])
                if not is_done and not has_failed]

    def renew(self, held, lease):
        """Renew the leases of the batches a worker holds: ``held`` is ``{job: [batch]}``; each
        still unsettled stays the worker's for ``lease`` more seconds (see ``_RENEW``)."""
        now = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            for job, batches in held.items():
                keys = self._keys(job)
                self._renew(keys=[keys[5], keys[4]], args=[repr(now + lease), repr(now), *batches],
                            client=pipe)
            pipe.execute()

    def announce_worker(self, name, ttl):
        """Say that the worker ``name`` is alive, for ``ttl`` seconds (``workers`` lists it)."""
        now = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(WORKERS, {name: now + ttl})
            pipe.zremrangebyscore(WORKERS, "-inf", now)
            pipe.execute()

    def workers(self):
        """The names of the workers alive (announced within their ttl)."""
        return [name.decode() for name in self.client.zrangebyscore(WORKERS, time.time(), "+inf")]

    def active(self):
        """The ids of the jobs not finished."""
        return [job.decode() for job in self.client.zrange(ACTIVE, 0, -1)]

    def reap(self, job, queue, grace, limit=1000):
        """The batches of ``job`` to send again (see the module's documentation); ``queue`` is the
        broker's list of messages, ``grace`` the seconds a batch may wait to be started once the
        queue is empty."""
        batches = self._reap(keys=[*self._keys(job), queue],
                             args=[job, repr(time.time()), grace, limit])
        return [batch.decode() for batch in batches]

    # --- reading --------------------------------------------------------------------------------

    def status(self, job):
        """The job's ``JobStatus``, or None if there is no such job (or it expired)."""
        key, done, failed = self._keys(job)[:3]
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.scard(done)
            pipe.hlen(failed)
            meta, n_done, n_failed = pipe.execute()
        if not meta:
            return None
        meta = {k.decode(): v.decode() for k, v in meta.items()}
        total = int(meta["total"]) if "total" in meta else None
        submitted = int(meta.get("submitted", 0))
        remaining = (total if total is not None else submitted) - n_done - n_failed
        state = ("submitting" if total is None else "finished" if remaining <= 0 else "running")
        finished = float(meta["finished"]) if "finished" in meta and state == "finished" else None
        return JobStatus(job=job, state=state, total=total, submitted=submitted, done=n_done,
                         failed=n_failed, remaining=max(remaining, 0),
                         created=float(meta.get("created", time.time())), finished=finished,
                         database=meta.get("database", ""), source=meta.get("source", ""))

    def failures(self, job):
        """Every failure as a dict ``{"line", "source", "reason", "status", "attempts"}``, by line."""
        rows = [dict(json.loads(value), line=int(line))
                for line, value in self.client.hscan_iter(self._keys(job)[2])]
        return sorted(rows, key=lambda row: row["line"])
