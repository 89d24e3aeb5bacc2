"""The example database of fuzz campaigns: where Hypothesis keeps the failures it found.

A Hypothesis example database maps a key (bytes) to a set of values (bytes); each value is the
choice sequence of one test case.  Hypothesis saves every failing case it finds (and its
shrunk forms, under secondary keys derived from the primary one) and, on the next run with the
same key, *replays the stored ones first*, before generating anything new.  So a campaign that
found a bug finds it again at once on the next run, here or on any machine sharing the
database, until the bug is fixed (a replayed case that passes is deleted).

Two kinds, chosen by ``--database``:

* nothing (the default): a directory, ``<--out>/.hypothesis``
  (:class:`hypothesis.database.DirectoryBasedExampleDatabase`), private to that output
  directory;
* ``redis://HOST:PORT[/DB]``: a shared Redis server
  (:class:`hypothesis.extra.redis.RedisExampleDatabase`), so that machines share and replay
  each other's failures.  Checked with a PING when opened (2 s timeouts), so an unreachable
  server is one clear error at start-up rather than a traceback in the middle of a campaign.

Why the key is ours (:data:`CAMPAIGN_KEY`): by default Hypothesis keys a test's examples by a
sha384 digest of the test function's *source*, so any edit to the state machine would orphan
every stored failure: still in the database, never replayed again.  The campaign instead sets
``test._hypothesis_internal_database_key = CAMPAIGN_KEY`` on the ``@given``-wrapped function
(what ``hypothesis.core`` reads, before falling back to the digest), so failures survive edits.
A stored choice sequence that no longer fits the edited state machine is harmless: Hypothesis
replays it as far as it goes, and drops it when it no longer fails.  Bump the ``v1`` only when
old failures should be forgotten on purpose.

Stored examples expire from Redis after :data:`REDIS_EXPIRE_AFTER` without being read or
written (every run's replay refreshes them); Hypothesis' own default, 8 days, would lose a
shared failure over a long holiday.
"""
from __future__ import annotations

import os
import re
from datetime import timedelta

from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

from .errors import DatabaseError

__all__ = ["CAMPAIGN_KEY", "DatabaseError", "REDIS_EXPIRE_AFTER", "REDIS_KEY_PREFIX",
           "REDIS_TIMEOUT", "open_database"]

# The database key of fuzz campaigns (see the module docstring).
CAMPAIGN_KEY = b"blockfuzz:campaign:v1"
# Prefix of every Redis key we write: a shared server may hold other programs' data.
REDIS_KEY_PREFIX = b"blockfuzz-examples:"
REDIS_EXPIRE_AFTER = timedelta(days=90)
# Seconds for connecting and for each command: a server that stopped answering fails the
# campaign in seconds, instead of hanging it.
REDIS_TIMEOUT = 2.0

_URL_RE = re.compile(
    r"redis://(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>[0-9]{1,5})"
    r"(?:/(?P<db>[0-9]{1,5})?)?"
)


def open_database(spec: str | None, out_dir: str | os.PathLike) -> ExampleDatabase:
    """The example database named by ``spec`` (``--database``); see the module docstring.

    ``None`` (or "") is a directory under ``out_dir``; ``redis://HOST:PORT[/DB]`` (DB defaults
    to 0) a Redis server, which must answer PING.  Raises :class:`DatabaseError`.
    """
    if not spec:
        return DirectoryBasedExampleDatabase(os.path.join(os.fspath(out_dir), ".hypothesis"))
    m = _URL_RE.fullmatch(spec)
    if m is None or not 0 < int(m["port"]) < 65536:
        raise DatabaseError(
            f"bad --database {spec!r}: expected redis://HOST:PORT[/DB] or nothing"
            " (a directory under --out)")
    host = m["ipv6"] or m["host"]
    port = int(m["port"])
    db = int(m["db"] or 0)
    where = f"[{host}]:{port}" if m["ipv6"] else f"{host}:{port}"
    # Imported here: only a Redis database needs the client.
    import redis
    from hypothesis.extra.redis import RedisExampleDatabase

    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options = dict(host=host, port=port, db=db, socket_timeout=REDIS_TIMEOUT,
                   socket_connect_timeout=REDIS_TIMEOUT)
    # The probe does not retry: redis-py's default (3 retries, backoff) would make an
    # unreachable server take many seconds to report.  The campaign's client keeps them, for a
    # network that drops a connection now and then.
    probe = redis.Redis(**options, retry=Retry(NoBackoff(), 0))
    try:
        probe.ping()  # connecting also SELECTs the db: an out-of-range one fails here
    except redis.TimeoutError:
        raise DatabaseError(f"cannot reach Redis at {where} ({spec}):"
                            f" no answer within {REDIS_TIMEOUT:g} s") from None
    except redis.ResponseError as e:  # reached, but it refuses (NOAUTH, no such db, ...)
        raise DatabaseError(f"cannot use Redis at {where} ({spec}): {_reason(e)}") from None
    except redis.RedisError as e:
        raise DatabaseError(f"cannot reach Redis at {where} ({spec}): {_reason(e)}") from None
    finally:
        probe.close()
    client = redis.Redis(**options)
    return RedisExampleDatabase(client, expire_after=REDIS_EXPIRE_AFTER, key_prefix=REDIS_KEY_PREFIX)


def _reason(error: BaseException) -> str:
    """The cause of a redis-py error in a few words: the OS error's text when there is one
    (redis-py wraps it as "Error 111 connecting to host:port. Connection refused."), else the
    server's reply (e.g. "NOAUTH Authentication required")."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, TimeoutError):  # socket.timeout, under redis-py's wrapper
            return f"no answer within {REDIS_TIMEOUT:g} s"
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(error).split()) or type(error).__name__
    return text.rstrip(".")
