"""``block/blkdebug.c``: the blkdebug protocol filter (``image`` via ``bdrv_open_file_child()``)."""
from __future__ import annotations

from .. import perms
from ..errors import NotModeled, QmpFailure
from ..graph import ROLE_FILTERED, Graph, Node
from ..profiles import VersionProfile
from ..qapitypes import INT, REF, STR, UNMODELLED, Member, enum, list_of
from .base import CHILD, NODE, Draw, Gen, Opener, PassThroughFilter

#: blkdebug_refresh_limits(): option -> the limit it overrides when non-zero
LIMIT_OPTIONS = (("align", "request-alignment"), ("max-transfer", "max-transfer"),
                 ("opt-write-zero", "write-zeroes-alignment"),
                 ("max-write-zero", "max-write-zeroes"),
                 ("opt-discard", "discard-alignment"), ("max-discard", "max-discard"))


def _size_opt(n: Node, key: str) -> int:
    """A size option as the driver's ``qemu_opt_get_size(opts, key, 0)`` reads it."""
    v = n.options.get(key, 0)
    if isinstance(v, bool):
        raise NotModeled(f"{n.drv} option {key}={v!r}")
    if isinstance(v, str):
        if not v.isdigit():
            raise NotModeled(f"{n.drv} option {key}={v!r} (size suffixes)")
        v = int(v)
    return v


class Blkdebug(PassThroughFilter):
    name = "blkdebug"
    protocol = True
    strong = ("config", "inject-error.", "set-state.", "align", "max-transfer",
              "opt-write-zero", "max-write-zero", "opt-discard", "max-discard")
    children = (("image", ROLE_FILTERED),)
    storage_transparent = True
    gen = Gen(weight=1, members={
        "image": Draw((CHILD,)), "config": Draw(("/dev/null",), every=2),
        "align": Draw((512, 3, 0), every=4)}, reopen={
        "align": Draw((512,)), "config": Draw(("/dev/null",)), "image": Draw((NODE,))})

    def members(self, profile: VersionProfile) -> tuple[Member, ...]:
        return (
            ("image", REF, True), ("config", STR, False), ("align", INT, False),
            ("max-transfer", UNMODELLED, False), ("opt-write-zero", UNMODELLED, False),
            ("max-write-zero", UNMODELLED, False), ("opt-discard", UNMODELLED, False),
            ("max-discard", UNMODELLED, False), ("inject-error", UNMODELLED, False),
            ("set-state", UNMODELLED, False), ("take-child-perms", list_of(PERMISSION), False),
            ("unshare-child-perms", list_of(PERMISSION), False),
        )

    def open(self, op: Opener, node: Node, options: dict, file: Node | None) -> None:
        """``blkdebug_open()``."""
        config = options.get("config")
        if config is not None and config != "/dev/null":
            raise NotModeled("blkdebug config files other than /dev/null")
        op.open_child(node, options, "image", ROLE_FILTERED)
        align = options.get("align", 0)
        if align and (align >= 2**31 - 1 or align & (align - 1) or align < 0):
            raise QmpFailure(f"Cannot meet constraints with align {align % 2**64}")
        if align > 512:
            raise NotModeled("blkdebug align > 512 (request alignment rules)")
        super().open(op, node, options, file)

    def adjust_child_perm(self, n: Node, perm: int, shared: int) -> tuple[int, int]:
        """``blkdebug_child_perm()``: the default permissions, plus take-child-perms, minus
        unshare-child-perms from what is shared."""
        return perm | _perm_list(n, "take-child-perms"), shared & ~_perm_list(n, "unshare-child-perms")

    def request_alignment(self, g: Graph, n: Node) -> int:
        return n.options.get("align", 0) or 1

    def refresh_limits(self, g: Graph, n: Node, bl: dict) -> None:
        """``blkdebug_refresh_limits()``: each non-zero option overrides its limit;
        ``blkdebug_open()`` already checked them."""
        for opt, key in LIMIT_OPTIONS:
            v = _size_opt(n, opt)
            if v:
                bl[key] = v

    def exact_filename(self, g: Graph, n: Node, children: dict, opts: dict,
                       generate_json: bool) -> str:
        """``blkdebug_refresh_filename()``."""
        img = children["image"]
        if img.exact and all(k in ("config", "image", "x-image", "driver") for k in opts):
            return f"blkdebug:{n.options.get('config', '')}:{img.exact}"
        return ""


#: BlockPermission (qapi/block-core.json) -> BLK_PERM_*
_PERMS = {"consistent-read": perms.CONSISTENT_READ, "write": perms.WRITE,
          "write-unchanged": perms.WRITE_UNCHANGED, "resize": perms.RESIZE}
PERMISSION = enum(*_PERMS)


def _perm_list(n: Node, key: str) -> int:
    out, i = 0, 0
    while f"{key}.{i}" in n.options:
        out |= _PERMS[n.options[f"{key}.{i}"]]
        i += 1
    return out
