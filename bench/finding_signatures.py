"""Record in each corpus/findings trace the signature a campaign shows for it (a benchmark-
style maintenance script, not a test; tests/test_campaign.py checks the recorded ones).

    .venv/bin/python bench/finding_signatures.py [--write]

Per version, the signature a campaign would see: the trace without its written
expectations (assert / snapshot steps, expect keys)."""
import glob, json, sys
import attrs
from fuzz import trace as T
from fuzz.minimize import failure_of
from fuzz.qemufetch import installed, resolve_qemu
bins = {v: resolve_qemu(str(installed(v).binary("system"))) for v in ("7.2","10.0","11.1")}
write = "--write" in sys.argv
for p in sorted(glob.glob("corpus/findings/*.json")):
    tr = T.load(p)
    bare = attrs.evolve(tr, steps=[{k: v for k, v in s.items() if k not in ("expect", "observed")}
                                   for s in tr.steps if "qmp" in s])
    out = {}
    for v in tr.extra.get("affects", []):
        sigs = set()
        for _ in range(3 if v in tr.extra.get("intermittent", []) else 1):
            e = failure_of(bare, bins[v], 5.0)
            sigs.add(e.signature() if e is not None else None)
        out[v] = sorted((s for s in sigs if s is not None), key=str)
    print(p, json.dumps(out))
    if write:
        d = json.load(open(p))
        d["signature"] = {v: (s[0] if len(s) == 1 else s) for v, s in out.items() if s}
        T.write_atomically(p, json.dumps(d, indent=1) + "\n")
