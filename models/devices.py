"""Guest devices and AioContexts: ``device_add`` of virtio-scsi controllers and scsi-hd disks,
and the rules that keep a connected part of the graph in one AioContext.

A node's AioContext is not visible in any query, so the model tracks it (``Node.ctx``: "main"
or an iothread id).  The rules (``bdrv_try_change_aio_context()``,
``bdrv_attach_child_noperm()``, ``blk_root_change_aio_ctx()``):

* a connected component (nodes joined by any edge, plus the BlockBackends on them) lives in
  one context;
* attaching a child from another context first tries to move the child's component into the
  parent's context, then the parent's component into the child's; a component that holds a
  BlockBackend which may not change context (a disk on an iothread controller; on 7.2 any
  disk) cannot move: ``Cannot change iothread of active block backend`` (the first attempt's
  error is reported);
* detaching never moves anything.

Only ``-M pc`` traces have buses for devices (``machine: "pc"``).
"""
from __future__ import annotations

from typing import Any

import attrs

from . import perms as P
from .errors import KnownQemuBug, NotModeled, QmpFailure
from .graph import Graph, JobParent, Node

CTX_ERROR = "Cannot change iothread of active block backend"


@attrs.frozen
class Controller:
    id: str
    iothread: str | None      # None: the main loop


@attrs.frozen
class Disk:
    id: str | None
    node: str
    bus: str
    share_rw: bool
    pinned: bool              # its BlockBackend may not change AioContext
    parent: JobParent         # its BlockBackend, as a parent of the node


def component(g: Graph, start: Node, skip: tuple[str, str] | None = None) -> set[str]:
    """Nodes connected to ``start`` by any edge, leaving out the (parent, child) edge ``skip``."""
    seen = {start.name}
    todo = [start]
    while todo:
        n = todo.pop()
        for c in list(n.children) + list(n.parents):
            if skip is not None and (c.parent, c.child) == skip:
                continue
            other = c.child if c.parent == n.name else c.parent
            if other not in seen:
                seen.add(other)
                todo.append(g.nodes[other])
    return seen


def _pinned(g: Graph, names: set[str]) -> bool:
    return any(d.pinned and d.node in names for d in g.devices.values() if isinstance(d, Disk))


def try_move(g: Graph, start: Node, ctx: str, skip: tuple[str, str] | None = None) -> bool:
    """``bdrv_try_change_aio_context()``: move ``start``'s component, unless a pinned
    BlockBackend is in it."""
    if start.ctx == ctx:
        return True
    names = component(g, start, skip)
    if _pinned(g, names):
        return False
    for name in names:
        g.nodes[name].ctx = ctx
    return True


def reconcile_attach(g: Graph, parent: Node, child: Node) -> None:
    """The AioContext part of attaching ``child`` under ``parent`` (before the edge exists)."""
    if parent.ctx == child.ctx:
        return
    if try_move(g, child, parent.ctx) or try_move(g, parent, child.ctx):
        return
    raise QmpFailure(CTX_ERROR)


def uses_iothreads(g: Graph) -> bool:
    return any(n.ctx != "main" for n in g.nodes.values())


# --------------------------------------------------------------------------------------------
# device_add

def device_add(g: Graph, args: Any) -> None:
    if g.machine == "none":
        raise NotModeled("device_add needs a machine with buses (trace machine 'pc')")
    if not isinstance(args, dict) or not isinstance(args.get("driver"), str):
        raise NotModeled("device_add without a driver")
    drv = args["driver"]
    if drv in ("virtio-scsi", "virtio-scsi-pci"):
        _add_controller(g, args)
    elif drv == "scsi-hd":
        _add_disk(g, args)
    else:
        raise NotModeled(f"device {drv!r}")


def _check_id(g: Graph, dev_id: Any) -> None:
    if dev_id is None:
        return
    if not isinstance(dev_id, str) or not dev_id or not (dev_id[0].isalpha()):
        raise NotModeled("odd device ids")
    if dev_id in g.devices:
        raise QmpFailure(f"Duplicate device ID '{dev_id}'")


def _add_controller(g: Graph, args: dict) -> None:
    if set(args) - {"driver", "id", "iothread"}:
        raise NotModeled("virtio-scsi properties")
    dev_id = args.get("id")
    if dev_id is None:
        raise NotModeled("controllers without an id (their bus name)")
    _check_id(g, dev_id)
    iothread = args.get("iothread")
    if iothread == "":
        iothread = None
    if iothread is not None:
        obj = g.objects.get(iothread)
        if obj is None or obj.qom_type != "iothread":
            raise QmpFailure(f"Device '{iothread}' not found", "DeviceNotFound")
    g.devices[dev_id] = Controller(dev_id, iothread)


def _add_disk(g: Graph, args: dict) -> None:
    if set(args) - {"driver", "id", "drive", "bus", "share-rw"}:
        raise NotModeled("scsi-hd properties")
    bus = args.get("bus")
    if not isinstance(bus, str) or not bus.endswith(".0"):
        raise NotModeled("scsi-hd without a bus")
    ctrl = g.devices.get(bus[:-2])
    if not isinstance(ctrl, Controller):
        raise QmpFailure(f"Bus '{bus}' not found")
    dev_id = args.get("id")
    _check_id(g, dev_id)
    if dev_id is None:
        # qdev_set_id(): "device[%d]" from a counter that failed device_adds also advance
        path = f"/machine/peripheral-anon/device[{g.anon_devices}]"
        g.anon_devices += 1
    else:
        path = dev_id
    drive = args.get("drive")
    if not isinstance(drive, str):
        raise NotModeled("scsi-hd without a drive")
    node = g.get(drive)
    if node is None:
        raise QmpFailure(f"Property 'scsi-hd.drive' can't find value '{drive}'")
    share_rw = args.get("share-rw", False)
    if not isinstance(share_rw, bool):
        raise NotModeled("share-rw as a string")
    if g.reaches(node, lambda n: n.drv in ("blkverify", "quorum", "copy-on-read")):
        # the disk reads its first sector when it is realized (seen on 7.2): blkverify exits
        # QEMU on a mismatch, quorum votes, copy-on-read allocates: not modelled
        raise NotModeled("disks on blkverify/quorum/copy-on-read nodes")
    if g.reaches_stuck(node) and g.guard_known_crashes:
        raise KnownQemuBug("known QEMU bug: a disk on a node left drained hangs device_add")
    writable = not node.read_only
    perm = P.CONSISTENT_READ | (P.WRITE if writable else 0)
    shared = P.CONSISTENT_READ | P.WRITE_UNCHANGED | P.RESIZE | (P.WRITE if share_rw else 0)
    parent = JobParent(node.name, f"block device '{path}'", "root", perm, shared,
                       g.next_edge_seq(), blk=True)
    target = ctrl.iothread or "main"
    pinned = ctrl.iothread is not None or not g.profile.main_loop_disks_follow
    disk = Disk(dev_id, node.name, bus, share_rw, pinned, parent)
    g.devices[dev_id or path] = disk
    P.refresh(g, [node.name])
    if g.profile.dataplane_op_blocker:
        # 7.2 checks the op blockers when a scsi-hd is plugged (observed with and without an
        # iothread on the controller, for backing parents and for jobs); the newest is reported
        from .blockdev import op_blocker
        reason = op_blocker(g, node)
        if reason is not None:
            raise QmpFailure(f"Node '{node.name}' is busy: {reason}")
    if pinned and node.ctx != target:
        others = component(g, node)
        if any(d is not disk and d.pinned and d.node in others
               for d in g.devices.values() if isinstance(d, Disk)):
            raise QmpFailure(CTX_ERROR)
        for name in others:
            g.nodes[name].ctx = target
