"""The drivers the model covers, one module per ``block/<driver>.c`` (see ``base``).

Adding a driver is adding its module and one line to ``DRIVERS`` below; the generic code
(``models.blockdev``, ``models.reopen``, ``models.qapi``, ...) and the generator
(``fuzz.statemachine``) find it here.
"""
from __future__ import annotations

from .base import BlockDriver
from .blkdebug import Blkdebug
from .blkverify import Blkverify
from .compress import Compress
from .copy_on_read import CopyOnRead
from .file import File
from .jobfilters import CommitTop, MirrorTop
from .null import NullCo
from .qcow2 import Qcow2
from .quorum import Quorum
from .raw import Raw
from .throttle import Throttle

#: BlockDriver by format name, in the order the QAPI enum lists the modelled ones
DRIVERS: dict[str, BlockDriver] = {d.name: d for d in (
    File(), Qcow2(), Raw(), Throttle(), CopyOnRead(), Compress(), NullCo(), Blkdebug(),
    Quorum(), Blkverify(), CommitTop(), MirrorTop(),
)}

__all__ = ["DRIVERS", "BlockDriver"]
