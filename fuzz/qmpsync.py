"""A synchronous QMP client over a blocking socket: the fuzzer's hot path.

The fuzzer is synchronous (Hypothesis drives it step by step), and a checked step is one to
three QMP round trips, so their cost bounds the steps per second::

    import socket
    a, b = socket.socketpair()          # hand ``b`` to QEMU as -chardev socket,fd=N
    with QmpSync() as qmp:
        qmp.connect(a, timeout=5)       # or a path to a unix socket QEMU listens on
        qmp.cmd("query-version")        # -> {"return": {...}}
        qmp.cmd("blockdev-del", {"node-name": "nope"})
        # -> {"error": {"class": "GenericError",
        #               "desc": "Failed to find node with node-name='nope'"}}
        qmp.cmds([("blockdev-del", {"node-name": "x"}), ("query-named-block-nodes", None)])
        # -> both replies; the commands went out in one write (pipelined)
        qmp.drain_events()              # -> [{"event": ..., "data": ..., "timestamp": ...}, ...]

Failures of the *transport* are exceptions, failures of a *command* are values:

* an error reply is returned as ``{"error": {...}}``, exactly as QEMU sent it;
* :class:`QmpTimeout` (a ``TimeoutError``): no reply within the timeout (QEMU hung);
* :class:`QmpGone` (a ``ConnectionError``): the connection is closed (QEMU died).

(Both are :class:`fuzz.errors.QmpTransportError`s; the tree of all exceptions is ``fuzz.errors``.)

Events are collected as they arrive (while any call reads the socket) and handed out by
:meth:`QmpSync.drain_events`, which can also wait for the next one (block jobs).

The protocol (docs/interop/qmp-spec.rst): the server greets with ``{"QMP": {...}}``, the client
sends ``qmp_capabilities``, then each line is one JSON object, a reply (``return`` or ``error``,
with the ``id`` the command carried, if it carried one) or an event (``event``).  Without
out-of-band execution, which the harness never enables, QEMU answers every command, exactly
once and in the order they came ("The order of commands is preserved", qmp-spec.rst; the
monitor takes the next request only when the previous one is done, ``handle_qmp_command()``).
So commands go out without an ``id`` and the n-th reply is the n-th command's: every byte
costs QEMU CPU (:meth:`QmpSync.send`), and an id was about a tenth of them.  A reply whose
command timed out still arrives in its turn, and is dropped then.  Commands are JSON objects
written by ``json.dumps`` (finite numbers, escaped strings), so QEMU's JSON streamer never
fails on one and answers each with one reply; one it cannot parse as a command still gets
one error reply.

Why not qemu.qmp's asyncio ``QMPClient`` here (it was used up to 2026-12-02, and the exported
reproducer scripts still use it): measured on this machine against QEMU 11.1.3 (-M none, one
qcow2 chain open), one ``query-jobs`` round trip cost 0.36 ms of the fuzzer's CPU through the
client and its private event loop (about ten loop iterations and two tasks per call) against
0.04 ms over a blocking socket; a ``query-named-block-nodes``, 0.58 ms against 0.04 ms.  With
two to three round trips per checked step that was a third of the fuzzer's CPU per step.
(``qemu.qmp.legacy`` runs the same asyncio client, and is GPL-2.0-only.)
"""
from __future__ import annotations

import itertools
import json
import select
import socket
import time
from typing import Any, Iterable, Mapping

from fuzz.errors import HarnessError, QmpGone, QmpTimeout, QmpTransportError

__all__ = ["QmpSync", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 5.0

_RECV = 1 << 16

#: at most this many distinct memoised replies are kept (QmpSync memo); then they start over
_MEMO_MAX = 256
_MISS = object()

#: QEMU's JSON streamer (qobject/json-streamer.c) reports an error halfway through a message
#: of more than MAX_TOKEN_COUNT tokens and parses the rest as new input, so such a command
#: could get several replies: it is refused before it goes out (a token takes at least a
#: byte).  The streamer's other limit, MAX_NESTING (1024 levels), is out of reach: json.dumps
#: stops at Python's recursion limit (1000) first.
_MAX_TOKENS = 2 << 20


class QmpSync:
    """One QMP connection driven synchronously. Not thread-safe; one instance per QEMU."""

    def __init__(self, default_timeout: float = DEFAULT_TIMEOUT, memo: Iterable[str] = ()):
        """``memo``: commands whose ``return`` values are memoised by their bytes.  A reply
        whose bytes equal an earlier one's is not decoded again: it gets
        the very same decoded value, so callers can tell "unchanged" by identity (the graph
        query after a failed command: ``fuzz.qemu.QemuProcess.query_nodes``).  Callers must
        not modify such a value."""
        self.default_timeout = default_timeout
        self.memo_commands = frozenset(memo)
        self._memo_ids: set[int] = set()    # numbers of memo_commands sent, reply not yet read
        self._memo: dict[bytes, Any] = {}   # reply bytes -> decoded return
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._scanned = 0            # no newline in _buf[:_scanned]
        self._events: list[dict] = []
        self._kept: list[dict] = []  # events take_events() left for drain_events()
        self._ids = itertools.count(1)   # command numbers: the n-th command gets the n-th reply
        self._replied = 0                # replies received so far
        self._closed = False
        self._eof: BaseException | None = None   # why the peer is gone, once it is

    # -- lifecycle ---------------------------------------------------------------------------

    def connect(self, address: str | socket.socket, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Connect to a unix socket path (or take an already connected socket) and negotiate.

        Raises :class:`QmpTimeout` if no greeting arrives in time, :class:`QmpGone` if the peer
        closes the connection first (typically: QEMU exited during start-up) or the path
        cannot be connected to (``cause`` is the ``OSError``).
        """
        if self._closed:
            raise QmpGone(None, RuntimeError("QmpSync is closed"))
        if isinstance(address, socket.socket):
            sock = address
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(address)
            except OSError as e:
                sock.close()
                raise QmpGone(None, e) from e
        sock.setblocking(True)
        self._sock = sock
        deadline = time.monotonic() + timeout
        greeting = self._next_message(None, deadline, timeout)
        if "QMP" not in greeting:
            raise QmpGone(None, ValueError(f"not a QMP greeting: {greeting!r:.200}"))
        reply = self._exchange([("qmp_capabilities", None)], timeout)[0]
        if isinstance(reply, BaseException):
            raise reply
        if "error" in reply:
            raise QmpGone(None, ValueError(f"qmp_capabilities failed: {reply['error']}"))

    def close(self) -> None:
        """Close the connection. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass

    def __enter__(self) -> "QmpSync":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- commands ----------------------------------------------------------------------------

    def cmd(self, name: str, args: Mapping[str, Any] | None = None,
            timeout: float | None = None) -> dict:
        """Run one command; return ``{"return": value}`` or ``{"error": {"class", "desc"}}``.

        Arguments keep their order on the wire (QEMU's option parsing is order sensitive in a
        few places). ``args=None`` or ``{}`` sends no ``arguments`` member.
        """
        reply = self.cmds([(name, args)], timeout)[0]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def cmds(self, calls: Iterable[tuple[str, Mapping[str, Any] | None]],
             timeout: float | None = None) -> list[dict | QmpTransportError]:
        """Send ``calls`` in one write and collect their replies in order: one wait instead of
        one per command (QEMU still runs them one after the other).  Each reply gets the whole
        timeout, as separate calls would.  Where the transport fails, that reply and all after
        it are the :class:`QmpTimeout` / :class:`QmpGone` (returned, not raised), so that a
        caller can tell the command that hung from the query behind it."""
        limit = self.default_timeout if timeout is None else timeout
        return self._exchange(list(calls), limit)

    # -- events ------------------------------------------------------------------------------

    def drain_events(self, wait: float = 0.0) -> list[dict]:
        """Return (and forget) all events received so far, oldest first, as plain dicts.

        Input that already arrived on the socket is processed first. With ``wait > 0`` and no
        event pending, block up to ``wait`` seconds for the next one (returns ``[]`` on
        timeout). Events that precede a command's reply are always collected by :meth:`cmd`.
        """
        self._read_available()
        if not self._events and not self._kept and wait > 0:
            deadline = time.monotonic() + wait
            while not self._events and self._eof is None and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0 or not self._wait_readable(left):
                    break
                self._fill(None)
                self._parse_lines({})
        out, self._kept, self._events = self._kept + self._events, [], []
        return out

    def take_events(self, names: frozenset[str] | set[str]) -> list[dict]:
        """The events named ``names`` already received, oldest first, without reading the
        socket again: right after a command, every event QEMU emitted before its reply is here
        (:meth:`cmd`).  Other events stay for :meth:`drain_events`."""
        got, self._events = self._events, []
        self._kept += [e for e in got if e.get("event") not in names]
        return [e for e in got if e.get("event") in names]

    # -- internals ---------------------------------------------------------------------------

    def send(self, calls: Iterable[tuple[str, Mapping[str, Any] | None]]) -> list[tuple[int, str]]:
        """The first half of :meth:`cmds`: write the commands, return what :meth:`receive`
        needs (their ids and names).  A send that fails raises :class:`QmpGone`.

        The wire is compact JSON without ids or newlines because QEMU pays for every byte:
        its QMP monitor reads one byte per main-loop iteration of its I/O thread
        (``monitor_can_read()`` returns 1, so ``tcp_chr_read()`` reads one), about 4 µs of
        QEMU's CPU per byte on this machine (11.1.3, ``bench/qmp_cost_bench.py``); perf put
        that thread at 70 % of QEMU's CPU in a campaign.  QEMU's JSON streamer ends a message
        at its closing brace, so no delimiter is needed.  A campaign sends about 225 bytes
        per checked step; the ids and newlines were 40 of them."""
        calls = list(calls)
        sent = [(next(self._ids), name) for name, _args in calls]
        if self.memo_commands:
            self._memo_ids.update(i for i, name in sent if name in self.memo_commands)
        wire = bytearray()
        for name, args in calls:
            msg: dict = {"execute": name}
            if args:
                msg["arguments"] = args
            data = json.dumps(msg, separators=(",", ":")).encode()
            if len(data) >= _MAX_TOKENS:
                raise HarnessError(f"{name}: a command of {len(data)} bytes may pass QEMU's "
                                   f"JSON limit of {_MAX_TOKENS} tokens; refused")
            wire += data
        if calls:
            self._send(bytes(wire), calls[0][0])
        return sent

    def receive(self, sent: list[tuple[int, str]], timeout: float | None = None
                ) -> list[dict | QmpTransportError]:
        """The second half of :meth:`cmds`: the replies to what :meth:`send` wrote."""
        limit = self.default_timeout if timeout is None else timeout
        replies: dict[Any, dict] = {}
        out: list[dict | QmpTransportError] = []
        for i, name in sent:
            try:
                out.append(self._reply(i, name, replies, time.monotonic() + limit, limit))
            except QmpTransportError as e:
                return out + [e] * (len(sent) - len(out))
        return out

    def _exchange(self, calls: list[tuple[str, Mapping[str, Any] | None]], limit: float
                  ) -> list[dict | QmpTransportError]:
        try:
            sent = self.send(calls)
        except QmpTransportError as e:
            return [e] * len(calls)
        return self.receive(sent, limit)

    def _send(self, data: bytes, command: str) -> None:
        if self._closed or self._sock is None:
            raise QmpGone(command, RuntimeError("QmpSync is closed"))
        if self._eof is not None:
            raise QmpGone(command, self._eof)
        try:
            self._sock.sendall(data)
        except OSError as e:   # EPIPE, ECONNRESET: the peer is gone
            self._eof = e
            raise QmpGone(command, e) from e

    def _reply(self, want: int, command: str, replies: dict[Any, dict], deadline: float,
               limit: float) -> dict:
        """The reply to command number ``want``, reading (and collecting events) until it is
        there."""
        while want not in replies:
            if not self._parse_lines(replies):
                self._fill_until(deadline, command, limit)
        msg = replies.pop(want)
        if "error" in msg:
            return {"error": dict(msg["error"])}
        return {"return": msg.get("return")}

    def _next_message(self, command: str | None, deadline: float, limit: float) -> dict:
        """The next whole message, whatever it is (the greeting)."""
        while True:
            line = self._take_line()
            if line is not None:
                return line
            self._fill_until(deadline, command, limit)

    def _take_raw(self) -> bytes | None:
        """The next whole line of the buffer, or None."""
        nl = self._buf.find(b"\n", self._scanned)
        if nl < 0:
            self._scanned = len(self._buf)
            return None
        raw = bytes(self._buf[:nl + 1])
        del self._buf[:nl + 1]
        self._scanned = 0
        return raw

    def _take_line(self) -> dict | None:
        raw = self._take_raw()
        return None if raw is None else self._decode(raw)

    def _decode(self, raw: bytes) -> dict:
        try:
            msg = json.loads(raw)
        except ValueError as e:
            self._eof = e
            raise QmpGone(None, ValueError(f"malformed QMP message: {raw[:200]!r}")) from e
        if not isinstance(msg, dict):
            self._eof = ValueError("not a JSON object")
            raise QmpGone(None, ValueError(f"malformed QMP message: {raw[:200]!r}"))
        return msg

    def _memoised(self, raw: bytes) -> dict:
        """A reply to a ``memo`` command: from the memo, or decoded into it."""
        ret = self._memo.get(raw, _MISS)
        if ret is not _MISS:
            return {"return": ret}
        msg = self._decode(raw)
        if msg.keys() == {"return"}:
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[raw] = msg["return"]
        return msg

    def _parse_lines(self, replies: dict[Any, dict]) -> bool:
        """Move every whole line of the buffer to the events or ``replies`` (by command
        number); True if any.  A reply nobody waits for any more (its command timed out) is
        dropped."""
        got = False
        while (raw := self._take_raw()) is not None:
            got = True
            n = self._replied + 1
            # (a reply of QEMU's without an id is {"return": ...} or {"error": ...}; an event
            # starts with its timestamp)
            msg = self._memoised(raw) if n in self._memo_ids and raw.startswith(b'{"return": ') \
                else self._decode(raw)
            if "event" in msg:
                self._events.append(msg)
            elif "return" in msg or "error" in msg:
                self._replied = n
                self._memo_ids.discard(n)
                replies[n] = msg
        return got

    def _fill_until(self, deadline: float, command: str | None, limit: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not self._wait_readable(left):
            raise QmpTimeout(command, limit)
        self._fill(command)

    def _wait_readable(self, timeout: float) -> bool:
        assert self._sock is not None
        r, _, _ = select.select([self._sock], [], [], timeout)
        return bool(r)

    def _fill(self, command: str | None) -> None:
        """One ``recv()`` into the buffer (the socket is readable); EOF is :class:`QmpGone`."""
        if self._closed or self._sock is None:
            raise QmpGone(command, RuntimeError("QmpSync is closed"))
        if self._eof is not None:
            raise QmpGone(command, self._eof)
        try:
            data = self._sock.recv(_RECV)
        except OSError as e:
            self._eof = e
            raise QmpGone(command, e) from e
        if not data:
            self._eof = EOFError("end of stream")
            raise QmpGone(command, self._eof)
        self._buf += data

    def _read_available(self) -> None:
        """Take in whatever already sits in the socket buffer, without blocking."""
        if self._closed or self._sock is None or self._eof is not None:
            return
        try:
            while self._wait_readable(0):
                self._fill(None)
        except QmpGone:
            pass   # the next command reports it
        try:
            self._parse_lines({})
        except QmpGone:
            pass

