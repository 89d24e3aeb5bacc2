"""README's table of declines lists every reason the model can give (QEMU-free).

The reasons are read from the model's source: every ``NotModeled(...)`` with a string literal.
An f-string is matched by its text up to the first placeholder, which is what the table shows
followed by ``...``."""
from __future__ import annotations

import ast
import os

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _reasons() -> set[str]:
    out: set[str] = set()
    for base, _dirs, files in os.walk(os.path.join(ROOT, "models")):
        for f in files:
            if not f.endswith(".py"):
                continue
            tree = ast.parse(open(os.path.join(base, f)).read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "NotModeled" and node.args:
                    arg = node.args[0]
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        out.add(arg.value)
                    elif isinstance(arg, ast.JoinedStr):
                        head = ""
                        for part in arg.values:
                            if isinstance(part, ast.Constant):
                                head += str(part.value)
                            else:
                                break
                        out.add(head)
    return out


def test_every_decline_reason_is_in_the_readme_table():
    readme = open(os.path.join(ROOT, "README.md")).read()
    table = readme[readme.index("## Declines"):]
    table = table[:table.index("\n## ")]
    missing = sorted(r for r in _reasons() if r.strip() and f"`{r.strip()}" not in table)
    assert len(_reasons()) > 50   # the scan found the model's reasons
    assert not missing, f"README's Declines table lacks: {missing}"
