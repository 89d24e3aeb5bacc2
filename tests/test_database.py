"""fuzz.database against a real redis-server (the ``redis_server`` fixture, conftest.py)."""
from __future__ import annotations

import socket
import time
import uuid

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.extra.redis import RedisExampleDatabase

from fuzz.database import CAMPAIGN_KEY, REDIS_KEY_PREFIX, DatabaseError, open_database


def _unique_key(name: str) -> bytes:
    # One server serves the whole session: keys must not meet across tests or reruns.
    return f"test:{name}:{uuid.uuid4().hex}".encode()


def _raw(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def test_two_machines_share_examples(redis_server, tmp_path):
    key = _unique_key("share")
    first = open_database(redis_server, str(tmp_path / "a"))
    second = open_database(redis_server, str(tmp_path / "b"))
    assert isinstance(first, RedisExampleDatabase) and isinstance(second, RedisExampleDatabase)
    first.save(key, b"\x00failing choices\xff")
    first.save(key, b"another")
    assert set(second.fetch(key)) == {b"\x00failing choices\xff", b"another"}
    # Really in the server, under our prefix, and with an expiry (not forever, not 8 days).
    raw = _raw(redis_server)
    assert raw.smembers(REDIS_KEY_PREFIX + key) == {b"\x00failing choices\xff", b"another"}
    assert 80 * 86400 < raw.ttl(REDIS_KEY_PREFIX + key) <= 90 * 86400
    second.delete(key, b"another")
    assert set(first.fetch(key)) == {b"\x00failing choices\xff"}
    # Nothing under the out directories: the Redis database is the only store.
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_url_without_db_is_db_0(redis_server, tmp_path):
    key = _unique_key("db0")
    assert redis_server.endswith("/0")
    open_database(redis_server[: -len("/0")], str(tmp_path)).save(key, b"v")
    assert set(open_database(redis_server, str(tmp_path)).fetch(key)) == {b"v"}
    # and another db number is another namespace
    other = open_database(redis_server[: -len("/0")] + "/3", str(tmp_path))
    assert set(other.fetch(key)) == set()


def test_default_is_a_directory_under_out(tmp_path):
    out = tmp_path / "findings"
    db = open_database(None, str(out))
    assert isinstance(db, DirectoryBasedExampleDatabase)
    db.save(CAMPAIGN_KEY, b"choices")
    assert (out / ".hypothesis").is_dir()
    assert any(p.is_file() for p in (out / ".hypothesis").rglob("*"))
    assert set(open_database(None, str(out)).fetch(CAMPAIGN_KEY)) == {b"choices"}
    assert set(open_database(None, str(tmp_path / "elsewhere")).fetch(CAMPAIGN_KEY)) == set()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_quick_line(tmp_path):
    port = _free_port()  # nobody listens there once the socket is closed
    url = f"redis://127.0.0.1:{port}/0"
    started = time.monotonic()
    with pytest.raises(DatabaseError) as info:
        open_database(url, str(tmp_path))
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "\n" not in message
    assert message == f"cannot reach Redis at 127.0.0.1:{port} ({url}): Connection refused"


def test_silent_server_times_out(tmp_path, monkeypatch):
    import fuzz.database

    # Listens (the kernel accepts the connection) but never answers PING.  The timeout is
    # shortened (the 2 s of a campaign would be dead time here): what is checked is that the
    # open gives up after the timeout it uses, and says so.
    monkeypatch.setattr(fuzz.database, "REDIS_TIMEOUT", 0.25)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(DatabaseError) as info:
            open_database(f"redis://127.0.0.1:{port}", str(tmp_path))
        assert 0.25 <= time.monotonic() - started < 5
    assert str(info.value) == (f"cannot reach Redis at 127.0.0.1:{port}"
                               f" (redis://127.0.0.1:{port}): no answer within 0.25 s")


def test_db_number_out_of_range(redis_server, tmp_path):
    url = redis_server[: -len("/0")] + "/999"  # redis-server has 16 databases
    with pytest.raises(DatabaseError) as info:
        open_database(url, str(tmp_path))
    where = url[len("redis://"):-len("/999")]
    assert str(info.value) == f"cannot use Redis at {where} ({url}): DB index is out of range"


@pytest.mark.parametrize("spec", [
    "foo", "redis://", "redis://host", "redis://host:", "redis://host:port/0",
    "redis://host:6379/x", "redis://host:0", "redis://host:65536", "http://host:6379/0",
    "redis://user:pw@host:6379/0", " redis://host:6379", "rediss://host:6379",
    "./some/dir",
])
def test_bad_spec(spec, tmp_path):
    with pytest.raises(DatabaseError) as info:
        open_database(spec, str(tmp_path))
    assert str(info.value) == (f"bad --database {spec!r}: expected redis://HOST:PORT[/DB]"
                               " or nothing (a directory under --out)")


# ---- Hypothesis stores a failure under our key, and another run replays it first


def _failing_test(database, key: bytes, calls: list):
    """A fresh @given function each call, as a new process would build it."""

    @settings(database=database, max_examples=300, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.integers(min_value=0, max_value=10**9))
    def check(n):
        calls.append(n)
        assert n < 12345

    # What hypothesis.core's run_engine reads before falling back to the source's digest.
    check._hypothesis_internal_database_key = key
    return check


def test_failure_is_stored_under_our_key_and_replayed_first(redis_server, tmp_path):
    key = _unique_key("replay")
    first_calls: list = []
    with pytest.raises(AssertionError):
        _failing_test(open_database(redis_server, str(tmp_path / "a")), key, first_calls)()
    assert 12345 in first_calls  # shrunk to the boundary
    stored = _raw(redis_server).smembers(REDIS_KEY_PREFIX + key)
    assert stored, "Hypothesis saved nothing under our key"

    # "Another machine": a new connection, a new function object, the same key.
    second_calls: list = []
    with pytest.raises(AssertionError):
        _failing_test(open_database(redis_server, str(tmp_path / "b")), key, second_calls)()
    assert second_calls[0] == 12345, second_calls[:5]

    # Control: under another key nothing is replayed, and the first value is not the failure
    # (so the check above is the database's doing, not generation's luck).
    control_calls: list = []
    with pytest.raises(AssertionError):
        _failing_test(open_database(redis_server, str(tmp_path / "c")), _unique_key("control"),
                      control_calls)()
    assert control_calls[0] != 12345
