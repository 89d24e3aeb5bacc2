"""Compare the behaviour coverage of campaigns (a benchmark-style report, not a test).

    .venv/bin/python bench/coverage_compare.py BEFORE/coverage.json AFTER/coverage.json [MORE...]

Each file is the ``coverage.json`` a ``blockfuzz run`` writes into its ``--out`` folder.  The
first is the baseline.  Printed, as Markdown:

* per command: executed steps, the share that succeeded and that changed the graph or jobs,
  and the number of distinct exact error texts (the baseline's count, then each campaign's,
  with how many of them the baseline never saw);
* the decline rate (declined steps of drawn steps, known-bug guards apart) and the depth
  figures (executed of drawn, reopens that succeed, examples with a deep pattern read, examples
  with 2+ relinks then a delete);
* with ``--new``, the error texts a campaign saw that the baseline did not.
"""
from __future__ import annotations

import json
import sys


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def errors_by_command(c: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for key in c.get("exact-errors", {}):
        cmd, _, text = key.partition(": ")
        out.setdefault(cmd, set()).add(text)
    return out


def pct(a: float, b: float) -> str:
    return f"{100 * a / b:.1f} %" if b else "n/a"


def main(argv: list[str]) -> int:
    show_new = "--new" in argv
    paths = [a for a in argv if not a.startswith("--")]
    if len(paths) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    runs = [load(p) for p in paths]
    base = errors_by_command(runs[0])
    errs = [errors_by_command(c) for c in runs]
    cmds = sorted(set().union(*(set(c.get("rules", {})) | set(e) for c, e in zip(runs, errs))))
    head = "| command | " + " | ".join(f"run {i}: steps, ok, changed, errors (new)" for i in range(len(runs))) + " |"
    print(head)
    print("|---|" + "---|" * len(runs))
    for cmd in cmds:
        cells = []
        for c, e in zip(runs, errs):
            n = c.get("rules", {}).get(cmd, 0)
            ok, ch = c.get("succeeded", {}).get(cmd, 0), c.get("changed", {}).get(cmd, 0)
            texts = e.get(cmd, set())
            new = len(texts - base.get(cmd, set()))
            cells.append(f"{n}, {pct(ok, n)}, {pct(ch, n)}, {len(texts)} ({new} new)" if n or texts else "-")
        print(f"| `{cmd}` | " + " | ".join(cells) + " |")
    print()
    print("| figure | " + " | ".join(f"run {i}" for i in range(len(runs))) + " |")
    print("|---|" + "---|" * len(runs))
    rows = [
        ("examples", lambda c: str(c["examples"])),
        ("checked steps", lambda c: str(c["steps"])),
        ("steps/s", lambda c: f"{c['steps'] / c['seconds']:.1f}"),
        ("declined of drawn", lambda c: pct(sum(c["declines"].values()), c["drawn"])),
        ("guarded (known bugs) of drawn", lambda c: pct(sum((c.get("guarded") or {}).values()), c["drawn"])),
        ("executed of drawn", lambda c: pct(c["executed"], c["drawn"])),
        ("reopens that succeed", lambda c: pct(c["succeeded"].get("blockdev-reopen", 0),
                                              c["rules"].get("blockdev-reopen", 0))),
        ("reopens that change the graph", lambda c: pct(c["changed"].get("blockdev-reopen", 0),
                                                       c["rules"].get("blockdev-reopen", 0))),
        ("examples with a read -P 2+ deep", lambda c: pct(c["examples-deep-read"], c["examples"])),
        ("examples with 2+ relinks, then a delete", lambda c: pct(c["examples-relink-delete"], c["examples"])),
        ("distinct exact error texts", lambda c: str(len(c.get("exact-errors", {})))),
    ]
    for label, f in rows:
        print(f"| {label} | " + " | ".join(f(c) for c in runs) + " |")
    if show_new:
        for i, e in enumerate(errs[1:], 1):
            print(f"\nrun {i}: error texts the baseline never saw")
            for cmd in sorted(e):
                for text in sorted(e[cmd] - base.get(cmd, set())):
                    print(f"- `{cmd}`: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
