"""Version profiles: where QEMU releases legitimately differ.

The model never loosens a comparison to paper over a difference; it carries the difference here
and the harness picks the profile from ``query-version``.
"""
from __future__ import annotations

import attrs


@attrs.frozen
class VersionProfile:
    name: str
    version: tuple[int, int]
    #: query-named-block-nodes has ``active: true`` on every node (10.0+).
    node_active_field: bool
    #: ``image.format-specific = {type: 'file', data: {}}`` on file-posix nodes (10.0+).
    file_format_specific: bool
    #: qcow2 accepts ``discard-no-unref`` (8.1+).
    qcow2_discard_no_unref: bool
    #: ``BlockDriver.has_variable_length`` is the driver's own (7.2: raw, copy-on-read and
    #: compress set it, so their length follows their child's at every query); 10.0 inherits
    #: the flag from the children and a regular file has none, so every length is cached
    #: ``total_sectors`` (``models.drivers``: ``BlockDriver.has_variable_length``)
    driver_variable_length: bool
    #: ``bdrv_reopen_commit()`` refreshes ``total_sectors`` (10.0), so a reopened file node sees
    #: growth that other nodes made to its host file; 7.2 keeps the old length.
    reopen_refreshes_length: bool
    #: QEMU bug (10.0.2, not 7.2): a blockdev-reopen that queues a node more than once leaves
    #: it drained, successful or not; later I/O reaching it hangs.  The model still predicts
    #: correct behaviour; the fuzzer only stops generating I/O into such nodes, so the known bug
    #: is not found again and again (corpus/findings/qemu10-reopen-dup-node-hang.json).
    reopen_duplicate_drain_leak: bool
    #: QEMU bug (7.2.22, not 10.0): a reopen entry whose prepare detaches a node that is a later
    #: entry of the same queue makes that node's prepare fail an assertion (``quiesce_counter
    #: > 0`` in bdrv_reopen_multiple()): 7.2 drains the subtree of each element, and the
    #: detached node is no longer in it.  corpus/findings/qemu72-reopen-detached-entry-abort.json
    reopen_detached_entry_asserts: bool
    #: cancelling an active commit in READY puts a read-only base back to read-only (10.0);
    #: 7.2 leaves it read-write
    active_commit_cancel_restores_ro: bool
    #: the active commit's dirty bitmap lives on the mirror_top filter (10.0, upstream ~8.2),
    #: not on the source node (7.2): query-named-block-nodes shows it there, and writes that
    #: bypass the filter (HMP qemu-io on the source) are not copied to the base
    mirror_bitmap_on_filter: bool
    #: ``write -z -u`` deallocates only if every node on the way, the entry node included, has
    #: ``discard=unmap`` (9.1+); 7.2 ignored the entry node's setting (notes §9.1)
    write_zeroes_unmap_needs_discard: bool
    #: ``virtio_scsi_hotplug()`` moves a new scsi-hd's node into the controller's iothread on a
    #: best-effort basis (10.0+: ``blk_set_aio_context(..., NULL)``, a failure is ignored and the
    #: node stays where it is; a controller without an iothread moves nothing); 7.2 moves the
    #: node into the controller's context, main loop included, and fails the device_add with
    #: ``Cannot change iothread of active block backend``.  On every version a disk's
    #: BlockBackend then refuses to be moved (``blk_root_change_aio_ctx()``).  Probed on
    #: 10.0.2 and 11.1.3 (2026-12-01): a node under a main-loop disk cannot join a parent in an
    #: iothread (notes §3.9 said "follows"; the probe and the source say otherwise).
    disk_context_move_best_effort: bool
    #: plugging a scsi-hd checks the node's op blockers (7.2, with or without an iothread on the
    #: controller; backing parents and jobs both block it): "Node 'X' is busy: ..."; 10.0 has
    #: no such check (observed)
    dataplane_op_blocker: bool
    #: every node of query-named-block-nodes lists its BdrvChild edges as ``children``
    #: ([{child, node-name}], ``bs->children`` order: newest first) (10.2+, "block/qapi: include
    #: child references in block device info"; seen on 11.1.3)
    node_children_field: bool = False
    #: ``image.limits`` (BlockLimitsInfo, ``bs->bl``) at every level of ImageInfo (10.2+; seen
    #: on 11.1.3); predicted by models.limits
    image_limits_field: bool = False
    #: ``object-del`` of a throttle group that a throttle node uses: 7.2 and 10.0 answer with
    #: user_creatable_del()'s generic "object '%s' is in use, can not be deleted"; 11.1.3 with
    #: the group's own reason (probe of 11.1.3; the 10.2.0 source still has the generic text)
    #: ``bdrv_drop_filter()`` hands a job filter's parents to its child but the filter keeps
    #: its own child edge (and the permissions it takes there) until the filter is freed with
    #: the job (11.1.3, probed: a stream left CONCLUDED by ``auto-dismiss: false`` still shows
    #: its copy-on-read filter over the streamed node, ``children [file: hd1]``, and a reopen of
    #: that node to read-only fails with "cannot support read-write users" until
    #: ``job-dismiss``).  7.2 and 10.0.2 detach the child at once, which is what makes the next
    #: query crash there (corpus/findings/stream-concluded-query-segv.json).  The 10.0 stable
    #: branch took the change: 10.0.13's ``bdrv_drop_filter()`` calls
    #: ``bdrv_replace_node_common()`` without detaching (Debian's 10.0.13 source), and a build
    #: of it shows both effects (stream-leaves-read-only-node-writable fails,
    #: stream-concluded-query-segv's filter keeps its child; 2026-12-02).
    dropped_filter_keeps_child: bool = False
    #: a write that grows a node past its end (``bdrv_co_write_req_finish()``) makes every
    #: parent using it as FILTERED child refresh its length (``bdrv_child_cb_resize()``), so a
    #: raw or filter node over a file that a qcow2 node grew reports the new length (11.1.3,
    #: probed; the 10.2.0 source has the resize callback, 10.0.2 leaves those parents' cached
    #: length alone)
    growth_resizes_filtered_parents: bool = False
    #: QEMU bug: an active ``block-commit`` whose device is a compress filter never answers
    #: (10.0.2 and 11.1.3; 7.2.22 starts the job), found by ``blockfuzz diff`` past the model
    compress_active_commit_hangs: bool = False
    #: QEMU bug (10.0.2, 10.2.2, 11.1.3; not 7.2.22): ``bdrv_append()`` onto a compress node
    #: deadlocks: it calls ``bdrv_refresh_limits()`` on the node under the graph write lock,
    #: and ``compress_refresh_limits()`` calls ``bdrv_get_info()``, whose coroutine waits for
    #: the reader lock (backtrace of the 10.2.2 ASan build).  blockdev-snapshot of a compress
    #: node never answers, success or not; the active commit hang above is likely the same
    #: (mirror_start_job() appends its filter the same way)
    #: (corpus/findings/compress-append-refresh-limits-deadlock.json)
    compress_append_hangs: bool = False
    #: QEMU bug (7.2.22; 10.0.2 and 11.1.3 answer normally): x-blockdev-change on a quorum in
    #: an iothread dies with SIGABRT ``qemu_mutex_unlock_impl: Operation not permitted`` when it
    #: removes a child, or when the attach of an added one fails; a successful add is fine
    #: (corpus/findings/qemu72-quorum-iothread-child-change-abort.json)
    quorum_iothread_child_change_aborts: bool = False
    throttle_group_del_error: str = "object '{id}' is in use, can not be deleted"
    #: block_resize of an op-blocked node: 10.0 and 11.1 give the blocker's reason; 7.2 says
    #: QERR_DEVICE_IN_USE with the ``device`` argument, "(null)" without one (probed)
    resize_blocked_error: str = "Node '{node}' is busy: {reason}"
    #: blockdev-mirror takes ``target-is-zero`` (10.1+; 7.2.22 and 10.0.2: "Parameter
    #: 'target-is-zero' is unexpected", probed)
    mirror_target_is_zero: bool = False
    #: QEMU bug: blockdev-create of qcow2 over a file node in an iothread's AioContext: 7.2.22
    #: dies with SIGABRT ``qemu_mutex_unlock_impl: Operation not permitted`` (every run), 10.0.2
    #: stops answering in about half the runs; 11.1.3 is fine (iotest tests/iothreads-create;
    #: corpus/findings/qcow2-create-over-iothread-node.json)
    qcow2_create_over_iothread_fails: bool = False
    #: QEMU bug (7.2.22; 10.0.2 and 11.1.3 are fine): qemu-io ``write -z`` past the end of a
    #: node in an iothread aborts in ``aio_poll()`` (corpus/findings/qemu72-qemu-io-zero-write-past-end-iothread-abort.json)
    qemu_io_zero_write_past_end_in_iothread_aborts: bool = False
    #: block-stream and block-commit take ``backing-mask-protocol`` (8.0+); 7.2.22 skips it
    #: in the visit and ends with "Parameter 'backing-mask-protocol' is unexpected" (probed:
    #: corpus/probes/job-argument-visitor.json)
    job_backing_mask_protocol: bool = True
    #: QEMU bug (7.2.22; 10.0.2, 10.0.13 and 11.1.3 open it): a read-only qcow2 open over a
    #: read-only node in an iothread's AioContext aborts like a failing one
    #: (``qemu_mutex_unlock_impl: Operation not permitted``) even where the open succeeds;
    #: read-write is fine (probed 2026-12-02, a file or blkdebug child under a scsi-hd on an
    #: iothread controller; corpus/findings/qcow2-failed-open-over-iothread-node-abort.json's
    #: family)
    qcow2_read_only_open_over_iothread_aborts: bool = False
    #: the first stable release of ``version`` this profile describes: a series whose stable
    #: branch took a behaviour change has one profile per change (``profile_for()``)
    micro: int = 0


PROFILES: dict[str, VersionProfile] = {
    "7.2": VersionProfile("7.2", (7, 2), node_active_field=False, file_format_specific=False,
                          qcow2_discard_no_unref=False,
                          driver_variable_length=True,
                          reopen_refreshes_length=False, reopen_duplicate_drain_leak=False,
                          reopen_detached_entry_asserts=True,
                          active_commit_cancel_restores_ro=False, mirror_bitmap_on_filter=False,
                          write_zeroes_unmap_needs_discard=False, disk_context_move_best_effort=False,
                          dataplane_op_blocker=True, quorum_iothread_child_change_aborts=True,
                          resize_blocked_error="Device '{device}' is in use",
                          qcow2_create_over_iothread_fails=True, job_backing_mask_protocol=False,
                          qemu_io_zero_write_past_end_in_iothread_aborts=True,
                          qcow2_read_only_open_over_iothread_aborts=True),
    "10.0": VersionProfile("10.0", (10, 0), node_active_field=True, file_format_specific=True,
                           qcow2_discard_no_unref=True, driver_variable_length=False,
                           reopen_refreshes_length=True, reopen_duplicate_drain_leak=True,
                           reopen_detached_entry_asserts=False,
                           active_commit_cancel_restores_ro=True, mirror_bitmap_on_filter=True,
                           write_zeroes_unmap_needs_discard=True, disk_context_move_best_effort=True,
                           dataplane_op_blocker=False, compress_active_commit_hangs=True,
                           compress_append_hangs=True, qcow2_create_over_iothread_fails=True),
}
# 11.1 starts as 10.0 plus what it is seen or read to do differently; each flag's docstring
# names its source (QEMU commit or a probe of 11.1.3).
PROFILES["11.1"] = attrs.evolve(PROFILES["10.0"], name="11.1", version=(11, 1),
                                node_children_field=True, image_limits_field=True,
                                mirror_target_is_zero=True, qcow2_create_over_iothread_fails=False,
                                dropped_filter_keeps_child=True,
                                growth_resizes_filtered_parents=True,
                                # fixed: the duplicate-node reopen no longer leaves the node
                                # drained (corpus/findings/qemu10-reopen-dup-node-hang.json
                                # PASSes on 11.1.3)
                                reopen_duplicate_drain_leak=False,
                                throttle_group_del_error=(
                                    "Cannot delete throttle group '{id}' with active references"))


# 10.0.13 (Debian trixie's QEMU; checked on a build of Debian's 10.0.13 source, 2026-12-02):
# 10.0.2 plus the 11.1 job-filter drop that the 10.0 stable branch took.  Which stable release
# between 10.0.3 and 10.0.13 first had it is not known here; profile_for() gives 10.0.3 to
# 10.0.12 the 10.0.2 profile.
# Its blockdev-create of qcow2 over an iothread node is fixed too (3 runs in 3 of
# corpus/findings/qcow2-create-over-iothread-node.json, 2026-12-02).
PROFILES["10.0.13"] = attrs.evolve(PROFILES["10.0"], name="10.0.13", micro=13,
                                   dropped_filter_keeps_child=True,
                                   qcow2_create_over_iothread_fails=False)

# 10.2 (built from Debian's 10.2.2 source, `blockfuzz qemu build 10.2`): 11.1's query fields
# and job-filter behaviour, seen on 10.2.2 (2026-12-01: all seeds, probes and findings replayed
# with --strict); the throttle group's own "in use" text is newer (the 10.2.0 source still has
# user_creatable_del()'s generic one).
PROFILES["10.2"] = attrs.evolve(PROFILES["11.1"], name="10.2", version=(10, 2),
                                throttle_group_del_error=PROFILES["10.0"].throttle_group_del_error)


def profile_for(major: int, minor: int, micro: int = 0) -> tuple[VersionProfile, bool]:
    """The profile for a QEMU version, and whether it is an exact match.

    Stable releases x.y.z get the profile of x.y with the highest ``micro`` not above z (x.y
    itself is micro 0): a series whose stable branch took a behaviour change has a profile from
    that release on (10.0.13).  A development snapshot (micro >= 90, QEMU's numbering for the
    tree between x.y and the next release, e.g. 11.1.90) and any version without a profile get
    the nearest older release profile (the oldest, for a version older than all) and
    ``exact=False``: the caller warns and sets the fields that profile does not know aside.
    """
    dev = micro >= 90
    if not dev:
        series = [p for p in PROFILES.values() if p.version == (major, minor) and p.micro <= micro]
        if series:
            return max(series, key=lambda p: p.micro), True
    older = [p for p in PROFILES.values() if p.version <= (major, minor)]
    if not older:
        return min(PROFILES.values(), key=lambda p: (p.version, p.micro)), False
    return max(older, key=lambda p: (p.version, p.micro)), False
