"""Format probing (models.probing): find_image_format() / bdrv_probe_all() without QEMU.

The signatures come from each driver's .bdrv_probe in QEMU 10.0.13's block/*.c; the probe
trace corpus/probes/header-backing-probed.json checks the qcow2 and raw answers on real QEMU."""
import struct

import pytest

from models.errors import NotModeled
from models.imagedata import Image
from models.probing import PROBE_BUF_SIZE, claimed_by_other_format, find_image_format


def sector(head: bytes, fill: int = 0) -> bytes:
    return head + bytes([fill]) * (PROBE_BUF_SIZE - len(head))


@pytest.mark.parametrize("head, probe", [
    (b"QFI\xfb\0\0\0\1", "qcow_probe / qcow2_probe"),
    (b"QED\0", "bdrv_qed_probe"),
    (b"KDMV", "vmdk_probe"),
    (b"conectix", "vpc_probe"),
    (b"vhdxfile", "vhdx_probe"),
    (b"LUKS\xba\xbe", "block_crypto_probe_luks"),
    (b"WithouFreSpacExt", "parallels_probe"),
    (b"Bochs Virtual HD Image", "bochs_probe"),
    (b"#!/bin/sh\n#V2.0 Format\n", "cloop_probe"),
    (b"\0" * 64 + struct.pack("<I", 0xbeda107f), "vdi_probe"),
    # vmdk's text descriptor: comment and blank lines before version=
    (b"# Disk DescriptorFile\n   \nversion=1\n", "vmdk_probe"),
    (b"version=3\r\n", "vmdk_probe"),
])
def test_a_sector_another_driver_claims(head, probe):
    assert claimed_by_other_format(sector(head)) == probe


@pytest.mark.parametrize("buf", [
    sector(b""), sector(b"", 0xa1), sector(b"", ord("#")), sector(b"", ord(" ")),
    sector(b"version=4\n"), sector(b"   x\n"), sector(b"QFI"), sector(b"\0" * 64 + b"\x7f\x10\xda"),
])
def test_a_sector_only_raw_claims(buf):
    assert claimed_by_other_format(buf) is None


def raw(size: int, data: bytes = b"") -> Image:
    img = Image.create("b.img", "raw", size)
    img.write_bytes(0, data)
    return img


def test_find_image_format():
    assert find_image_format(Image.create("b.img", "qcow2", 1 << 20), "b.img") == "qcow2"
    assert find_image_format(raw(0), "b.img") == "raw"   # empty: raw without a read
    assert find_image_format(raw(1 << 20, b"\xa1" * 4096), "b.img") == "raw"
    with pytest.raises(NotModeled, match="shorter than 512"):
        find_image_format(raw(100), "b.img")
    with pytest.raises(NotModeled, match="dmg"):
        find_image_format(raw(1 << 20), "b.dmg")
    with pytest.raises(NotModeled, match="vpc_probe"):
        find_image_format(raw(1 << 20, b"conectix"), "b.img")
