"""Shared fixtures.  QEMU tests use the fetched QEMUs (``make test`` fetches them first); a
missing QEMU is a failure, never a skip: a suite that silently skips its real-QEMU half would
pass without testing anything."""
from __future__ import annotations

import pytest

from fuzz.qemufetch import installed, resolve_qemu


def pytest_configure(config):
    """Import every module of the project before any test runs.  Hypothesis draws some values
    from the constants of the project's modules loaded so far; without this, a seeded run's
    draws (what a `--seed` campaign or a derandomized state machine finds, how long its
    shrinking takes) would depend on which tests happened to run earlier in the same process,
    and so on xdist's scheduling."""
    import importlib
    import pkgutil

    import fuzz
    import models

    for package in (fuzz, models):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)


def qemu_binaries(version: str):
    inst = installed(version)
    if inst is None:
        pytest.fail(f"QEMU {version} is not fetched: run `blockfuzz qemu fetch {version}` (make test does)")
    return resolve_qemu(str(inst.binary("system")))


@pytest.fixture(scope="session", params=["10.0", "7.2", "11.1"])
def any_qemu(request):
    return qemu_binaries(request.param)


@pytest.fixture(scope="session")
def qemu10():
    return qemu_binaries("10.0")


# --------------------------------------------------------------------------------------------
# A real Redis server (the shared example database, fuzz/database.py)


def _free_loopback_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """``redis://127.0.0.1:PORT/0`` of a real redis-server (the one ``make tools`` fetches),
    started for the session on a free loopback port, without persistence, and stopped at the
    end.  Not fetched is a failure, not a skip: the database tests must test something."""
    import subprocess
    import time

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from fuzz.toolfetch import ToolNotFetched, redis_server_path

    try:
        binary = redis_server_path()
    except ToolNotFetched as e:
        pytest.fail(str(e))
    directory = tmp_path_factory.mktemp("redis")
    log = directory / "redis.log"
    # The port is free when asked, but another process may take it before redis binds it:
    # then redis exits at once, and another port is tried.
    for _attempt in range(5):
        port = _free_loopback_port()
        proc = subprocess.Popen(
            [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory), "--logfile", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1,
                             socket_connect_timeout=1)
        answered, deadline = False, time.monotonic() + 20
        while not answered and proc.poll() is None and time.monotonic() < deadline:
            try:
                answered = client.ping()
            except redis.RedisError:
                time.sleep(0.05)
        client.close()
        if answered:
            break
        proc.kill()
        proc.wait()
    else:
        tail = log.read_text().strip().splitlines()[-3:] if log.exists() else []
        pytest.fail(f"{binary} did not answer PING on a loopback port: {' | '.join(tail)}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"redis-server (pid {proc.pid}) ignored SIGTERM for 10 s")
        # Gone means nobody answers on its port any more.
        probe = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1,
                            socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
        try:
            probe.ping()
        except redis.ConnectionError:
            pass
        else:
            pytest.fail(f"something still answers PING on 127.0.0.1:{port} after redis-server stopped")
        finally:
            probe.close()


#: fixtures that start or need a real QEMU (or a real service): a test using one, directly
#: or through another fixture, is a `qemu` test, so `make check` (-m "not qemu") leaves it out
_REAL_FIXTURES = {"any_qemu", "qemu10", "qemu11", "binaries", "qemu", "pair", "eleven_oh",
                  "unknown_11_1", "redis_server", "dot"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _REAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.qemu)
