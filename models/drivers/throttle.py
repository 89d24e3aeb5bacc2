"""``block/throttle.c``: the throttle filter, a member of a ``throttle-group`` object."""
from __future__ import annotations

from typing import Any

from ..errors import QmpFailure
from ..graph import Graph, Node
from ..profiles import VersionProfile
from ..qapitypes import REF, STR, Member
from .base import CHILD, GROUP, Draw, Gen, Opener, PassThroughFilter


def check_group(g: Graph, options: dict) -> str:
    """``throttle_parse_options()``."""
    group = options.get("throttle-group")
    if group is None:
        raise QmpFailure("Please specify a throttle group")
    obj = g.objects.get(group)
    if obj is None or obj.qom_type != "throttle-group":
        raise QmpFailure(f"Throttle group '{group}' does not exist")
    return group


class Throttle(PassThroughFilter):
    name = "throttle"
    strong = ("throttle-group",)
    absorbed = ("throttle-group",)
    can_compress = True
    storage_transparent = True
    gen = Gen(weight=2, members={
        "file": Draw((CHILD,)), "throttle-group": Draw((GROUP, "group0", "nope"))}, reopen={
        "throttle-group": Draw(("group0", "group1", "group2", "notfound"))})

    def members(self, profile: VersionProfile) -> tuple[Member, ...]:
        return (("throttle-group", STR, True), ("file", REF, True))

    def open(self, op: Opener, node: Node, options: dict, file: Node | None) -> None:
        node.throttle_group = check_group(op.g, options)
        super().open(op, node, options, file)

    def reopen_prepare(self, g: Graph, node: Node, options: dict, remaining: dict) -> Any:
        return check_group(g, options)

    def reopen_commit(self, g: Graph, node: Node, state: Any) -> None:
        node.throttle_group = state   # throttle_reopen_commit() switches groups
