"""The job filters of ``block/commit.c`` (``commit_top``) and ``block/mirror.c``
(``mirror_top``): created by jobs only (``bdrv_new_open_driver()``), their filtered child is
``backing``, they cannot be reopened, and their filename is their child's."""
from __future__ import annotations

from ..graph import ROLE_FILTERED, Graph, Node
from ..perms import ALL, CONSISTENT_READ, WRITE
from .base import Filter


class _JobFilter(Filter):
    can_reopen = False
    job_filter = True
    children = (("backing", ROLE_FILTERED),)

    def exact_filename(self, g: Graph, n: Node, children: dict, opts: dict,
                       generate_json: bool) -> str:
        """``bdrv_commit_top_refresh_filename()`` / ``bdrv_mirror_top_refresh_filename()``."""
        return children["backing"].filename


class CommitTop(_JobFilter):
    name = "commit_top"

    def child_perm(self, role: str, parent_writable: bool, perm: int, shared: int) -> tuple[int, int]:
        return 0, ALL   # bdrv_commit_top_child_perm()


class MirrorTop(_JobFilter):
    name = "mirror_top"

    def child_perm(self, role: str, parent_writable: bool, perm: int, shared: int) -> tuple[int, int]:
        """``bdrv_mirror_top_child_perm()``: the default (filter) permissions ..."""
        return perm & ALL, shared & ALL

    def adjust_child_perm(self, n: Node, perm: int, shared: int) -> tuple[int, int]:
        """... and for a commit job no consistent read, and write shared (``s->is_commit``)."""
        if n.mirror_is_commit:
            return perm & ~CONSISTENT_READ, shared | WRITE
        return perm, shared
