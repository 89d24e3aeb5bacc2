"""The reference model's public face.

    >>> from models import Model, ImageSpec, PROFILES
    >>> m = Model(PROFILES["10.0"], [ImageSpec("hd0.img", "qcow2", 3 << 20)])
    >>> m.execute("blockdev-add", {"driver": "qcow2", "node-name": "hd0",
    ...           "file": {"driver": "file", "filename": "hd0.img"}}).ok
    True
    >>> [n["node-name"] for n in m.query_named_block_nodes()]
    ['hd0', '#block0']

``execute()`` predicts one QMP command: its ``Outcome`` (return value or exact error, and the
lines qemu-io prints) and the state the graph is in afterwards.  Failed commands leave the state
untouched, as QEMU's transactions do.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from . import blockdev, qemuio
from .errors import NotModeled, QmpFailure
from .graph import Graph
from .imagedata import Image
from .outcome import Outcome
from .profiles import VersionProfile
from .perms import settle_locks
from .query import project, query_named_block_nodes


@attrs.frozen
class Write:
    pattern: int
    offset: int
    length: int


@attrs.frozen
class ImageSpec:
    """An image created before QEMU starts (``qemu-img create`` + ``qemu-io write -P``)."""

    file: str
    format: str
    size: int | None = None
    backing_file: str | None = None
    backing_format: str | None = None
    writes: tuple = ()

    @classmethod
    def from_json(cls, d: dict) -> "ImageSpec":
        known = {"file", "format", "size", "backing-file", "backing-format", "writes"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"image entry has unknown keys {sorted(unknown)}")
        return cls(d["file"], d["format"], d.get("size"), d.get("backing-file"), d.get("backing-format"),
                   tuple(Write(w["pattern"], w["offset"], w["length"]) for w in d.get("writes", ())))

    def to_json(self) -> dict:
        d: dict[str, Any] = {"file": self.file, "format": self.format}
        if self.size is not None:
            d["size"] = self.size
        if self.backing_file is not None:
            d["backing-file"] = self.backing_file
        if self.backing_format is not None:
            d["backing-format"] = self.backing_format
        if self.writes:
            d["writes"] = [{"pattern": w.pattern, "offset": w.offset, "length": w.length} for w in self.writes]
        return d


def build_images(specs: Iterable[ImageSpec]) -> dict[str, Image]:
    """The images as ``qemu-img create`` and standalone ``qemu-io`` leave them."""
    from . import iodata
    from .graph import Node

    images: dict[str, Image] = {}
    for spec in specs:
        size = spec.size
        if size is None:
            if spec.backing_file is None or spec.backing_file not in images:
                raise ValueError(f"image {spec.file}: no size and no known backing file")
            size = images[spec.backing_file].size
        images[spec.file] = Image.create(spec.file, spec.format, size, spec.backing_file, spec.backing_format)
        if spec.writes:
            # qemu-io -f FMT opens the image with its header backing chain.
            g = Graph(images=images)
            op = blockdev._Opener(g, None)  # type: ignore[arg-type]
            top = op.open(_standalone_options(spec))
            for w in spec.writes:
                iodata.write(g, top, w.offset, bytes([w.pattern]) * w.length)
    return images


def _standalone_options(spec: ImageSpec) -> dict:
    return {"driver": spec.format, "file.driver": "file", "file.filename": spec.file, "read-only": "off"}


class Model:
    """A QEMU block layer in Python: one per example, like one QEMU process."""

    def __init__(self, profile: VersionProfile, images: Iterable[ImageSpec]):
        self.profile = profile
        self.graph = Graph(images=build_images(images), profile=profile)

    def execute(self, cmd: str, args: Any) -> Outcome:
        """Predict one QMP command.  Raises ``NotModeled`` for commands outside the model."""
        if cmd == "human-monitor-command":
            line = args.get("command-line", "") if isinstance(args, dict) else ""
            io = qemuio.parse_command_line(line)
            r = qemuio.run(self.graph, io)
            return Outcome(ret=r.ret, error=None, stdout=r.stdout)
        handler = {
            "blockdev-add": lambda g: blockdev.blockdev_add(g, args, self.profile),
            "blockdev-reopen": lambda g: blockdev.blockdev_reopen(g, args, self.profile),
            "blockdev-del": lambda g: blockdev.blockdev_del(g, args),
        }.get(cmd)
        if handler is None:
            raise NotModeled(f"command {cmd!r}")
        g = self.graph.clone()
        try:
            handler(g)
        except QmpFailure as e:
            # The auto-name counter is not rolled back: id_generate() has no undo.
            self.graph.auto_counter = g.auto_counter
            # known QEMU bugs whose effect survives the rollback
            self.graph.stuck |= g.stuck & set(self.graph.nodes)
            self.graph.dangling_data_file |= g.dangling_data_file & set(self.graph.nodes)
            return Outcome.failure(e.desc, e.cls)
        settle_locks(g)
        self.graph = g
        return Outcome.success({})

    def query_named_block_nodes(self) -> list[dict]:
        """The projected ``query-named-block-nodes`` reply (see ``models.query.project``)."""
        return project(query_named_block_nodes(self.graph, self.profile))
