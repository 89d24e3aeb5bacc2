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
    assert bytes(orig.data[:4]) == b"\x11" * 4
    assert bytes(clone.data[:4]) == b"\x22" * 4


def test_a_write_to_the_original_leaves_the_clone_alone():
    orig = _image()
    clone = orig.clone()
    orig.resize(2048)
    orig.writable()[8:12] = b"\x33" * 4
    assert len(clone.data) == 1024 and bytes(clone.data[8:12]) == b"\x11" * 4
    assert len(orig.data) == 2048 and bytes(orig.data[8:12]) == b"\x33" * 4


def test_the_second_write_does_not_copy_again():
    orig = _image()
    clone = orig.clone()
    first = clone.writable()
    assert clone.writable() is first
