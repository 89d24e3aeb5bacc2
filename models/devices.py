"""Guest devices: ``device_add`` of virtio-scsi controllers and scsi-hd disks.

A disk pins its node's AioContext (``models.aio`` keeps the rules).  Only ``-M pc`` traces have
buses for devices (``machine: "pc"``).
"""
from __future__ import annotations

from typing import Any

import attrs

from . import perms as P
from .aio import CTX_ERROR, component
from .errors import NotModeled, QmpFailure
from .graph import Graph, JobParent, op_blocker


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
    if g.reaches(node, lambda n: not n.driver.disk_read_ok(g, n)):
        # the disk reads its first sector when it is realized (seen on 7.2): blkverify exits
        # QEMU on a mismatch, quorum votes, copy-on-read allocates: not modelled
        raise NotModeled("disks on blkverify/quorum/copy-on-read nodes")
    g.guard("device-add", node=node)
    writable = not node.read_only
    perm = P.CONSISTENT_READ | (P.WRITE if writable else 0)
    shared = P.CONSISTENT_READ | P.WRITE_UNCHANGED | P.RESIZE | (P.WRITE if share_rw else 0)
    parent = JobParent(node.name, f"block device '{path}'", "root", perm, shared,
                       g.next_edge_seq(), blk=True)
    target = ctrl.iothread or "main"
    best_effort = g.qemu_profile.disk_context_move_best_effort
    disk = Disk(dev_id, node.name, bus, share_rw, True, parent)
    g.devices[dev_id or path] = disk
    P.refresh(g, [node.name])
    if g.qemu_profile.dataplane_op_blocker:
        # 7.2 checks the op blockers when a scsi-hd is plugged (observed with and without an
        # iothread on the controller, for backing parents and for jobs); the newest is reported
        reason = op_blocker(g, node, dataplane=True)
        if reason is not None:
            raise QmpFailure(f"Node '{node.name}' is busy: {reason}")
    # virtio_scsi_hotplug(): into the controller's context (VersionProfile.
    # disk_context_move_best_effort); the other disks' BlockBackends refuse to move
    if (ctrl.iothread is not None or not best_effort) and node.ctx != target:
        others = component(g, node)
        if any(d is not disk and d.pinned and d.node in others
               for d in g.devices.values() if isinstance(d, Disk)):
            if not best_effort:
                raise QmpFailure(CTX_ERROR)
        else:
            for name in others:
                g.nodes[name].ctx = target
