"""Guards against QEMU bugs that ``corpus/findings`` already documents.

A campaign that ran into a known crash or hang again and again would find nothing else, so
while ``Graph.guard_known_crashes`` is on (campaigns; replay leaves it off and lets QEMU show
the bug) the semantics call ``Graph.guard(point, ...)`` where a known bug strikes, and the guard
of that point refuses the command with ``KnownQemuBug``.  The semantics read without these:
each point is one line in them, and everything about the bugs is here.

Effects of QEMU bugs that replay must predict (a node left drained, ``Graph.stuck``; a qcow2
node whose ``s->data_file`` dangles, ``Graph.dangling_data_file``) are state of the model, not
guards; the guards below refuse what would run into them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import lengths
from .errors import KnownQemuBug
from .graph import Graph, Node
from .jobs import Job, active_commit_nodes, job_nodes
from .reopen import _Entry


def attach_file(g: Graph, parent: Node, child: Node) -> None:
    """QEMU bug (7.2 and 10.0): ``throttle_open()`` attaches its file child before it joins
    its group; the attach moves the new node into the child's iothread and
    ``throttle_attach_aio_context()`` dereferences the missing group: SIGSEGV
    (corpus/findings/throttle-over-iothread-node-segv.json)."""
    if parent.drv == "throttle" and child.ctx != "main":
        raise KnownQemuBug("known QEMU crash: a throttle node over a node in an iothread")


def qcow2_header_read(g: Graph, file: Node) -> None:
    """Reading a qcow2 header through a node a known 10.0 bug left drained never ends."""
    if g.reaches_stuck(file):
        raise KnownQemuBug("known QEMU hang: qcow2 header read through a drained node")


def qcow2_open_failed(g: Graph, file: Node) -> None:
    """QEMU bug (7.2 SIGABRT in qemu_mutex_unlock_impl, 10.0 a hang most of the time, 11.1
    SIGABRT in bdrv_drain_all_end): a qcow2 open that fails over a child in an iothread
    (corpus/findings/qcow2-failed-open-over-iothread-node-abort.json)."""
    if file.ctx != "main":
        raise KnownQemuBug("known QEMU crash: a failing qcow2 open over a node in an iothread")


def qcow2_open_read_only(g: Graph, file: Node) -> None:
    """QEMU 7.2 bug, the same abort as a failing open (``qemu_mutex_unlock_impl: Operation
    not permitted``): a read-only qcow2 open over a child in an iothread, even one that
    succeeds (VersionProfile.qcow2_read_only_open_over_iothread_aborts; a 150 s 7.2 campaign
    and the 5-step trace of 2026-12-02 in corpus/findings/README.md)."""
    if g.qemu_profile.qcow2_read_only_open_over_iothread_aborts and file.ctx != "main":
        raise KnownQemuBug("known QEMU crash: a read-only qcow2 open over a node in an iothread")


def reopen_start(g: Graph) -> None:
    """Draining a node drains its parents too: a job on any ancestor of a node a known bug
    left drained stalls (VersionProfile.reopen_duplicate_drain_leak).  Checked when a reopen
    starts, when ``qmp_blockdev_reopen()`` fails while it still queues (its ``fail`` path
    ends one drain per entry, so a node queued twice stays drained), and when it is done: a reopen that gives a job's node a drained child
    stalls the job just the same (10.0.2: ``jobs never settled: job0=standby``, a 600 s
    campaign, 13 steps)."""
    if g.stuck and g.jobs and any(g.reaches_stuck(g.nodes[n]) for j in g.jobs.values()
                                  for n in job_nodes(g, j) if n in g.nodes):
        raise KnownQemuBug("known QEMU bug: the reopen leaves a job's node drained; the job "
                           "never settles (VersionProfile.reopen_duplicate_drain_leak)")


def reopen_prepared(g: Graph, entry: _Entry, later: set[str]) -> None:
    """QEMU 7.2 aborts when a reopen detaches a node that a later entry of the same queue
    reopens (VersionProfile.reopen_detached_entry_asserts;
    corpus/findings/qemu72-reopen-detached-entry-abort.json)."""
    if g.qemu_profile.reopen_detached_entry_asserts and {entry.old_backing, entry.old_file} & later:
        raise KnownQemuBug("known QEMU 7.2 abort: the reopen detaches a node that a later "
                           "entry of the same queue reopens")


def reopen_closed(g: Graph, closed: set[str], queued: set[str]) -> None:
    """QEMU (7.2, 10.0, 11.1) crashes with SIGSEGV when the queue entry of a node that the
    reopen itself closes is used after the node was freed
    (corpus/findings/reopen-closes-queued-node-segv.json)."""
    if closed & queued:
        raise KnownQemuBug("known QEMU crash: the reopen closes a node that is in its own queue")


def reopen_dangling(g: Graph, queued: set[str]) -> None:
    """A reopen flushes each node first, and qcow2's flush flushes ``s->data_file->bs`` too:
    with the data_file left dangling by the known bug (``Graph.dangling_data_file``) that is
    the freed BdrvChild again.  Seen as undefined state, not yet as a crash: after
    blockdev-snapshot (whose commit reopens the old node read-only) 7.2.22, 10.0.2 and 11.1.3
    all stop reporting ``data-file-raw`` for the node (a 600 s 10.0.2 campaign, 10 steps)."""
    if queued & g.dangling_data_file:
        raise KnownQemuBug("known QEMU bug: reopening a qcow2 node with a dangling data_file")


def close_node(g: Graph, node: Node) -> None:
    """Closing a qcow2 node whose ``s->data_file`` dangles unrefs a freed BdrvChild: QEMU dies
    with SIGSEGV or corrupts a neighbour, whichever command closes it
    (corpus/findings/qcow2-dangling-data-file-close-corrupts-neighbour.json)."""
    if node.name in g.dangling_data_file:
        raise KnownQemuBug("known QEMU crash: closing a qcow2 node with a dangling data_file")


def device_add(g: Graph, node: Node) -> None:
    """A disk on a node a known bug left drained hangs ``device_add``; so does one on a
    pending active commit's source: the disk reads its first sector, as qemu-io would
    (corpus/findings/active-commit-pending-qemu-io-hang.json; seen on 7.2, 10.0 and 11.1)."""
    if g.reaches_stuck(node):
        raise KnownQemuBug("known QEMU bug: a disk on a node left drained hangs device_add")
    qemu_io_active_commit(g, node, active_commit_nodes(g))


def job_start(g: Graph, nodes: Iterable[Node]) -> None:
    """A job on a node a known QEMU bug left drained never leaves 'paused'
    (VersionProfile.reopen_duplicate_drain_leak)."""
    if any(g.reaches_stuck(n) for n in nodes):
        raise KnownQemuBug("known QEMU bug: a job on a node left drained never runs")


_CONCLUDED_STREAM = "known QEMU crash: a concluded stream job's filter crashes the next query"


def _concluded_stream_crashes(g: Graph) -> bool:
    """QEMU bug (7.2 and 10.0): a stream job left concluded (auto-dismiss off) keeps its
    childless copy-on-read filter in the graph, and the next query-named-block-nodes dies with
    SIGSEGV in bdrv_refresh_filename() (corpus/findings/stream-concluded-query-segv.json)."""
    return not g.qemu_profile.dropped_filter_keeps_child


def stream_start(g: Graph, args: dict, checked: bool) -> None:
    """Before the model's own limits (``checked=False``: only where the model declines
    anyway, with iothreads or disks) and after the stream's own checks (``checked=True``): a
    stream that will be left concluded crashes the next query."""
    if args.get("auto-dismiss") is False and _concluded_stream_crashes(g):
        from_iothreads = any(n.ctx != "main" for n in g.nodes.values()) or bool(g.devices)
        if checked or from_iothreads:
            raise KnownQemuBug(_CONCLUDED_STREAM)


def _stream_left_concluded(g: Graph, job: Job) -> None:
    if job.type == "stream" and not job.auto_dismiss and _concluded_stream_crashes(g):
        raise KnownQemuBug(_CONCLUDED_STREAM)


def active_commit_start(g: Graph, device: Node, active: bool) -> None:
    """QEMU bug (10.0.2, 11.1.3; not 7.2.22): the active commit of a compress node never
    answers (VersionProfile.compress_active_commit_hangs;
    corpus/findings/past-model/compress-active-commit-hang.json)."""
    if active and g.qemu_profile.compress_active_commit_hangs and device.drv == "compress":
        raise KnownQemuBug("known QEMU hang: an active commit of a compress node")


def append(g: Graph, top: Node) -> None:
    """QEMU bug (10.0.2, 10.2.2, 11.1.3): ``bdrv_append()`` onto a compress node deadlocks in
    ``compress_refresh_limits()`` (VersionProfile.compress_append_hangs;
    corpus/findings/compress-append-refresh-limits-deadlock.json)."""
    if g.qemu_profile.compress_append_hangs and top.drv == "compress":
        raise KnownQemuBug("known QEMU hang: bdrv_append() onto a compress node")


def qcow2_create(g: Graph, file: Node) -> None:
    """QEMU bug (7.2 SIGABRT, 10.0 a hang half the time): blockdev-create of qcow2 over a file
    node in an iothread (VersionProfile.qcow2_create_over_iothread_fails;
    corpus/findings/qcow2-create-over-iothread-node.json)."""
    if g.qemu_profile.qcow2_create_over_iothread_fails and file.ctx != "main":
        raise KnownQemuBug("known QEMU crash or hang: a qcow2 create over a node in an iothread")
    if g.reaches_stuck(file):
        # its writes wait for a drain a known 10.0 bug never ends
        # (VersionProfile.reopen_duplicate_drain_leak; found again by the final 10.0.2 campaign)
        raise KnownQemuBug("known QEMU hang: a qcow2 create over a node left drained")


def truncate(g: Graph, node: Node, size: int) -> None:
    """QEMU bug (7.2, 10.0, 11.1): a resize through blkverify refreshes its length from the
    test child, which did not grow, and ``bdrv_co_write_req_finish()`` then gets a negative
    offset once the new size is more than twice that length: SIGABRT in
    ``bdrv_check_qiov_request()`` (corpus/findings/blkverify-resize-negative-offset-abort.json)."""
    if node.drv == "blkverify" and size > 2 * lengths.node_length(g, node):
        raise KnownQemuBug("known QEMU crash: a blkverify resize to more than twice its length")


def write_past_child_end(g: Graph, parent: Node, child: Node) -> None:
    """QEMU bug (7.2, 10.0, 10.2, 11.1; 7.2's raw re-reads its child's length, its filters do
    not): a node whose cached length is behind a child that a reopen shrank or moved onto a
    shorter file passes a write on past the child's end without holding RESIZE on it:
    SIGABRT ``bdrv_co_write_req_prepare: Assertion `offset + bytes <= bs->total_sectors *
    BDRV_SECTOR_SIZE || child->perm & BLK_PERM_RESIZE'``
    (corpus/findings/raw-parent-stale-length-write-abort.json)."""
    raise KnownQemuBug(f"known QEMU crash: a write past the end of '{child.name}' through "
                       f"'{parent.name}', whose cached length is behind it")


def job_filter_orphaned(g: Graph, node: Node) -> None:
    """QEMU bug (7.2, 10.0, 11.1): a reopen that takes a job filter's only parent link away
    (a non-active commit's overlay given ``backing: null``) closes the filter, whose child
    link the job froze: SIGABRT ``bdrv_replace_child_noperm: Assertion '!child->frozen'``
    (corpus/findings/reopen-drops-commit-filter-frozen-abort.json)."""
    if g.jobs:
        raise KnownQemuBug("known QEMU crash: a reopen drops a job filter's last parent")


def qemu_io_active_commit(g: Graph, node: Node, jobs: dict[str, Job]) -> None:
    """QEMU bug (7.2 and 10.0): qemu-io on an active commit's source while the job is pending
    never returns (corpus/findings/active-commit-pending-qemu-io-hang.json)."""
    src = {j.device for j in jobs.values() if j.status == "pending"}
    if src and g.reaches(node, lambda n: n.name in src):
        raise KnownQemuBug("known QEMU hang: qemu-io on an active commit's source in pending")


def child_change(g: Graph, parent: Node, removing: bool) -> None:
    """QEMU bug (7.2): x-blockdev-change on a quorum in an iothread aborts when it removes a
    child or fails to attach one (VersionProfile.quorum_iothread_child_change_aborts;
    corpus/findings/qemu72-quorum-iothread-child-change-abort.json)."""
    if g.qemu_profile.quorum_iothread_child_change_aborts and parent.ctx != "main":
        raise KnownQemuBug("known QEMU crash: x-blockdev-change on a quorum in an iothread "
                           + ("removing a child" if removing else "whose attach fails"))


def qemu_io_read(g: Graph, node: Node) -> None:
    """QEMU bug (7.2, 10.0, 11.1): a read that reaches a stream job's copy-on-read filter over
    a node without a backing file (a pending stream of such a node, or 11.1's concluded one
    that keeps its filter) calls ``bdrv_co_is_allocated_above()`` on
    ``bdrv_backing_chain_next()``, which is NULL: SIGSEGV
    (corpus/findings/stream-filter-read-without-backing-segv.json)."""
    def crashes(n: Node) -> bool:
        if n.drv != "copy-on-read" or "bottom" not in n.options:
            return False
        c = n.child("file")
        return c is not None and g.cow_child(g.nodes[c.child]) is None

    if g.reaches(node, crashes):
        raise KnownQemuBug("known QEMU crash: a read through a stream's filter over a node "
                           "without a backing file")


def qemu_io_zero_write_past_end(g: Graph, node: Node) -> None:
    """QEMU 7.2 bug: qemu-io ``write -z`` past the end of a node in an iothread fails an
    assertion in ``aio_poll()`` (``in_aio_context_home_thread``): SIGABRT
    (VersionProfile.qemu_io_zero_write_past_end_in_iothread_aborts)."""
    if g.qemu_profile.qemu_io_zero_write_past_end_in_iothread_aborts and node.ctx != "main":
        raise KnownQemuBug("known QEMU 7.2 abort: qemu-io write -z past the end of a node in "
                           "an iothread")


#: point name (as the semantics call ``Graph.guard``) -> guard
def backing_loop(g: Graph, file: str) -> None:
    """QEMU bug (7.2.22, 10.0.2, 11.1.3): opening a qcow2 header backing chain that loops
    through read-only nodes never ends (corpus/findings/qcow2-backing-loop-open-hang.json)."""
    raise KnownQemuBug(f"known QEMU hang: a header backing chain that loops back to {file}")


GUARDS: dict[str, Callable[..., Any]] = {
    "backing-loop": backing_loop,
    "attach-file": attach_file,
    "qcow2-header-read": qcow2_header_read,
    "qcow2-open-failed": qcow2_open_failed,
    "qcow2-open-read-only": qcow2_open_read_only,
    "reopen-start": reopen_start,
    "reopen-prepared": reopen_prepared,
    "reopen-closed": reopen_closed,
    "reopen-done": reopen_start,
    "close-node": close_node,
    "reopen-dangling": reopen_dangling,
    "device-add": device_add,
    "job-start": job_start,
    "stream-start": stream_start,
    "job-finalize": _stream_left_concluded,
    "job-cancel": _stream_left_concluded,
    "active-commit-start": active_commit_start,
    "qemu-io-active-commit": qemu_io_active_commit,
    "qemu-io-read": qemu_io_read,
    "qemu-io-zero-write-past-end": qemu_io_zero_write_past_end,
    "child-change": child_change,
    "append": append,
    "qcow2-create": qcow2_create,
    "truncate": truncate,
    "write-past-child-end": write_past_child_end,
    "job-filter-orphaned": job_filter_orphaned,
}
