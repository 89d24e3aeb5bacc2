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
