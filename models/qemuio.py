"""HMP ``qemu-io NODE "CMD"`` (``hmp_qemu_io()`` + qemu-io-cmds.c) for ``read`` and ``write``.

The HMP command creates a temporary BlockBackend on the node (perm none, shared all), whose
attach already refreshes the node's permissions (a failure: "Error: ..."); a
``write`` upgrades it to the ``write`` permission, and a failure of that upgrade is the HMP
return string (``error_report_err()`` in monitor context).  Everything the command itself prints
goes to QEMU's stdout; the statistics line with timings is not part of the prediction.
"""
from __future__ import annotations

import re
import shlex

import attrs

from . import iodata
from . import perms as P
from .errors import NotModeled, QmpFailure
from .graph import Graph, Node
from .jobs import active_commit_nodes
from .lengths import host_sectors, node_length

_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def cvtnum(s: str) -> int:
    """qemu-io's ``cvtnum()`` for the forms the fuzzer uses: decimal/hex with a size suffix."""
    m = re.fullmatch(r"(0[xX][0-9a-fA-F]+|\d+)([bBkKmMgGtT]?)", s)
    if not m:
        raise NotModeled(f"qemu-io number {s!r}")
    return int(m.group(1), 0) * _SUFFIX[m.group(2).lower()]


@attrs.frozen
class IoCommand:
    device: str
    op: str          # "read" | "write"
    offset: int
    length: int
    pattern: int | None


def parse_command_line(line: str) -> IoCommand:
    """Parse ``qemu-io DEV "read -P 0xa0 0 1M"`` (the only forms the model predicts)."""
    m = re.fullmatch(r'qemu-io ([^\s"]+) "([^"]*)"', line)
    if not m:
        raise NotModeled(f"HMP command line {line!r}")
    device, cmd = m.group(1), m.group(2)
    words = shlex.split(cmd)
    if not words or words[0] not in ("read", "write"):
        raise NotModeled(f"qemu-io command {cmd!r}")
    pattern = None
    rest = words[1:]
    if words[0] == "write" and rest[:1] == ["-z"]:
        unmap = rest[1:2] == ["-u"]
        rest = rest[2:] if unmap else rest[1:]
        if len(rest) != 2 or rest[0].startswith("-"):
            raise NotModeled(f"qemu-io arguments {cmd!r}")
        return IoCommand(device, "write-zeroes-unmap" if unmap else "write-zeroes",
                         cvtnum(rest[0]), cvtnum(rest[1]), None)
    if rest[:1] == ["-P"] and len(rest) >= 2:
        pattern = int(rest[1], 0)
        if not 0 <= pattern <= 255:
            raise NotModeled("pattern out of range")
        rest = rest[2:]
    if len(rest) != 2 or rest[0].startswith("-"):
        raise NotModeled(f"qemu-io arguments {cmd!r}")
    return IoCommand(device, words[0], cvtnum(rest[0]), cvtnum(rest[1]), pattern)


@attrs.frozen
class IoResult:
    ret: str
    stdout: tuple[str, ...]


def _metadata_past_cached_end(g: Graph, n: Node) -> bool:
    """A format node with its metadata in its file (``BlockDriver.metadata_in_file``: qcow2)
    whose file node's ``total_sectors`` is behind its host file: another node on the same file grew
    it (two file nodes, ``locking: off``).  QEMU's read of a metadata cluster past that cached
    end returns zeroes (``bdrv_aligned_preadv()`` pads past ``total_bytes``), so qcow2 takes an
    allocated cluster for a free one and allocates again; which cluster it then takes is
    beyond the model (seen on 7.2.22, 10.0.2, 10.2.2 and 11.1.3: an L2 table read as zeroes
    after a reopen moved a qcow2 node onto such a file node)."""
    c = n.child("file") if n.driver.metadata_in_file else None
    if c is None:
        return False
    ch = g.nodes[c.child]
    return ch.driver.protocol and ch.filename in g.images \
        and ch.cached_length < host_sectors(g, ch.filename)


def run(g: Graph, cmd: IoCommand) -> IoResult:
    """Predict an HMP qemu-io command; writes change ``g``'s images in place."""
    node = g.get(cmd.device)
    if node is None:
        return IoResult(f"Error: Cannot find device='' nor node-name='{cmd.device}'\r\n", ())
    # hmp_qemu_io(): a node name gets a temporary BlockBackend, blk_new(ctx, 0, BLK_PERM_ALL),
    # and blk_insert_bs() -> bdrv_root_attach_child() -> bdrv_refresh_perms() checks the node's
    # subtree before any qemu-io command runs, read or write.  Nothing is asked for, so only
    # a graph already at odds with a check fails here: e.g. a compress node (request_alignment
    # = cluster size) with a writer but no 'resize' whose length a block_resize below it made
    # unaligned, seen once its length follows the child (11.1: growth_resizes_filtered_parents;
    # 7.2: driver_variable_length; 10.0 keeps the old, aligned length).  The failure is
    # hmp_handle_error()'s "Error: " line; the command never runs (probed 7.2.22, 10.0.2,
    # 11.1.3: corpus/probes/qemu-io-attach-checks-an-unaligned-compress-node.json)
    tmp = P.ExternalParent("an unnamed block device", "root", 0, P.ALL)
    try:
        P.trial(g, [node.name], {node.name: [tmp]})
    except QmpFailure as e:
        return IoResult(("Error: " + e.desc + "\n" + e.hint).replace("\n", "\r\n"), ())
    length = node_length(g, node)
    if g.reaches(node, lambda n: n.name in g.dangling_data_file):
        raise NotModeled("I/O through a qcow2 node with a dangling data_file (known QEMU bug)")
    if g.reaches(node, lambda n: _metadata_past_cached_end(g, n)):
        raise NotModeled("a format node over a file node whose cached length is behind its file")
    busy = active_commit_nodes(g)
    if busy and g.reaches(node, lambda n: n.name in busy):
        if cmd.op == "write":
            # which writes the mirror copies to the base differs by version and path
            # (VersionProfile.mirror_bitmap_on_filter); the model leaves them out
            raise NotModeled("writes into the chain of an active commit")
        g.guard("qemu-io-active-commit", node=node, jobs=busy)
    if cmd.op == "read":
        if cmd.offset + cmd.length > length:
            return IoResult("", ("read failed: Input/output error",))
        g.guard("qemu-io-read", node=node)
        lines = []
        if cmd.pattern is not None or node.driver.read_has_effects \
                or g.reaches(node, lambda n: n.driver.read_may_fail):
            try:
                data = node.driver.qemu_io_read(g, node, cmd.offset, cmd.length)
            except iodata.IoFailed:
                return IoResult("", ("read failed: Input/output error",))
            if data is None:
                raise NotModeled(f"data of node '{node.name}' is not known to the model")
            if cmd.pattern is not None and data.count(cmd.pattern) != cmd.length:
                lines.append(f"Pattern verification failed at offset {cmd.offset}, {cmd.length} bytes")
        lines.append(f"read {cmd.length}/{cmd.length} bytes at offset {cmd.offset}")
        return IoResult("", tuple(lines))
    # write: the temporary BlockBackend asks for the write permission first
    bb = P.ExternalParent("an unnamed block device", "root", P.WRITE, P.ALL)
    try:
        P.trial(g, [node.name], {node.name: [bb]})
    except QmpFailure as e:
        # HMP prints the error with its hint (error_report_err()), lines ending "\r\n"
        return IoResult((e.desc + "\n" + e.hint).replace("\n", "\r\n"), ())
    if cmd.offset + cmd.length > length:
        if cmd.op.startswith("write-zeroes"):
            g.guard("qemu-io-zero-write-past-end", node=node)
        return IoResult("", ("write failed: Input/output error",))
    done = (f"wrote {cmd.length}/{cmd.length} bytes at offset {cmd.offset}",)
    if cmd.op.startswith("write-zeroes"):
        if any(n.detect_zeroes != "off" for n in g.nodes.values()):
            raise NotModeled("zero writes with detect-zeroes")
        try:
            iodata.write_zeroes(g, node, cmd.offset, cmd.length, cmd.op.endswith("unmap"))
        except iodata.IoFailed as e:
            return IoResult("", (f"write failed: {e.strerror}",))
        return IoResult("", done)
    if not iodata.can_write(g, node):
        raise NotModeled(f"writes through node '{node.name}' are not modelled")
    pattern = 0xCD if cmd.pattern is None else cmd.pattern
    if pattern == 0 and any(n.detect_zeroes != "off" for n in g.nodes.values()):
        # detect-zeroes turns an all-zero write into write-zeroes (zero clusters): not modelled
        raise NotModeled("zero writes with detect-zeroes")
    try:
        iodata.write(g, node, cmd.offset, bytes([pattern]) * cmd.length)
    except iodata.IoFailed as e:
        return IoResult("", (f"write failed: {e.strerror}",))
    return IoResult("", done)

