"""Copy-on-write image clones (``models.imagedata.Image.clone``): a job command's transaction
clones every image, and neither side of a clone may see the other's writes."""
from models.imagedata import Image


def _image() -> Image:
    img = Image.create("a.img", "raw", 1024)
    img.write_host(0, b"\x11" * 16)
    return img


def test_a_write_to_the_clone_leaves_the_original_alone():
    orig = _image()
    clone = orig.clone()
    assert clone.data is orig.data          # shared until one of them writes
    clone.write_host(0, b"\x22" * 4)
    assert orig.read_bytes(0, 4) == b"\x11" * 4
    assert clone.read_bytes(0, 4) == b"\x22" * 4


def test_a_write_to_the_original_leaves_the_clone_alone():
    orig = _image()
    clone = orig.clone()
    orig.resize(8)
    orig.write_bytes(8, b"\x33" * 4)
    assert clone.size == 1024 and clone.read_bytes(8, 4) == b"\x11" * 4
    assert orig.size == 8 and orig.read_bytes(4, 8) == b"\x11" * 4 + b"\x33" * 4


def test_the_second_write_does_not_copy_again():
    orig = _image()
    clone = orig.clone()
    first = clone.writable()
    assert clone.writable() is first


def test_models_of_one_image_set_do_not_share_writes():
    """``models.model.build_images`` hands out clones of one pristine set per image list."""
    from models import PROFILES, ImageSpec, Model, Write

    specs = [ImageSpec("r0.img", "raw", 65536, writes=(Write(0x11, 0, 4096),))]
    a, b = Model(PROFILES["11.1"], specs), Model(PROFILES["11.1"], specs)
    for m in (a, b):
        assert m.execute("blockdev-add", {"driver": "file", "node-name": "f", "filename": "r0.img"}).ok
    assert a.execute("human-monitor-command",
                     {"command-line": 'qemu-io f "write -P 0x22 0 4096"'}).error is None
    assert a.graph.images["r0.img"].read_bytes(0, 4) == b"\x22" * 4
    assert b.graph.images["r0.img"].read_bytes(0, 4) == b"\x11" * 4
    assert Model(PROFILES["11.1"], specs).graph.images["r0.img"].read_bytes(0, 4) == b"\x11" * 4


def test_bytes_past_the_last_write_read_as_zeros():
    img = Image.create("q.img", "qcow2", 128 << 20)
    assert len(img.data) == 0 and img.read_bytes((64 << 20) - 2, 4) == bytes(4)
    img.write_bytes(10, b"ab")
    assert img.read_bytes(8, 6) == b"\0\0ab\0\0"
    img.resize(11)
    assert img.read_bytes(8, 6) == b"\0\0a\0\0\0"
    raw = Image.create("r.img", "raw", 0)
    raw.resize(1000)
    assert raw.host_bytes(990, 100) == bytes(10)    # up to the file's end


def test_a_qemu_io_write_the_model_declines_halfway_leaves_nothing_behind():
    """A quorum write goes to each child in turn; the second one's allocation is declined
    (several clusters while its image has a freed one), after the first child was written."""
    import pytest

    from models import PROFILES, ImageSpec, Model, NotModeled

    m = Model(PROFILES["11.1"], [ImageSpec("a.img", "qcow2", 1 << 20), ImageSpec("b.img", "qcow2", 1 << 20)])
    for name in ("a", "b"):
        assert m.execute("blockdev-add", {"driver": "qcow2", "node-name": name, "discard": "unmap",
                                          "file": {"driver": "file", "filename": f"{name}.img"}}).ok
    io = lambda node, cmd: m.execute("human-monitor-command", {"command-line": f'qemu-io {node} "{cmd}"'})
    assert io("b", "write -P 0x11 0 65536").error is None
    assert io("b", "write -z -u 0 65536").error is None
    assert m.graph.images["b.img"].free_host == 1
    assert m.execute("blockdev-add", {"driver": "quorum", "node-name": "q", "vote-threshold": 2,
                                      "children": ["a", "b"]}).ok
    before = m.query_named_block_nodes()
    with pytest.raises(NotModeled, match="past a freed cluster"):
        io("q", "write -P 0x22 65536 131072")
    assert m.graph.images["a.img"].read_bytes(65536, 4) == bytes(4)
    assert m.query_named_block_nodes() == before
