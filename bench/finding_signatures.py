"""Record in each corpus/findings trace the signature a campaign shows for it (a benchmark-
style maintenance script, not a test; tests/test_campaign.py checks the recorded ones).

    .venv/bin/python bench/finding_signatures.py [--write] [--build VERSION=QEMU]...

Per version, the signature a campaign would see: the trace without its written
expectations (assert / snapshot steps, expect keys).  The fetched 7.2, 10.0 and 11.1 are
always asked; ``--build 10.2=10.2-asan --build 10.2=/path/qemu-system-x86_64`` adds builds
of a version without fetched binaries (``blockfuzz qemu build``), each of which records its
signature beside the others' (an ASan build names the bug differently from a plain one).
With --write, ``affects`` also gains each --build version the trace still fails on."""
import glob, json, sys
import attrs
from fuzz import trace as T
from fuzz.errors import HarnessError
from fuzz.minimize import failure_of
from fuzz.qemufetch import installed, resolve_qemu

bins = {v: [resolve_qemu(str(installed(v).binary("system")))] for v in ("7.2", "10.0", "11.1")}
built = {}
args = sys.argv[1:]
write = "--write" in args
for i, a in enumerate(args):
    if a == "--build":
        version, _, qemu = args[i + 1].partition("=")
        built.setdefault(version, []).append(resolve_qemu(qemu))
for p in sorted(glob.glob("corpus/findings/*.json")):
    tr = T.load(p)
    bare = attrs.evolve(tr, steps=[{k: v for k, v in s.items() if k not in ("expect", "observed")}
                                   for s in tr.steps if "qmp" in s])
    affects = list(tr.extra.get("affects", []))
    out = {}
    for v in [*affects, *(b for b in built if b not in affects)]:
        sigs = set()
        for binaries in bins.get(v, []) + built.get(v, []):
            for _ in range(3 if v in tr.extra.get("intermittent", []) else 1):
                try:
                    e = failure_of(bare, binaries, 5.0)
                except HarnessError as err:   # a --minimal build has no -M pc
                    print(f"  {binaries.system}: not run: {str(err).splitlines()[0]}")
                    break
                sigs.add(e.signature() if e is not None else None)
        if v in tr.extra.get("intermittent", []):   # a race: keep every way seen so far
            old = tr.extra.get("signature", {}).get(v, [])
            sigs.update([old] if isinstance(old, str) else old)
        found = sorted((s for s in sigs if s is not None), key=str)
        if found:
            out[v] = found
            if v not in affects:
                affects.append(v)
    print(p, json.dumps(out))
    if write:
        d = json.load(open(p))
        d["signature"] = {v: (s[0] if len(s) == 1 else s) for v, s in out.items() if s}
        d["affects"] = sorted(affects, key=lambda v: tuple(map(int, v.split("."))))
        T.write_atomically(p, json.dumps(d, indent=1) + "\n")
