"""Edit-set operations at a middle scale, quickly: a bulk-loaded registry of N synthetic edits
(tiny 8-dim keys), a 1k-edit proposal branch, then cold (fresh open) log 20, main~N/2, the head's
edit set, and the 1k three-way merge. For checking a store change in minutes; the 100k numbers
come from editsets_scale.py.

    .venv/bin/python benchmarks/editsets_quick.py [--edits 20000]
"""
import argparse, json, os, sys, time, tempfile, pathlib
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
parser = argparse.ArgumentParser(); parser.add_argument("--edits", type=int, default=20000); args = parser.parse_args()
N = args.edits
load_before = Path("/proc/loadavg").read_text().split()[:3]
results = {}
from registry_helpers import BASE, ROUTING
from registry.store import Registry, iso, utcnow
from registry.bulk import BulkLoader
from registry.editsets import merge
root = pathlib.Path(tempfile.mkdtemp()) / "r"
r = Registry.create(root, BASE, dict(ROUTING, radius_ratio=0.5, revoke_mode="tombstone"), "b")
rng = np.random.default_rng(0)
def edit(i):
    k = rng.normal(size=(1, 8)).astype(np.float32); k /= np.linalg.norm(k)
    return ({"lora_A": rng.normal(size=(2, 8)).astype(np.float32), "lora_B": rng.normal(size=(16, 2)).astype(np.float32), "keys": k},
            {"prompt": f"p{i}", "target": "x", "author": "b", "reason": None, "source": None, "subject": None, "created_at": iso(utcnow())}, [f"p{i}"])
t = time.perf_counter()
with BulkLoader(r, batch=2000) as L:
    for i in range(N):
        a, p, k = edit(i); L.add(a, p, k, "b", f"add {i}")
results["bulk_fill_s"] = round(time.perf_counter() - t, 2); print(results, flush=True)
r.create_branch("prop", r.head(), "b")
with BulkLoader(r, batch=1000, branch="prop") as L:
    for i in range(N, N + 1000):
        a, p, k = edit(i); L.add(a, p, k, "alice", f"add {i}")
with BulkLoader(r, batch=1000) as L:
    for i in range(N + 1000, N + 1005):
        a, p, k = edit(i); L.add(a, p, k, "b", f"add {i}")
r.close()
for label, fn in [("open+log20", lambda reg: reg.log(20)), (f"open+main~{N // 2}", lambda reg: reg.resolve(f"main~{N // 2}")),
                  ("open+members main", lambda reg: len(reg.members(reg.head())))]:
    t = time.perf_counter(); reg = Registry.open(root); fn(reg); reg.close(); results[label + "_s"] = round(time.perf_counter() - t, 3)
reg = Registry.open(root, writable=True)
t = time.perf_counter(); out = merge(reg, "prop", "main", "lead", "bench")
results["merge_1k_s"] = round(time.perf_counter() - t, 3)
assert len(out["added"]) == 1000 and not out["fast_forward"]
results.update(edits=N, load_average_before=load_before, load_average_after=Path("/proc/loadavg").read_text().split()[:3], cpus=os.cpu_count())
out_path = Path(__file__).resolve().parent / "results" / f"editsets_quick_{N}.json"
out_path.write_text(json.dumps(results, indent=2)); print(json.dumps(results, indent=2))
