"""The ``blockfuzz`` command line.

Subcommands::

    blockfuzz qemu fetch VERSION    fetch + unpack a Debian QEMU into .qemu/, print its path
    blockfuzz qemu path VERSION     print the path of an already fetched QEMU
    blockfuzz qemu list             every known version: Debian suite, package, fetched, path

Exit status: 0 success; 1 the thing asked for does not exist (``qemu path`` of an unfetched
version); 2 usage or operational error. Errors are one line on stderr, prefixed ``blockfuzz:``.

Adding a subcommand: write a module with ``add_<name>_parser(subparsers)`` that calls
``subparsers.add_parser(...)`` and ``set_defaults(handler=fn)``, where ``fn(args) -> int`` is the
exit status; then register it in :func:`build_parser` (see the marked place). Handlers report
failures by raising :class:`fuzz.errors.CliError` (or letting :class:`fuzz.errors.QemuNotFound`
from ``resolve_qemu`` through), which :func:`main` turns into one stderr line and an exit status.
"""

from __future__ import annotations

import argparse
import sys

from fuzz import qemufetch
from fuzz.errors import CliError, FetchError, QemuNotFound


# --------------------------------------------------------------------------------------------
# blockfuzz qemu ...


def add_qemu_parser(subparsers) -> None:
    qemu = subparsers.add_parser("qemu", help="fetch and locate the QEMU builds under test")
    actions = qemu.add_subparsers(dest="qemu_command", required=True, metavar="ACTION")
    versions = "|".join(qemufetch.KNOWN_VERSIONS)

    fetch = actions.add_parser(
        "fetch",
        help="download a Debian QEMU into .qemu/ (no system changes) and print its path",
        description="Fetch QEMU from Debian packages into $BLOCKFUZZ_QEMU_DIR (default "
        ".qemu/ in the checkout). Does nothing if already complete.",
    )
    # No `choices=`: argparse would answer a bad version with a multi-line usage message; we
    # promise one line (see _version).
    fetch.add_argument("version", metavar=versions)
    fetch.add_argument("--force", action="store_true", help="re-fetch even if complete")
    fetch.set_defaults(handler=_qemu_fetch)

    path = actions.add_parser("path", help="print the qemu-system-x86_64 of a fetched QEMU")
    path.add_argument("version", metavar=versions)
    path.set_defaults(handler=_qemu_path)

    from fuzz.qemusource import add_source_parser
    add_source_parser(actions)
    from fuzz.qemubuild import add_build_parser
    add_build_parser(actions)

    listing = actions.add_parser(
        "list",
        help="list the known QEMU versions: Debian suite, package version, fetched, path",
        description="One line per known version: the Debian suites it comes from, the QEMU "
        "package version (fetched, or else the one a fetch would take per the private "
        "package lists, '-' if unknown), whether it is fetched, and its qemu-system-x86_64.",
    )
    listing.set_defaults(handler=_qemu_list)


def _version(value: str) -> str:
    try:
        return qemufetch.check_version(value)
    except QemuNotFound as exc:
        raise CliError(str(exc), 2) from None


def _qemu_fetch(args) -> int:
    version = _version(args.version)
    try:
        inst = qemufetch.fetch(version, force=args.force)
    except FetchError as exc:
        raise CliError(f"fetching QEMU {version} failed: {exc}", 2) from None
    print(inst.binary("system"))
    return 0


def _qemu_path(args) -> int:
    version = _version(args.version)
    inst = qemufetch.installed(version)
    if inst is None:
        raise CliError(f"QEMU {version} is not fetched: run `blockfuzz qemu fetch {version}`", 1)
    print(inst.binary("system"))
    return 0


def _qemu_list_row(version: str) -> tuple[str, ...]:
    source = qemufetch.SOURCES[version]
    label = f"{version} (default)" if version == qemufetch.DEFAULT_VERSION else version
    suites = ",".join(source.suites)
    try:
        inst = qemufetch.installed(version)
        if inst is not None:
            return (label, suites, inst.package_version, "yes", str(inst.binary("system")))
        # A tree that is there but incomplete, damaged or of an older format: fetch replaces it.
        stale = (qemufetch.qemu_dir() / version / "manifest.json").exists()
        package = qemufetch.pinned(version) or "-"
    except (OSError, ValueError, FetchError) as exc:
        return (label, suites, "?", f"? ({exc})".splitlines()[0], "-")
    return (label, suites, package, "outdated" if stale else "no", "-")


def _qemu_list(args) -> int:
    header = ("VERSION", "DEBIAN", "PACKAGE", "FETCHED", "QEMU-SYSTEM-X86_64")
    from fuzz.qemubuild import installed_builds
    rows = [header, *(_qemu_list_row(v) for v in qemufetch.KNOWN_VERSIONS)]
    # builds from source (`blockfuzz qemu build`): their name, what they were built from
    for b in installed_builds():
        flags = "+".join(f for f, on in (("min", b.minimal), ("asan", b.asan), ("gcov", b.gcov),
                                         ("patched", bool(b.patches))) if on)
        origin = (f"source {b.source.get('package-version', '')}" if b.source.get("kind") == "debian"
                  else f"checkout {b.source.get('git', '')}".strip())
        rows.append((b.name, f"built {b.qemu_version}" + (f" {flags}" if flags else ""), origin,
                     "built", str(b.binary())))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]]))
    return 0


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockfuzz",
        description="Property-based conformance fuzzer for QEMU's block layer.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_qemu_parser(subparsers)
    # ---- other subcommands register here, two lines each: ---------------------------------
    from fuzz.runcmd import add_run_parser; add_run_parser(subparsers)
    from fuzz.replaycmd import add_replay_parser; add_replay_parser(subparsers)
    from fuzz.diffcmd import add_diff_parser; add_diff_parser(subparsers)
    from fuzz.exportcmd import add_export_parser; add_export_parser(subparsers)
    from fuzz.showcmd import add_show_parser; add_show_parser(subparsers)
    from fuzz.minimizecmd import add_minimize_parser; add_minimize_parser(subparsers)
    # ----------------------------------------------------------------------------------------
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad flags: argparse prints usage, exits 2
    try:
        return args.handler(args)
    except CliError as exc:
        print(f"blockfuzz: {exc}", file=sys.stderr)
        return exc.status
    except QemuNotFound as exc:  # e.g. a bad --qemu of `run`: the user's to fix
        print(f"blockfuzz: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
