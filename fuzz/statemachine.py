"""The Hypothesis state machine: random add / reopen / del / qemu-io sequences.

Every rule builds one trace step from *model state only* (node names, options, image data the
model knows), runs it through ``fuzz.engine.Runner`` on both QEMU and the model, and lets any
disagreement propagate: each kind is its own exception class, so Hypothesis shrinks each bug
on its own.  The first failing example is written to disk the moment it fails (before
shrinking) and again on every later failing run, so when Hypothesis stops the last file written
is the minimal example.

Generation limits (documented, never silent): patterns are 1..255 (an all-zero write meets
detect-zeroes, whose zero clusters the model does not cover); ``cache.direct`` is never on (the
work directory's file system may not support O_DIRECT); qcow2 ``lazy-refcounts=on``,
``overlap-check``, ``encrypt``, ``data-file`` and file ``aio=native``/``pr-manager`` are not
generated; reads are only verified where the model knows the data.

Configuration comes from a :class:`MachineConfig` bound to the class (:func:`machine_class`),
never from module state.

Differential mode (``MachineConfig.diff``, ``blockfuzz diff``): the runner is a
``fuzz.diffengine.DiffRunner`` over two builds, each with its own model.  Rules draw from model
A's state (``self.runner.model``) exactly as above; both models' known-bug state steers I/O away
from stuck nodes (``guard_graphs``).  A declined step is not dropped there: the DiffRunner sends
it to both builds and raises ``NotModeled`` only for known-bug guards.
"""
from __future__ import annotations

import copy
import os
import traceback
from typing import Any, Callable

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

import attrs

from models import ImageSpec, KnownQemuBug, NotModeled, Write
from models import iodata
from models.drivers import DRIVERS
from models.drivers.base import (CHILD, CHILDREN, FILE, FILE_CHILD, FORMAT_NAMES, GROUP, NODE,
                                 Draw)
from models.lengths import node_length
from models.values import FILE_PREFIX

from .draws import boolean, composite, integer, pick, pick_one_of
from . import trace as T
from .boundary import argument_boundary, qapi_boundary
from .engine import DeclinedAfterQemu, Events, Runner
from .errors import BlockfuzzBug, CampaignStop, Finding, HarnessError, HarnessStop
from .findings import FailureSeen, KnownBugs, distinct, internal_signature

MiB = 1 << 20
SEED_IMAGES = (
    ImageSpec("hd0.img", "qcow2", 3 * MiB, writes=(Write(0xA0, 0, MiB),)),
    ImageSpec("hd1.img", "qcow2", None, "hd0.img", "qcow2", writes=(Write(0xA1, MiB, MiB),)),
    ImageSpec("hd2.img", "qcow2", 3 * MiB, writes=(Write(0xA2, 2 * MiB, MiB),)),
)
NAMES = FORMAT_NAMES


@attrs.frozen
class ExampleFinished:
    """Event: an example ended (its teardown ran): steps executed (not declined by the model)
    and drawn, and the build's profile name."""

    executed: int
    drawn: int
    build: str


@attrs.frozen
class StepDeclined:
    """Event: the model declined a drawn step (``NotModeled``; ``guard``: a known-QEMU-bug
    guard, ``KnownQemuBug``), so it was dropped before QEMU saw it."""

    step: dict
    reason: str
    guard: bool


@attrs.frozen
class ReuseArtefact:
    """Event: a failure on a reused QEMU that a fresh QEMU does not show (not a finding)."""

    signature: str
    trace: T.Trace


@attrs.frozen
class MachineConfig:
    """What one campaign's state machine needs (``machine_class`` binds it to a class).

    ``events`` gets every step (``StepDone``) and failure (``FailureSeen``); ``known`` is the
    known-bug table the machine consults so that a known bug ends its example quietly instead
    of being shrunk again; ``on_example_start(machine)`` may raise ``CampaignStop`` (the time
    budget, a signal).  ``diff``: two builds (``fuzz.diffengine``); ``pool``: a
    ``fuzz.session.QemuPool`` that keeps ``-M none`` QEMUs across examples."""

    binaries: Any
    events: Events = attrs.field(factory=Events)
    timeout: float = 5.0
    strict: bool = False
    diff: tuple | None = None
    diff_profiles: tuple = (None, None)
    known: KnownBugs = attrs.field(factory=KnownBugs)
    on_example_start: Callable[[Any], None] | None = None
    pool: Any = None
    machines: tuple[str, ...] = ("none", "none", "none", "pc")
    #: checked before every step: a stop asked for (a signal) ends the example there
    should_stop: Callable[[], bool] | None = None


def machine_class(config: MachineConfig, name: str = "BlockGraphMachine") -> type["BlockGraphMachine"]:
    """A state machine class bound to ``config`` (no module-level state: two campaigns in one
    process do not see each other's)."""
    return type(name, (BlockGraphMachine,), {"config": config, "__module__": __name__})


def image_sets() -> st.SearchStrategy[tuple[ImageSpec, ...]]:
    """The seed's setUp, plus a qcow2 and a raw image of a few different sizes.

    The choices are few on purpose: image sets are created once per campaign and then copied
    from a template cache (~1.5 ms instead of ~45 ms per set)."""
    # hd3 is now and then an overlay of hd1 (size inherited, as QEMU's tests create them):
    # opened with its header chain it reads through two backing files
    # ("file:": its header names the backing with a protocol prefix, as qemu-img create -b
    # file:hd1.img writes it)
    extra = st.tuples(st.sampled_from([384 * 1024, 1024 * 1024, 1536 * 1024 + 512, None, "file:"]),
                      st.sampled_from([64 * 1024, 192 * 1024, 10240]),
                      st.sampled_from([0x3C, 0x5A])).map(lambda t: (
        ImageSpec("hd3.img", "qcow2", t[0] if isinstance(t[0], int) else None,
                  None if isinstance(t[0], int) else (t[0] or "") + "hd1.img",
                  None if isinstance(t[0], int) else "qcow2", writes=(Write(t[2], 0, 65536),)),
        ImageSpec("r0.img", "raw", t[1], writes=(Write(t[2] ^ 0xFF, 0, t[1] // 2),)),
    ))
    return extra.map(lambda e: SEED_IMAGES + e)


class BlockGraphMachine(RuleBasedStateMachine):
    """One QEMU per example (or a pooled one behind a checked reset); one model beside it.
    Use :func:`machine_class` to get a class bound to a campaign's :class:`MachineConfig`."""

    config: MachineConfig | None = None

    def __init__(self) -> None:
        super().__init__()
        if self.config is None:
            raise TypeError("BlockGraphMachine needs a MachineConfig: use machine_class(config)")
        self.session = None
        self.runner: Runner | None = None
        self.steps: list[dict] = []
        self.images: tuple = ()
        self.machine = "none"
        self.skipped = 0
        #: set after a known bug: the rest of the example's steps are not run
        self.halted = False
        self.drawn = 0
        self._observed: list = []

    # -- plumbing ------------------------------------------------------------------------------
    @initialize(images=image_sets(), machine=st.data())
    def start(self, images, machine):
        """One QEMU per example; by default a quarter of them are ``-M pc`` so that
        iothreads and disks (virtio-scsi + scsi-hd) can enter the graph."""
        from .session import Session

        cfg = self.config
        self.images = images
        self.machine = pick(machine, cfg.machines)
        if cfg.on_example_start is not None:
            cfg.on_example_start(self)
        try:
            if cfg.diff is not None:
                # differential mode (fuzz.diffengine): two builds, each beside its own model;
                # rules draw from model A's state (self.runner.model)
                from .diffengine import DiffSession

                self.session = DiffSession(cfg.diff, images, events=cfg.events,
                                           timeout=cfg.timeout, machine=self.machine,
                                           profiles=cfg.diff_profiles,
                                           strict=cfg.strict).__enter__()
            else:
                kw = {"pool": cfg.pool} if cfg.pool is not None else {}
                self.session = Session(cfg.binaries, images, events=cfg.events,
                                       timeout=cfg.timeout, machine=self.machine,
                                       strict=cfg.strict, pipeline=True, lazy=True,
                                       **kw).__enter__()
        except HarnessError as e:
            raise HarnessStop(e) from e
        self.runner = self.session.runner
        for graph in self.guard_graphs():
            graph.guard_known_crashes = True

    def teardown(self) -> None:
        try:
            if self.session is not None and self.runner is not None and not self.halted \
                    and not (self.config.should_stop is not None and self.config.should_stop()):
                # the last step's QEMU side is still in flight (Runner.pipeline); on a stop it
                # is left unchecked, and the reset or the kill takes care of its reply
                self._guarded(self.runner.flush)
        finally:
            # whatever the check raised (a finding, blockfuzz's own bug), the QEMU goes
            self._close_session()

    def _close_session(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            build = self.build
            g = self.runner.model.graph if self.runner is not None else None
            if g is not None and (g.stuck or g.dangling_data_file) and hasattr(session, "discard"):
                # a known QEMU bug is armed in this QEMU (a dangling qcow2 data_file, a node
                # drained for good): the reset's blockdev-del would set it off (seen: SIGSEGV
                # in qcow2_do_close() on 7.2, 10.0 and 11.1), so start the next one fresh
                session.discard()
            session.__exit__(None, None, None)
            self.config.events.emit(ExampleFinished(len(self.steps), self.drawn, build))
        if self.runner is not None:
            # Hypothesis keeps a finished machine in a reference cycle (the machine and its
            # ConjectureData) that only the cyclic collector frees, which a worker runs seldom
            # (fuzz.campaign.gc_tuned); the model's images, megabytes each, must not wait for
            # it.  Measured (11.1.3, one worker): RSS 126 MiB at 5 s and 725 MiB at 135 s
            # before, and growing; only the answers stay, for recorded_steps()
            self._observed = self.runner.observed
            self.runner = None

    @property
    def g(self):
        return self.runner.model.graph

    @property
    def build(self) -> str:
        """The version label known bugs are listed under: the model's profile name."""
        return self.runner.model.profile.name if self.runner is not None else "?"

    def guard_graphs(self) -> list:
        """The model states whose known-bug guards steer generation: the model's, or in
        differential mode both models' (a bug of build B must be avoided too)."""
        guards = getattr(self.runner, "guard_graphs", None)
        return guards() if guards is not None else [self.g]

    def command(self, data, cmd: str, args: dict) -> None:
        """One QMP command whose arguments are a plain struct: now and then one member is
        broken at the QAPI layer or set to its integer type's edge (``argument_boundary``)."""
        if integer(data, 0, 11) == 0:
            args = data.draw(argument_boundary(cmd, args))
        self.do({"qmp": cmd, "args": args})

    def do(self, step: dict) -> None:

        if self.halted:
            return
        if self.config.should_stop is not None and self.config.should_stop():
            raise CampaignStop()
        # (Runner.pipeline: the previous step, which QEMU ran while this one was drawn, is
        # checked inside run(), once this one is predicted and before it goes out; a finding
        # of it ends the trace with it, see _guarded)
        self.drawn += 1
        start = getattr(self.session, "start", None)   # a lazy session's QEMU (Session.lazy)
        if start is not None:
            try:
                start()
            except HarnessError as e:
                raise HarnessStop(e) from e
        self.steps.append(step)
        self._guarded(lambda: self.runner.run(step))

    def _guarded(self, run) -> None:
        """Run a step (or the check of the one in flight) and turn what it raises into the
        campaign's outcome: a decline, a finding, a harness stop or blockfuzz's own bug."""
        try:
            run()
        except NotModeled as e:
            if isinstance(e, DeclinedAfterQemu):
                # the model cannot project its graph after a step QEMU ran: the example
                # cannot go on checked (the step stays in it: QEMU ran it)
                del self.steps[len(self.runner.done):]
                self.config.events.emit(StepDeclined(self.steps[-1], str(e), False))
                self.halted = True
                return
            # The model declines before QEMU sees the command (Runner predicts first), and
            # declining depends only on model state: drop the step, keep the example going.
            step = self.steps.pop()
            self.runner.done.pop()
            self.runner.observed.pop()
            self.skipped += 1
            self.config.events.emit(StepDeclined(step, str(e), isinstance(e, KnownQemuBug)))
            return
        except Finding as e:
            # a finding of the step in flight: the step drawn behind it never ran in QEMU
            # (Runner.run took it off its own lists)
            del self.steps[len(self.runner.done):]
            self._failed(e)
        except HarnessError as e:
            raise HarnessStop(e) from e
        except Exception as e:
            # Anything else is a bug in blockfuzz: keep its trace, then stop the campaign at
            # once instead of letting Hypothesis shrink our own bug for minutes.
            self.config.events.emit(FailureSeen(e, self.trace(), internal_signature(e),
                                                self.build, internal=True))
            if os.environ.get("BLOCKFUZZ_DEBUG"):
                traceback.print_exc()   # Hypothesis shows a KeyboardInterrupt without its cause
            raise BlockfuzzBug(e) from e

    def _failed(self, e: BaseException) -> None:
        """Record the finding; a known bug ends the example quietly (it is not shrunk again),
        any other is raised as its own exception class so Hypothesis shrinks it alone.

        On a QEMU that ran earlier examples (``Session.reused``) a failure counts only once a
        replay on a fresh QEMU fails with the same signature: a reset the checks missed must
        never become a finding.  One that does not come back ends its example quietly and is
        counted (``ReuseArtefact``)."""
        sig = e.signature()
        discard = getattr(self.session, "discard", None)
        if discard is not None:
            discard()   # a QEMU that misbehaved is not worth resetting
        if getattr(self.session, "reused", False) and not self._confirmed_fresh(sig):
            self.config.events.emit(ReuseArtefact(sig, self.trace()))
            self.halted = True
            return
        self.config.events.emit(FailureSeen(e, self.trace(), sig, self.build))
        known, _ = self.config.known.lookup(sig, self.build)
        if known is not None:
            self.halted = True
            return
        raise distinct(e, sig)

    def _confirmed_fresh(self, signature: str) -> bool:
        from .minimize import failure_of

        try:
            again = failure_of(self.trace(), self.config.binaries, self.config.timeout)
        except HarnessError as e:
            raise HarnessStop(e) from e
        return again is not None and again.signature() == signature

    def trace(self) -> T.Trace:
        """The example so far as a finding's trace."""
        digest = "example"
        return T.Trace(name=f"finding {digest}", images=list(self.images),
                       steps=self.recorded_steps(),
                       extra={} if self.machine == "none" else {"machine": self.machine})

    def recorded_steps(self) -> list[dict]:
        """The steps with what each side answered, as a finding's trace records them."""
        out = []
        observed = self.runner.observed if self.runner is not None else self._observed
        for step, seen in zip(self.steps, observed):
            out.append(dict(step, observed=seen) if seen else step)
        return out

    def named_nodes(self) -> list[str]:
        return sorted(n for n in self.g.nodes)

    # -- option reconstruction (what "reopen with the same options" means) ---------------------
    def options_of(self, name: str, top: bool = True) -> dict:
        """The node's explicit options as a nested dict, children inline when inherited."""
        n = self.g.nodes[name]
        d: dict = {}
        for k, v in n.explicit.items():
            if k in ("cache.direct", "cache.no-flush", "read-only") and v == "off":
                continue  # bds_tree_init() defaults, not something a user typed
            _set_dotted(d, k, v)
        if top:
            d["node-name"] = name
        for c in reversed(n.children):
            child = self.g.nodes[c.child]
            if child.inherits_from == name and not child.auto_named:
                value: Any = self.options_of(child.name, top=False)
            else:
                value = child.name
            if "." in c.name:
                # children.N -> the list QAPI wants, in index order
                kids = d.setdefault(c.name.split(".")[0], [])
                index = int(c.name.split(".")[1])
                kids.extend([None] * (index + 1 - len(kids)))
                kids[index] = value
            else:
                d[c.name] = value
        if "backing" not in d and n.driver.has_header_backing(self.g, n):
            d["backing"] = None
        return d

    # -- rules -----------------------------------------------------------------------------------
    @rule(data=st.data())
    def blockdev_add(self, data):
        d = add_args.inline(data, tuple(self.named_nodes()), tuple(i.file for i in self.images),
                            tuple(sorted(self.g.objects)))
        self.do({"qmp": "blockdev-add", "args": d})

    @precondition(lambda self: self.runner is not None and bool(self.g.nodes))
    @rule(data=st.data())
    def blockdev_reopen(self, data):
        names = [n for n in self.named_nodes()]
        count = pick(data, [1, 1, 1, 2, 2, 3])
        # Nodes a job or a disk works on are where frozen links, implicit filters and
        # AioContexts matter: pick them more often than their share.  Otherwise mostly nodes
        # whose driver can be reopened at all (BlockDriver.can_reopen), so that reopens get past
        # "does not support reopening files" and into the checks behind it.
        busy = self.busy_nodes()
        reopenable = self.reopenable_nodes()
        if busy and boolean(data):
            pool = busy
        elif reopenable and integer(data, 0, 7):
            pool = reopenable
        else:
            pool = names
        picked = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=count))
        files = tuple(sorted(n for n, node in self.g.nodes.items() if node.drv == "file"))
        elements = []
        for name in picked:
            opts = self.options_of(name)
            if pool is busy and boolean(data):
                # relink a job's or a disk's node: frozen links, implicit filters, AioContexts
                if self.g.nodes[name].driver.supports_backing:
                    opts["backing"] = pick(data, [None, *busy, *names])
            opts = mutate.inline(data, opts, tuple(names), files)
            if integer(data, 0, 11) == 0:
                opts = data.draw(qapi_boundary(opts))
            elements.append(opts)
        self.do({"qmp": "blockdev-reopen", "args": {"options": elements}})

    def reopenable_nodes(self) -> list[str]:
        """Named nodes a reopen can address (auto-named ones never pass "Cannot change the
        option 'node-name'") whose driver has ``.bdrv_reopen_prepare``."""
        return [n for n, node in sorted(self.g.nodes.items())
                if node.driver.can_reopen and not node.auto_named]

    @precondition(lambda self: self.runner is not None and bool(self.reopenable_nodes()))
    @rule(data=st.data())
    def relink(self, data):
        """A reopen that changes one link and nothing else: a node's ``backing`` (to another
        node or null) or ``file`` (to another node): the graph surgery iotest 245 is about,
        drawn often enough that several happen in one example, with deletes in between."""
        reopenable = self.reopenable_nodes()
        # the nodes around a job or a disk half the time: relinking them is where implicit
        # filters ("Cannot replace implicit backing child") and AioContexts ("Cannot change
        # iothread of active block backend") come in
        busy = [n for n in self.busy_nodes() if n in reopenable]
        name = pick(data, busy if busy and boolean(data) else reopenable)
        node = self.g.nodes[name]
        opts = self.options_of(name)
        others = [n for n in self.named_nodes() if n != name]
        busy_others = [n for n in self.busy_nodes() if n != name]
        links = [k for k, ok in (("backing", node.driver.supports_backing),
                                 ("file", node.driver.file_first)) if ok]
        if not links or not others:
            return
        link = pick(data, links)
        targets = busy_others if busy_others and boolean(data) else others
        # across AioContexts (the model's Node.ctx: no query shows it): a node whose tree a
        # disk pins, relinked to a node in another context, is iotest 245's iothread error
        across = [n for n in others if self.g.nodes[n].ctx != node.ctx]
        if across and boolean(data):
            # ... most of all one that a disk pins too: neither side can move, so QEMU refuses
            # ("Cannot change iothread of active block backend"), where two free ones just move
            pinned = self.pinned_nodes()
            targets = [n for n in across if n in pinned] * 2 + across
        if link == "backing":
            opts["backing"] = pick(data, [None, *targets])
        else:
            opts["file"] = pick(data, targets)
        self.do({"qmp": "blockdev-reopen", "args": {"options": [opts]}})

    # Objects and devices only once a node exists: Hypothesis' swarm testing switches rules off
    # per example, and without blockdev_add these would otherwise fill whole examples.
    @precondition(lambda self: self.runner is not None and bool(self.g.nodes))
    @rule(data=st.data())
    def qom_object(self, data):
        """object-add or object-del of a throttle group (one rule, so that objects do not
        crowd out the block-graph rules)."""
        if self.g.objects and integer(data, 0, 2) == 0:
            oid = pick(data, sorted(self.g.objects) + ["nope"])
            self.do({"qmp": "object-del", "args": {"id": oid}})
        else:
            self.do({"qmp": "object-add",
                     "args": object_add_args.inline(data, tuple(sorted(self.g.objects)))})

    def busy_nodes(self) -> list[str]:
        """Nodes of a job's chain (and the overlay above a commit's top), and nodes with a
        guest disk."""
        from models.devices import Disk

        out: set[str] = set()
        for job in self.g.jobs.values():
            for name in (job.device, job.top, job.base, job.filter):
                if name in self.g.nodes:
                    out.add(name)
                    out.update(self.chain_below(name)[:3])
                    out.update(c.parent for c in self.g.nodes[name].parents if c.parent in self.g.nodes)
        out.update(d.node for d in self.g.devices.values() if isinstance(d, Disk) and d.node in self.g.nodes)
        # auto-named nodes are never reopenable ("Cannot change the option 'node-name'")
        return sorted(n for n in out if not self.g.nodes[n].auto_named)

    def pinned_nodes(self) -> set[str]:
        """Nodes whose AioContext a guest disk pins: the disk's node and everything below it."""
        from models.devices import Disk

        out: set[str] = set()
        todo = [d.node for d in self.g.devices.values() if isinstance(d, Disk) and d.pinned]
        while todo:
            n = todo.pop()
            if n in out or n not in self.g.nodes:
                continue
            out.add(n)
            todo += [c.child for c in self.g.nodes[n].children]
        return out

    def chain_below(self, name: str) -> list[str]:
        from models.jobs import chain_next

        out, n = [], chain_next(self.g, self.g.nodes[name])
        while n is not None and len(out) < 8:
            out.append(n.name)
            n = chain_next(self.g, n)
        return out

    @precondition(lambda self: self.runner is not None and bool(self.g.nodes))
    @rule(data=st.data())
    def block_job(self, data):
        """block-stream or block-commit, mostly on a qcow2 node with a backing chain, mostly
        with auto-finalize off so that later steps meet the job while it is pending."""
        names = self.named_nodes()
        stream = pick(data, ["stream", "commit"]) == "stream"
        chains = [n for n, node in sorted(self.g.nodes.items())
                  if node.drv == "qcow2" and self.g.cow_child(node) is not None
                  and (stream or not node.parents)]   # commit wants a root
        # without a chain, a qcow2 node still makes a job the model follows (a stream with
        # nothing to copy, a commit's errors); other drivers mostly meet the model's limits
        formats = [n for n in names if self.g.nodes[n].drv == "qcow2"]
        if chains and integer(data, 0, 7):
            device = pick(data, chains)
        elif formats and integer(data, 0, 3):
            device = pick(data, formats)
        else:
            device = pick(data, names + ["nope"])
        below = self.chain_below(device) if device in self.g.nodes else []
        args: dict = {"device": device}
        if integer(data, 0, 9):
            args["job-id"] = pick(data, ["job0", "job0", "job1", "1bad"])
        if stream:
            if below and integer(data, 0, 2) == 0:
                args["base-node"] = pick(data, below + names[:1])
            if below and integer(data, 0, 3) == 0:
                # the newer interface: the last node streamed from (now and then together
                # with base-node, base or backing-file: QEMU refuses those combinations first)
                args["bottom"] = pick(data, below + [device, *names[:1]])
            if integer(data, 0, 11) == 0:
                args[pick(data, ["base", "backing-file"])] = data.draw(
                    st.sampled_from([i.file for i in self.images][:2]))
        else:
            # mostly a top above the bottom of the chain and a base below the top
            tops = [device] + below[:-1] if below else [device]
            if below and boolean(data):
                args["top-node"] = pick(data, tops if integer(data, 0, 4) else [device] + below)
            if below and integer(data, 0, 2) == 0:
                top = args.get("top-node", device)
                under = self.chain_below(top) if top in self.g.nodes else []
                args["base-node"] = pick(data, under if under and integer(data, 0, 4) else below + [device])
            if integer(data, 0, 7) == 0:
                # by file name, as QEMU's job iotests give them (bdrv_find_backing_image())
                args[pick(data, ["top", "base"])] = data.draw(
                    st.sampled_from([i.file for i in self.images]))
        if integer(data, 0, 5) == 0:
            # the name the overlay's header gets in place of the base's filename (refused
            # for a whole-chain stream and an active commit)
            args["backing-file"] = pick(data, self.header_names())
        if integer(data, 0, 3) == 0:
            args["filter-node-name"] = pick(data, ["jf0", "jf1", "hd0", "#x"])
        args["auto-finalize"] = pick(data, [False, False, True])
        if integer(data, 0, 5) == 0:
            args["auto-dismiss"] = False
        self.command(data, "block-stream" if stream else "block-commit", args)

    @precondition(lambda self: self.runner is not None and len(self.g.nodes) >= 2)
    @rule(data=st.data())
    def mirror(self, data):
        """blockdev-mirror: mostly a root node into another root of the same length (the
        size check is inside the job), sync full, top or none; now and then the checks before
        that (replaces, granularity, buf-size, speed, the job id, mirroring into itself)."""
        names = self.named_nodes()
        roots = [n for n in names if not self.g.nodes[n].parents and not self.g.job_parents(n)]
        device = pick(data, roots * 4 + names + ["nope"])
        dev = self.g.nodes.get(device)
        length = self.length_of(device)
        same = [n for n in roots if n != device and self.length_of(n) == length]
        target = pick(data, same * 6 + roots + names + ["nope"])
        args: dict = {"device": device, "target": target,
                      "sync": pick(data, ["full", "full", "top", "none", "bitmap"])}
        if integer(data, 0, 9):
            args["job-id"] = pick(data, ["job0", "job0", "job1", "1bad"])
        if integer(data, 0, 5) == 0:
            below = self.chain_below(device) if dev is not None else []
            args["replaces"] = pick(data, [device, *below, *names[:2], "nope"])
        if integer(data, 0, 7) == 0:
            args["granularity"] = pick(data, [65536, 512, 1000, 256, 1 << 27])
        if integer(data, 0, 15) == 0:
            args[pick(data, ["buf-size", "speed"])] = -1
        if integer(data, 0, 3) == 0:
            args["filter-node-name"] = pick(data, ["jf0", "jf1", "hd0", "#x"])
        args["auto-finalize"] = pick(data, [False, True, True])
        if integer(data, 0, 5) == 0:
            args["auto-dismiss"] = False
        self.command(data, "blockdev-mirror", args)

    @precondition(lambda self: self.runner is not None and bool(self.g.jobs))
    @rule(data=st.data())
    def job_verb(self, data):
        jid = pick(data, sorted(self.g.jobs) + ["nope"])
        verb = pick(data, ["job-finalize", "job-finalize", "job-cancel",
                                          "job-dismiss", "block-job-complete", "block-job-pause",
                                          "job-pause", "block-job-resume", "job-resume",
                                          "job-complete", "block-job-cancel"])
        key = "device" if verb.startswith("block-job-") else "id"
        args: dict = {key: jid}
        if verb == "block-job-cancel" and boolean(data):
            args["force"] = boolean(data)
        self.command(data, verb, args)

    @precondition(lambda self: self.runner is not None and self.machine == "pc" and bool(self.g.nodes))
    @rule(data=st.data())
    def device(self, data):
        """An iothread, a virtio-scsi controller (with or without an iothread) or a scsi-hd
        disk on a node: the AioContext rules of the seed's iothread tests."""
        from models.devices import Controller

        from models.devices import Disk

        kind = pick(data, ["iothread", "controller", "disk", "disk"])
        iothreads = sorted(k for k, o in self.g.objects.items() if o.qom_type == "iothread")
        controllers = sorted(k for k, d in self.g.devices.items() if isinstance(d, Controller))
        # shaped towards disks in two different AioContexts (iotest 245's iothread tests):
        # an iothread no controller uses yet, and a controller whose context no disk has yet
        used = {d.iothread for d in self.g.devices.values() if isinstance(d, Controller)}
        fresh_iothreads = [i for i in iothreads if i not in used]
        disk_ctxs = {self.g.devices[d.bus.split(".")[0]].iothread for d in self.g.devices.values()
                     if isinstance(d, Disk) and d.bus.split(".")[0] in self.g.devices}
        fresh_controllers = [c for c in controllers if self.g.devices[c].iothread not in disk_ctxs]
        if kind == "iothread":
            self.do({"qmp": "object-add", "args": {
                "qom-type": "iothread", "id": pick(data, ["iothread0", "iothread1"])}})
        elif kind == "controller" or not controllers or not self.g.nodes:
            args = {"driver": "virtio-scsi", "id": pick(data, ["scsi0", "scsi1", "scsi2"])}
            it = pick(data, fresh_iothreads * 3 + iothreads * 3 + ["", "", "nope"])
            if it or boolean(data):
                args["iothread"] = it
            self.do({"qmp": "device_add", "args": args})
        else:
            self.do({"qmp": "device_add", "args": {
                "driver": "scsi-hd", "drive": pick(data, 
                    [n for n, node in sorted(self.g.nodes.items()) if not node.parents] * 3
                    + self.named_nodes() + ["nope"]),
                "bus": pick(data, fresh_controllers * 2 + controllers + ["scsi9"]) + ".0",
                "share-rw": pick(data, [True, True, True, False])}})

    def overlay_candidates(self) -> list[str]:
        """Nodes QEMU takes as a snapshot overlay: a format with backing support, no backing
        child and nobody reading it."""
        from models.perms import CONSISTENT_READ, Perms

        perms = Perms(self.g, {}, {})
        return [n for n, node in sorted(self.g.nodes.items())
                if node.driver.supports_backing and not node.driver.is_filter
                and self.g.cow_child(node) is None and not perms.node[n][0] & CONSISTENT_READ]

    @precondition(lambda self: self.runner is not None and bool(self.g.nodes))
    @rule(data=st.data())
    def snapshot(self, data):
        """blockdev-snapshot of a node onto an overlay; with no overlay at hand, half the time
        the overlay is added first (a qcow2 node with ``backing: null``, as iotests 085 and
        273 add theirs), so that the snapshot itself runs on a later step."""
        overlays = self.overlay_candidates()
        if not overlays and boolean(data):
            used = {n.filename for n in self.g.nodes.values() if n.filename}
            files = [i.file for i in self.images if i.format == "qcow2"]
            free = [f for f in files if f not in used] or files
            name = pick(data, ["ov0", "ov1"])
            self.do({"qmp": "blockdev-add", "args": {
                "driver": "qcow2", "node-name": name, "backing": None,
                "file": {"driver": "file", "filename": pick(data, free)}}})
            return
        nodes = self.named_nodes()
        node = pick(data, 
            [n for n in nodes if not self.g.nodes[n].parents] * 2 + nodes + ["nope"])
        overlay = pick(data, overlays * 4 + nodes + ["nope"])
        self.command(data, "blockdev-snapshot", {"node": node, "overlay": overlay})

    @precondition(lambda self: self.runner is not None and bool(self.g.nodes))
    @rule(data=st.data())
    def resize(self, data):
        """block_resize: mostly a small grow or shrink around the node's length (sector
        aligned or not), now and then the boundaries: 0, -1, BDRV_MAX_LENGTH and past it, a
        device name (never found: no named BlockBackends) beside the node name."""
        from models.resize import MAX_LENGTH

        nodes = self.named_nodes()
        name = pick(data, nodes * 4 + ["nope"])
        length = self.length_of(name) or 1 << 20
        size = pick_one_of(data,
                           [length + 65536, length + 512, length + 1000, length - 65536,
                            length - 512, length, 2 * length],
                           [0, -1, 512, MAX_LENGTH, MAX_LENGTH + 1, 64 << 20, (64 << 20) + 512])
        args: dict = {"node-name": name, "size": size}
        if integer(data, 0, 9) == 0:
            args["device"] = pick(data, [name, "nope", ""])
        self.command(data, "block_resize", args)

    def length_of(self, name: str) -> int | None:
        """A node's length as the model sees it, or None (no such node, or a length the model
        does not know: generation must never raise where the model declines)."""
        n = self.g.nodes.get(name)
        if n is None:
            return None
        try:
            return node_length(self.g, n)
        except NotModeled:
            return None

    @precondition(lambda self: self.runner is not None and bool(self.g.nodes))
    @rule(data=st.data())
    def create(self, data):
        """blockdev-create: a file (over one of the trace's images, or in a directory that
        does not exist), a qcow2 image over a file node (now and then with an option check
        that fails), a driver without a create, or a new image made and opened (new_image)."""
        files = [i.file for i in self.images]
        kind = pick(data, ["file", "qcow2", "qcow2", "qcow2", "raw", "new"])
        if kind == "new":
            # a rule of its own made a quarter of all steps creates and took the share of the
            # rarer commands (x-blockdev-change fell from 95 to 5 steps in ten minutes)
            self.new_image(data)
            return
        if kind == "file":
            opts: dict = {"driver": "file", "filename": pick(data, files + ["nodir/x.img"]),
                          "size": pick(data, [1 << 20, 3 << 20, 1000, 0, -1])}
        elif kind == "qcow2":
            file_nodes = [n for n, node in sorted(self.g.nodes.items()) if node.drv == "file"]
            opts = {"driver": "qcow2",
                    "file": pick(data, file_nodes * 4 + self.named_nodes() + ["nope"]),
                    "size": pick(data, [1 << 20, 3 << 20, 1 << 20, 1000, 0])}
            if integer(data, 0, 2) == 0:
                # a header backing name, now and then without a format: opening the image
                # then probes the backing file's format (find_image_format())
                opts["backing-file"] = pick(data, self.header_names())
                fmt = pick(data, [None, None, "qcow2", "raw"])
                if fmt is not None:
                    opts["backing-fmt"] = fmt
            if integer(data, 0, 4) == 0:
                key, values = pick(data, [
                    ("cluster-size", [1234, 512, 4 << 20]), ("version", ["v2", "v1"]),
                    ("refcount-bits", [7, 128]), ("backing-fmt", ["qcow2"]), ("lazy-refcounts", [True])])
                opts[key] = pick(data, values)
        else:
            opts = {"driver": "raw"}
        jid = pick(data, ["c0", "c0", "c1", "1bad"])
        self.do({"qmp": "blockdev-create", "args": {"job-id": jid, "options": opts}})

    def new_image(self, data):
        """A new qcow2 image as QEMU's iotests make one (206: blockdev-create of a file, a file
        node on it, blockdev-create of qcow2 there), often with a header backing name, with or
        without a format, then opened: the open takes the backing from the header and probes
        its format where the header names none (``find_image_format()``).  Each step is
        checked on its own; the recipe stops where one fails."""
        fname = pick(data, ["new0.img", "new1.img"])
        self.do({"qmp": "blockdev-create", "args": {"job-id": "c9", "options": {
            "driver": "file", "filename": fname, "size": 0}}})
        if not self._dismissed("c9"):
            return
        fnode = fname[:-4] + "-file"
        self.do({"qmp": "blockdev-add", "args": {"driver": "file", "node-name": fnode,
                                                  "filename": fname}})
        if fnode not in self.g.nodes:
            return
        opts: dict = {"driver": "qcow2", "file": fnode, "size": pick(data, [1 << 20, 3 << 20])}
        if integer(data, 0, 3):
            opts["backing-file"] = pick(data, self.header_names())
            fmt = pick(data, [None, None, "qcow2", "raw"])
            if fmt is not None:
                opts["backing-fmt"] = fmt
        self.do({"qmp": "blockdev-create", "args": {"job-id": "c9", "options": opts}})
        if not self._dismissed("c9"):
            return
        self.do({"qmp": "blockdev-add", "args": {"driver": "qcow2", "node-name": fname[:-4],
                                                  "file": fnode}})

    def _dismissed(self, jid: str) -> bool:
        """job-dismiss of a create job the model says concluded without error; whether it did."""
        job = self.g.jobs.get(jid)
        if job is None or job.status != "concluded" or job.error is not None:
            return False
        self.do({"qmp": "job-dismiss", "args": {"id": jid}})
        return jid not in self.g.jobs

    def header_names(self) -> list[str]:
        """Backing file names for an image header: the trace's images, by plain name and
        with the ``file:`` prefix, a missing one and the empty name."""
        files = [i.file for i in self.images]
        return files * 2 + [FILE_PREFIX + f for f in files[:2]] + ["nope.img", ""]

    def quorums(self) -> list[str]:
        return sorted(n for n, node in self.g.nodes.items() if node.driver.changes_children)

    @precondition(lambda self: self.runner is not None and bool(self.quorums()))
    @rule(data=st.data())
    def child_change(self, data):
        """x-blockdev-change: remove a quorum child (by edge name) or add a node as a new one,
        mostly a node without parents (the only kind QEMU takes), now and then the checks
        before that: a non-quorum parent, a missing or taken node, both or neither member."""
        parent = pick(data, self.quorums() * 4 + self.named_nodes() + ["nope"])
        args: dict = {"parent": parent}
        kind = pick(data, ["child", "child", "node", "node", "node", "both", "neither"])
        p = self.g.nodes.get(parent)
        edges = sorted(c.name for c in p.children) if p is not None else []
        free = [n for n, node in sorted(self.g.nodes.items())
                if not node.parents and not self.g.job_parents(n) and n != parent]
        if kind in ("child", "both"):
            args["child"] = pick(data, edges * 3 + ["children.9", "file"])
        if kind in ("node", "both"):
            args["node"] = pick(data, free * 4 + self.named_nodes() + ["nope"])
        self.command(data, "x-blockdev-change", args)

    @precondition(lambda self: self.runner is not None and self.machine == "pc"
                  and len([n for n in self.g.nodes.values() if not n.parents]) >= 2)
    @rule(data=st.data())
    def aio_pair(self, data):
        """Two guest disks in two iothreads, then a link from one's node to the other's: each
        call takes the next step this recipe still lacks (two iothreads, a controller on each,
        a disk on each), so that an example gets there in a few calls; the last step is
        iotest 245's iothread error ("Cannot change iothread of active block backend")."""
        from models.devices import Controller, Disk

        iothreads = sorted(k for k, o in self.g.objects.items() if o.qom_type == "iothread")
        ctrls = {k: d for k, d in self.g.devices.items() if isinstance(d, Controller)}
        disks = [d for d in self.g.devices.values() if isinstance(d, Disk) and d.node in self.g.nodes]
        ctx_of_bus = {f"{k}.0": d.iothread for k, d in ctrls.items()}
        disk_ctx = {d.node: ctx_of_bus.get(d.bus) for d in disks}
        if len(iothreads) < 2:
            name = next((i for i in ("iothread0", "iothread1") if i not in iothreads), None)
            if name is not None:
                self.do({"qmp": "object-add", "args": {"qom-type": "iothread", "id": name}})
            return
        used = {d.iothread for d in ctrls.values()}
        if len(used - {None}) < 2:
            it = next((i for i in iothreads if i not in used), None)
            cid = next((c for c in ("scsi0", "scsi1", "scsi2") if c not in ctrls), None)
            if it is not None and cid is not None:
                self.do({"qmp": "device_add", "args": {"driver": "virtio-scsi", "id": cid, "iothread": it}})
            return
        if len({c for c in disk_ctx.values() if c}) < 2:
            free = [n for n, node in sorted(self.g.nodes.items()) if not node.parents and n not in disk_ctx]
            buses = [b for b, c in sorted(ctx_of_bus.items()) if c and c not in disk_ctx.values()]
            if not free or not buses:
                return
            self.do({"qmp": "device_add", "args": {
                "driver": "scsi-hd", "drive": pick(data, free),
                "bus": pick(data, buses), "share-rw": True}})
            return
        pairs = [(a, b) for a in sorted(disk_ctx) for b in sorted(disk_ctx)
                 if disk_ctx[a] and disk_ctx[b] and disk_ctx[a] != disk_ctx[b]
                 and self.g.nodes[a].driver.supports_backing and self.g.nodes[a].driver.can_reopen
                 and not self.g.nodes[a].auto_named]
        if not pairs:
            return
        a, b = pick(data, pairs)
        opts = self.options_of(a)
        opts["backing"] = b
        self.do({"qmp": "blockdev-reopen", "args": {"options": [opts]}})

    @precondition(lambda self: self.runner is not None and bool(self.g.nodes))
    @rule(data=st.data())
    def blockdev_del(self, data):
        names = self.named_nodes()
        name = pick(data, names) if integer(data, 0, 15) else "nope"
        self.do({"qmp": "blockdev-del", "args": {"node-name": name}})

    def io_nodes(self, write: bool) -> list[str]:
        out = []
        guards = self.guard_graphs()
        for name, n in sorted(self.g.nodes.items()):
            if any(g.reaches_stuck(g.nodes[name]) for g in guards if name in g.nodes):
                continue  # known QEMU bug: this I/O would hang (VersionProfile)
            try:
                if write:
                    if iodata.can_write(self.g, n):
                        out.append(name)
                elif n.driver.qemu_io_readable(self.g, n):
                    out.append(name)
            except NotModeled:
                continue
        return out

    @precondition(lambda self: self.runner is not None and bool(self.io_nodes(True)))
    @rule(data=st.data())
    def qemu_io_write(self, data):
        name = pick(data, self.io_nodes(True))
        length = node_length(self.g, self.g.nodes[name])
        if integer(data, 0, 5) == 0:
            # a zero write (-z: the zero flag; -u: the host cluster freed too), cluster-aligned
            # as a rule: a partial cluster is declined (its COW is not followed)
            clusters = -(-length // 65536)
            if clusters and integer(data, 0, 7):
                first = integer(data, 0, clusters - 1)
                count = integer(data, 1, min(4, clusters - first))
                off, ln = first * 65536, min(count * 65536, length - first * 65536)
            else:
                off, ln = _range.inline(data, length)
            flags = pick(data, ["-z", "-z", "-z -u"])
            self.do({"qmp": "human-monitor-command",
                     "args": {"command-line": f'qemu-io {name} "write {flags} {off} {ln}"'}})
            return
        off, ln = _range.inline(data, length)
        pattern = integer(data, 1, 255)
        self.do({"qmp": "human-monitor-command",
                 "args": {"command-line": f'qemu-io {name} "write -P 0x{pattern:02x} {off} {ln}"'}})

    @precondition(lambda self: self.runner is not None and bool(self.io_nodes(False)))
    @rule(data=st.data())
    def qemu_io_read(self, data):
        readable = self.io_nodes(False)
        # reads through backing chains two or more deep check copy-on-write across several
        # overlays: prefer them when there are any
        deep = [n for n in readable if len(self.chain_below(n)) >= 2]
        pool = deep if deep and boolean(data) else readable
        name = pick(data, pool)
        n = self.g.nodes[name]
        length = node_length(self.g, n)
        off, ln = _range.inline(data, length)
        try:
            content = n.driver.peek(self.g, n, off, min(ln, max(0, length - off))) if off < length else b""
        except (iodata.IoFailed, NotModeled):
            content = b""   # a quorum vote that fails: the read is still drawn, and predicted
        if content:
            # verify per extent: the first uniform run of what the model predicts
            first = content[0]
            run = len(content) - len(content.lstrip(bytes([first])))
            ln = run if integer(data, 0, 4) else ln
            pattern = first if integer(data, 0, 5) else integer(data, 0, 255)
        else:
            pattern = integer(data, 0, 255)
        self.do({"qmp": "human-monitor-command",
                 "args": {"command-line": f'qemu-io {name} "read -P 0x{pattern:02x} {off} {ln}"'}})


@composite
def _range(draw, length: int):
    if length == 0 or integer(draw, 0, 12) == 0:
        return pick(draw, [(0, 512), (length, 512), (max(0, length - 512), 1024)])
    unit = pick(draw, [1, 512, 65536])
    off = integer(draw, 0, max(0, (length - 1) // unit)) * unit
    ln = integer(draw, 1, max(1, min(4 * 65536, length - off) // unit)) * unit
    return off, min(ln, length - off) if unit == 1 else ln


GROUPS = ("group0", "group1", "group2")


@composite
def object_add_args(draw, existing: tuple) -> dict:
    """object-add of a throttle group: fresh or duplicate ids, valid and invalid limits."""
    oid = pick(draw, GROUPS + existing[:1] + ("1bad",))
    d: dict = {"qom-type": "throttle-group", "id": oid}
    if integer(draw, 0, 5):
        keys = draw(st.lists(st.sampled_from(["iops-total", "iops-read", "bps-total", "bps-write",
                                              "iops-total-max"]), max_size=2, unique=True))
        # valid limits are high enough never to delay the fuzzer's I/O (a leaky bucket lets
        # the first request through and then waits: bps-write 1000 makes a 192 KiB write take
        # minutes, which would be reported as a hang)
        d["limits"] = {k: pick(draw, 
            [10**6, 2 * 10**6, 0, -1, 10**15 + 1] if k.startswith("iops") else
            [10**12, 0, -1, 10**15 + 1]) for k in keys}
    return d


def _child_ref(draw, names: tuple, files: tuple, name: str):
    """A child: a reference to an existing node, or an inline qcow2-over-file tree (now and
    then a qcow2 over an existing node)."""
    if names and integer(draw, 0, 2):
        return pick(draw, names)
    if names and integer(draw, 0, 3) == 0:
        return {"driver": "qcow2", "file": pick(draw, names)}
    fd: dict = {"driver": "file", "filename": pick(draw, files)}
    if boolean(draw):
        fd["node-name"] = name + "-f" if len(name) < 28 and name else "f8"
    if boolean(draw):
        return fd
    return {"driver": "qcow2", "file": fd}


def _file_child(draw, names: tuple, files: tuple, name: str):
    """A format's ``file``: now and then an existing node, mostly an inline file node."""
    if names and integer(draw, 0, 3) == 0:
        return pick(draw, names)
    fd: dict = {"driver": "file", "filename": pick(draw, files)}
    if boolean(draw):
        fd["node-name"] = name + "-file" if name else "f9"
    return fd


def _member_value(draw, spec: Draw, names: tuple, files: tuple, groups: tuple, name: str):
    """One value of a driver's ``Gen`` member: a literal, or a source drawn now
    (``models.drivers.base``: NODE, FILE, GROUP, CHILD, FILE_CHILD, CHILDREN)."""
    pool: list = []
    for v in spec.values:
        pool.extend({NODE: names, FILE: files, GROUP: groups}.get(v, (v,)) if isinstance(v, str) else (v,))
    v = pick(draw, pool or ["nope"])   # a source with nothing in it: a missing one
    if v == CHILD:
        return _child_ref(draw, names, files, name)
    if v == FILE_CHILD:
        return _file_child(draw, names, files, name)
    if v == CHILDREN:
        kids = draw(st.lists(st.sampled_from(names) if names else st.just("nope"), min_size=0, max_size=3))
        if integer(draw, 0, 3) == 0:
            kids.append(_child_ref(draw, (), files, name))
        return kids
    return v


#: drivers in the order Hypothesis shrinks towards, each as often as its ``Gen.weight``
_WEIGHTED = tuple(name for name, d in DRIVERS.items() for _ in range(d.gen.weight))


@composite
def add_args(draw, names: tuple, files: tuple, groups: tuple = ()) -> dict:
    """blockdev-add arguments: valid trees mostly, invalid names and values sometimes.  What is
    drawn for each driver is its ``BlockDriver.gen`` (``models.drivers``)."""
    drv = pick(draw, _WEIGHTED)
    gen = DRIVERS[drv].gen
    if gen.bad_names and integer(draw, 0, 15) == 0:  # now and then a bad or duplicate name
        name = pick(draw, ("", "1bad", "x" * 32, "a" * 31) + tuple(names[:3]))
    else:
        name = pick(draw, gen.names)
    d: dict = {"driver": drv, "node-name": name}
    for key, spec in gen.members.items():
        if spec.every == 1 or integer(draw, 0, spec.every - 1) == 0:
            # a second child of one node gets a node-name of its own ("bv" -> "bvr")
            child_name = name + "r" if key == "raw" else name
            d[key] = _member_value(draw, spec, names, files, groups, child_name)
    _generic(draw, d)
    if integer(draw, 0, 9) == 0:
        d = draw(qapi_boundary(d))   # now and then one value a QAPI visitor refuses
    return d




def _generic(draw, d: dict) -> None:
    if integer(draw, 0, 3) == 0:
        d["read-only"] = boolean(draw)
    if integer(draw, 0, 4) == 0:
        d["detect-zeroes"] = pick(draw, ["off", "on", "unmap"])
    if integer(draw, 0, 4) == 0:
        d["discard"] = pick(draw, ["ignore", "unmap"])
    if integer(draw, 0, 6) == 0:
        d["cache"] = {"no-flush": boolean(draw)}
    if integer(draw, 0, 12) == 0:
        d["force-share"] = boolean(draw)
    if integer(draw, 0, 15) == 0:
        d[pick(draw, ["bogus", "detect-zeroes", "read-only", "driver"])] = \
            pick(draw, [None, 7, "", "nope"])


def _driver_has(d: dict, fact: str) -> bool:
    """Whether the driver named in options ``d`` is a modelled one with ``fact`` true."""
    name = d.get("driver")   # a mutated dict may hold anything here
    drv = DRIVERS.get(name) if isinstance(name, str) else None
    return drv is not None and bool(getattr(drv, fact))


@composite
def mutate(draw, opts: dict, names: tuple, files: tuple = ()) -> dict:
    """Random mutations of a node's current options: drop, change, invalidate, swap
    references, null; children's dicts too."""
    d = copy.deepcopy(opts)
    for _ in range(integer(draw, 0, 3)):
        kind = pick(draw, ["ro", "dz", "discard", "backing", "backing", "file", "file",
                                     "drop", "child", "driver", "driver", "driver", "driver", "bad",
                                     "noflush", "swapname", "nonode", "stale-dict", "group"])
        if kind == "ro":
            d["read-only"] = boolean(draw)
        elif kind == "dz":
            d["detect-zeroes"] = pick(draw, ["off", "on", "unmap"])
        elif kind == "discard":
            d["discard"] = pick(draw, ["ignore", "unmap"])
        elif kind == "noflush":
            d["cache"] = {"no-flush": boolean(draw)}
        elif kind == "backing" and _driver_has(d, "supports_backing"):
            d["backing"] = pick(draw, [None, *names, "nope", ""])
        elif kind == "file" and _driver_has(d, "file_first"):
            # another node's protocol node most of the time: swaps and permission conflicts
            d["file"] = pick(draw, files if files and boolean(draw) else [*names, "nope"])
        elif kind == "drop":
            keys = sorted(d)
            if keys:
                key = pick(draw, keys)
                if key != "node-name" or integer(draw, 0, 7) == 0:
                    del d[key]
        elif kind == "child":
            kids = sorted(k for k, v in d.items() if isinstance(v, dict) and k != "cache")
            if kids:
                k = pick(draw, kids)
                sub = d[k]
                choice = pick(draw, ["ro", "dz", "name", "drop-name", "locking",
                                               "file-opt"])
                if choice == "ro":
                    sub["read-only"] = boolean(draw)
                elif choice == "dz":
                    sub["detect-zeroes"] = pick(draw, ["off", "on", "unmap"])
                elif choice == "name":
                    sub["node-name"] = pick(draw, ["newname", *names])
                elif choice == "drop-name":
                    sub.pop("node-name", None)
                elif choice == "locking" and sub.get("driver") == "file":
                    sub["locking"] = pick(draw, ["on", "off", "auto"])
                elif choice == "file-opt" and sub.get("driver") == "file":
                    key = pick(draw, ["aio", "filename", "x-check-cache-dropped"])
                    sub[key] = pick(draw, {
                        "aio": ["threads", "native"], "filename": [None, "hd1.img", 7],
                        "x-check-cache-dropped": [True, False]}[key])
        elif kind == "stale-dict":
            # a reference replaced by a dict of options, as if the child were still inline:
            # reopen never opens new nodes ("Cannot change the option 'backing.driver'")
            refs = sorted(k for k in ("backing", "file") if isinstance(d.get(k), str) and d[k] in names)
            if refs:
                k = pick(draw, refs)
                f = {"driver": "file", "filename": pick(draw, ["hd0.img", "hd2.img"])}
                d[k] = pick(draw, [dict(f, **{"node-name": d[k]}),
                                             {"driver": "qcow2", "node-name": d[k], "file": f}])
        elif kind in ("driver", "group") and _driver_has(d, "can_reopen"):
            # the driver's own options, as its BlockDriver.gen.reopen says (models.drivers)
            choices = DRIVERS[d["driver"]].gen.reopen
            if choices:
                count = integer(draw, 1, min(3, len(choices)))
                for key in draw(st.lists(st.sampled_from(sorted(choices)), min_size=count,
                                         max_size=count, unique=True)):
                    d[key] = _member_value(draw, choices[key], names, files, (), "")
        elif kind == "bad":
            what = pick(draw, ["node-name", "driver", "bogus", "file", "force-share",
                                         "discard"])
            d[what] = pick(draw, [None, "", "nope", "raw", True, 3])
        elif kind == "nonode":
            d.pop("node-name", None)
        elif kind == "swapname":
            d["node-name"] = pick(draw, [*names, "not-found"])
    return d


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value
