"""Format probing: ``find_image_format()`` and ``bdrv_probe_all()`` (block.c).

A node opened without a ``driver`` (only a header backing file name without a backing format
gets here: QAPI makes every blockdev-add name its driver) has its file opened first, then the
first ``BLOCK_PROBE_BUF_SIZE`` (512) bytes read and offered to every driver's
``.bdrv_probe``; the highest score wins.  qcow2 scores 100 for its magic with version 2 or 3
(``qcow2_probe()``), raw 1 for anything (``raw_probe()``).  The other drivers QEMU builds
(qcow, qed, vmdk, vpc, vdi, vhdx, luks, parallels, bochs, cloop, dmg) are not modelled: a
first sector that one of them could claim is declined rather than guessed.

The node gets ``bs->probed`` (``bdrv_open_inherit()``): a probed raw node protects its first
sector (``raw_co_pwritev()``, ``raw_refresh_limits()``; ``models.drivers.raw``).
"""
from __future__ import annotations

import struct

from .errors import NotModeled
from .imagedata import Image

#: BLOCK_PROBE_BUF_SIZE (include/block/block_int-common.h; raw-format.c checks it is 512)
PROBE_BUF_SIZE = 512

#: (offset, bytes) that one of the unmodelled drivers' probes claims, by probe function
_MAGICS: tuple[tuple[str, int, bytes], ...] = (
    ("qcow_probe / qcow2_probe", 0, b"QFI\xfb"),       # qcow v1 or a qcow2 the model lost
    ("bdrv_qed_probe", 0, b"QED\0"),
    ("vmdk_probe", 0, b"KDMV"), ("vmdk_probe", 0, b"COWD"),
    ("vpc_probe", 0, b"conectix"),
    ("vhdx_probe", 0, b"vhdxfile"),
    ("block_crypto_probe_luks", 0, b"LUKS\xba\xbe"),
    ("parallels_probe", 0, b"WithoutFreeSpace"), ("parallels_probe", 0, b"WithouFreSpacExt"),
    ("bochs_probe", 0, b"Bochs Virtual HD Image"),
    ("cloop_probe", 0, b"#!/bin/sh\n"),
    ("vdi_probe", 64, struct.pack("<I", 0xbeda107f)),
)


def _vmdk_descriptor(buf: bytes) -> bool:
    """``vmdk_probe()``'s text descriptor branch: comment and blank lines, then
    ``version=1|2|3`` and a line end."""
    p, end = 0, len(buf)
    while p < end:
        if buf[p:p + 1] == b"#":
            q = buf.find(b"\n", p)
            p = end + 1 if q < 0 else q + 1
            continue
        if buf[p:p + 1] == b" ":
            while p < end and buf[p:p + 1] == b" ":
                p += 1
            if p < end and buf[p:p + 1] == b"\r":
                p += 1
            if p == end or buf[p:p + 1] != b"\n":
                return False
            p += 1
            continue
        return any(buf.startswith(b"version=%d%s" % (v, eol), p) for v in (1, 2, 3) for eol in (b"\n", b"\r\n"))
    return False


def claimed_by_other_format(buf: bytes) -> str | None:
    """The probe of a driver other than raw that could claim ``buf`` (a first sector), or
    None: then raw's score of 1 wins."""
    for probe, off, magic in _MAGICS:
        if buf[off:off + len(magic)] == magic:
            return probe
    if _vmdk_descriptor(buf):
        return "vmdk_probe"
    return None


def find_image_format(img: Image, filename: str) -> str:
    """The driver ``find_image_format()`` picks for the file holding ``img``."""
    if img.fmt == "qcow2":
        # the model keeps a qcow2 image's metadata, not its bytes: its header has the magic
        # and version 2 or 3, which qcow2_probe() scores 100
        return "qcow2"
    if img.size == 0:
        return "raw"   # an empty file is raw without a read
    if img.size < PROBE_BUF_SIZE:
        # blk_pread() of 512 bytes past the end: "Could not read image for determining its
        # format", not probed
        raise NotModeled("format probing of a file shorter than 512 bytes")
    if filename.endswith(".dmg"):
        raise NotModeled("format probing of a file named *.dmg (dmg_probe())")
    other = claimed_by_other_format(img.read_bytes(0, PROBE_BUF_SIZE))
    if other is not None:
        raise NotModeled(f"format probing of a raw image that {other} claims")
    return "raw"
