"""Which of the seed's error texts did campaigns reach by generation alone?

    python bench/seed_coverage.py NAME=OUT_DIR [NAME=OUT_DIR ...]

OUT_DIR is a ``blockfuzz run --out`` directory (its ``coverage.json``).  For every error text
the seed traces in ``corpus/seeds/`` expect (any QEMU version), prints a markdown row with, per
campaign, how often an outcome of the *same kind* was produced (names and numbers folded, as
the coverage table groups them) and how often the *exact* text was.  The last lines name the
texts no campaign reached.
"""
from __future__ import annotations

import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fuzz.errors import generalise  # noqa: E402


def seed_errors() -> list[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for path in sorted(glob.glob(os.path.join(ROOT, "corpus", "seeds", "*.json"))):
        for step in json.load(open(path))["steps"]:
            exp = step.get("expect")
            if not exp or "qmp" not in step:
                continue
            for case in exp.get("by-version", {"*": exp}).values():
                if "error" in case:
                    out.add((step["qmp"], case["error"]["desc"]))
    return sorted(out)


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    runs = []
    for a in argv:
        name, out = a.split("=", 1)
        path = os.path.join(out, "coverage.json")
        if not os.path.exists(path):
            print(f"seed_coverage: {path}: no such file", file=sys.stderr)
            return 2
        runs.append((name, json.load(open(path))))
    head = "| seed error text (command) | " + " | ".join(
        f"{n}: same kind | {n}: exact" for n, _ in runs) + " |"
    print(head)
    print("|" + "---|" * (1 + 2 * len(runs)))
    missing = []
    for cmd, desc in seed_errors():
        kind = f"{cmd}: error: {generalise(desc)}"
        cells = []
        reached = False
        for _, cov in runs:
            same = cov["outcomes"].get(kind, 0)
            exact = cov.get("exact-errors", {}).get(f"{cmd}: {desc}", 0)
            reached |= same > 0
            cells += [str(same), str(exact)]
        print(f"| {cmd}: `{desc}` | " + " | ".join(cells) + " |")
        if not reached:
            missing.append(f"{cmd}: {desc}")
    print()
    print("not reached by generation:" if missing else "every seed error text was reached (as its kind)")
    for m in missing:
        print(f"  {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
