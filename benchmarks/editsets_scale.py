"""Edit sets at scale: revisions, diff, merge, blame, log and verify on the 100k-edit registry.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/editsets_scale.py --root /tmp/sola-scale

The registry is the one `benchmarks/scale.py` fills (same builder, same defaults: 100,000 steps
of adds, ~5% revokes, ~0.5% restores, ~1% supersedes, one linear main of ~105k commits). When
--root holds no registry it is filled here first with scale.py's `fill` (--edits, bulk path),
so `scale.py --reuse` finds it afterwards.

Reads (revisions, edit sets, diff on main, log, blame, verify) run on --root opened read-only.
Writes (a tag, branches, 1k-edit proposal branches, merges) run on a scratch copy next to it
(`<root>-editsets`): the DuckDB file copied, `objects/` hard-linked file by file (objects are
write-once and written by rename, so new objects land in the copy only and no original file is
ever written), no `cache/` (merge and the bulk loader read no cache). --root is left exactly as
scale.py expects. The scratch copy is deleted at the end unless --keep-scratch.

Measured (time.perf_counter; "cold" = a fresh `Registry.open` per sample, so no tree, parent or
config cache of the process helps; the OS page cache is warm either way; "warm" = the same open
registry, after one call):
  resolve `main~N` (N = 1, 1,000, 10,000 and the commit where half of the adds happened), a tag,
  `main@TIME`, a branch; then `members(commit)` and `active_edit_ids(commit)`;
  `diff` of main at the quarter and three-quarter add points (50k adds apart) and of a branch
  created at the half point against main;
  merge of a 1,000-edit branch into main with a few edits on main since it forked (a three-way
  merge, not a fast-forward), repeated on fresh proposal branches, each result checked;
  `blame` of stored keys (active, revoked, superseded edit) over main's first-parent chain;
  `log(20)` (API, with and without the open) and `sola --registry ROOT log --limit 20 --json`;
  `verify` with its parts; rows of the skip-delta tree storage (`trees`, `tree_members`).
Results go to benchmarks/results/editsets_scale.json, with the machine's state at every phase.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # shared 2-core machine: one thread everywhere
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import AUTHORS, CLI, RESULTS, Synthetic, _raw_connection, add_commits, environment, fill, refs_parts, timed  # noqa: E402

from registry import editsets  # noqa: E402
from registry.blame import blame  # noqa: E402
from registry.bulk import BulkLoader  # noqa: E402
from registry.graph import first_parents  # noqa: E402
from registry.model import ACTIVE  # noqa: E402
from registry.store import Registry, iso, utcnow  # noqa: E402
from registry.verify import (  # noqa: E402
    Report, _check_caches, _check_commits, _check_edits, _check_key_vectors, _check_trees, verify)

TARGETS = {"resolve_and_list_s": 0.5, "diff_50k_s": 1.0, "merge_1k_s": 5.0, "blame_s": 10.0, "log20_api_s": 0.2,
           "log20_cli_s": 0.2, "verify_s": 60.0}


# --- timing helpers --------------------------------------------------------------------------------

def run_cli(args: list[str], timeout: float | None = None) -> tuple[float, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=True, timeout=timeout)
    return time.perf_counter() - started, done.stdout


def code_state() -> dict[str, Any]:
    """The commit measured, and files of the store that other agents had changed but not committed."""
    repo = Path(__file__).resolve().parents[1]
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {"commit": git("rev-parse", "HEAD"), "uncommitted": git("status", "--short", "registry", "migrations", "sola").splitlines()}


def stats(samples: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(samples), "max_s": max(samples), "min_s": min(samples), "n": len(samples),
            "samples_s": [round(s, 6) for s in samples]}


def machine(label: str) -> dict[str, Any]:
    """Load average and the busiest processes now (other agents run pytest on this machine)."""
    listing = subprocess.run(["ps", "-eo", "pcpu,etimes,args", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()[1:]
    me = str(os.getpid())
    busy = [line.strip()[:160] for line in listing[:6]]
    pytest = [line.strip()[:160] for line in listing if "pytest" in line and me not in line]
    state = {"phase": label, "time": iso(utcnow()), "loadavg": Path("/proc/loadavg").read_text().split()[:3],
             "busiest_processes": busy, "pytest_processes": len(pytest)}
    print(f"[{label}] load {' '.join(state['loadavg'])}, pytest processes: {len(pytest)}", flush=True)
    return state


def cold_and_warm(root: Path, step: Callable[[Registry], Any], cold: int, warm: int) -> dict[str, Any]:
    """`step(registry)` timed on a fresh read-only open (cold, `cold` times) and on one open
    registry after a first call (warm, `warm` times). Open time is reported apart."""
    opens, colds = [], []
    value = None
    for _ in range(cold):
        t_open, registry = timed(lambda: Registry.open(root))
        try:
            t, value = timed(lambda: step(registry))
        finally:
            registry.close()
        opens.append(t_open)
        colds.append(t)
    out: dict[str, Any] = {"cold": stats(colds), "open": stats(opens),
                           "cold_with_open": stats([a + b for a, b in zip(opens, colds)])}
    if warm:
        with Registry.open(root) as registry:
            step(registry)
            out["warm"] = stats([timed(lambda: step(registry))[0] for _ in range(warm)])
    return out, value


# --- the scratch copy --------------------------------------------------------------------------------

def scratch_copy(root: Path) -> tuple[Path, float]:
    """A writable copy of the registry that shares no writable file with it (see module doc)."""
    scratch = root.parent / (root.name + "-editsets")
    shutil.rmtree(scratch, ignore_errors=True)
    started = time.perf_counter()
    scratch.mkdir(parents=True)
    for path in root.glob("registry.duckdb*"):
        shutil.copy2(path, scratch / path.name)
    subprocess.run(["cp", "-al", str(root / "objects"), str(scratch / "objects")], check=True)
    return scratch, time.perf_counter() - started


def random_edit(synthetic: Synthetic) -> dict[str, Any]:
    return synthetic.edit()


# --- the measurements --------------------------------------------------------------------------------

def revisions(root: Path, repeats: int, deep_repeats: int, deep_walk: bool) -> dict[str, Any]:
    """`main~N` and `main@TIME` resolved, then the edit set listed. `resolve("main~N")` takes one
    commit and one parent lookup per step, so the half-add point (~52k steps) is walked only with
    `deep_walk`; otherwise its commit is read by id and its resolve time projected from main~10000."""
    with Registry.open(root) as registry:
        head = registry.head()
        adds, back = add_commits(registry)
        half = adds[len(adds) // 2 - 1]
        chain_length = len(back)
        moment = registry.catalog.ref_time("main", half)
    out: dict[str, Any] = {"first_parent_chain": chain_length, "head_seq": head.seq, "half_adds_commit": half,
                           "half_adds_n": back[half]}
    revisions = [(f"main~{n}", n) for n in (1, 1000, 10_000) if n < chain_length] + [(f"main~{back[half]}", back[half])]
    revisions.append((f"main@{iso(moment)}", None))
    for revision, n in revisions:
        many = n is not None and n >= 10_000
        cold = deep_repeats if many else repeats
        warm = 0 if many else repeats  # a warm sample of a deep walk costs two walks
        projected = many and n > 10_000 and not deep_walk
        if projected:
            print(f"  {revision}: commit read by id, resolve projected from main~10000", flush=True)
            resolved, commit = cold_and_warm(root, lambda r: r.commit(half), cold, 0)
            per_step = out["main~10000"]["resolve_per_step_ms"]
            resolved = {"projected_cold_s": per_step * n / 1000, "from_per_step_ms": per_step,
                        "cold": {"median_s": per_step * n / 1000}, "read_by_id": resolved}
        else:
            print(f"  resolve {revision} ({cold} cold, {warm} warm) ...", flush=True)
            resolved, commit = cold_and_warm(root, lambda r: r.resolve(revision), cold, warm)

        def resolve_and_list(r: Registry) -> int:
            return len(r.active_edit_ids(r.resolve(revision)))
        listed = None
        if not many:
            listed, _ = cold_and_warm(root, resolve_and_list, repeats, repeats)
        members, _ = cold_and_warm(root, lambda r: r.members(r.commit(commit.commit_id)), repeats, repeats)
        active, n_active = cold_and_warm(root, lambda r: len(r.active_edit_ids(r.commit(commit.commit_id))), repeats, repeats)
        with Registry.open(root) as registry:
            n_members = len(registry.members(commit))
            deltas = len(registry.trees.chain(commit.tree_id))
        entry = {"revision": revision, "commit": commit.commit_id, "seq": commit.seq, "resolve": resolved,
                 "members": members, "active_edit_ids": active, "n_members": n_members, "n_active": n_active,
                 "tree_deltas_read": deltas,
                 "resolve_and_list_cold_with_open_median_s": (listed or {}).get("cold_with_open", {}).get("median_s"),
                 "resolve_plus_list_cold_median_s": resolved["cold"]["median_s"] + active["cold"]["median_s"]}
        if listed:
            entry["resolve_and_list"] = listed
        if n is not None and n >= 1000 and not projected:
            entry["resolve_per_step_ms"] = 1000 * resolved["cold"]["median_s"] / n
        out[revision.split("@")[0] + ("@TIME" if "@" in revision else "")] = entry
        print(f"    resolve {resolved['cold']['median_s']:.3f} s cold, members {members['cold']['median_s']:.3f} s cold "
              f"({n_members} members, {deltas} deltas)", flush=True)
    return out


def diff_on_main(root: Path, repeats: int) -> dict[str, Any]:
    with Registry.open(root) as registry:
        adds, back = add_commits(registry)
        quarter, three_quarters = len(adds) // 4, (3 * len(adds)) // 4
        old_id, new_id = adds[quarter - 1], adds[three_quarters - 1]
        old, new = registry.commit(old_id), registry.commit(new_id)
        result = registry.diff(old, new)
    timings, _ = cold_and_warm(root, lambda r: r.diff(r.commit(old_id), r.commit(new_id)), repeats, repeats)
    return {"old": f"main~{back[old_id]}", "new": f"main~{back[new_id]}", "adds_apart": three_quarters - quarter,
            "added": len(result["added"]), "removed": len(result["removed"]), **timings}


def write_side(scratch: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Tag + branches (timed reads after), then proposal branches merged into main."""
    out: dict[str, Any] = {}
    synthetic = Synthetic(args.seed + 1000, 0.0)
    with Registry.open(scratch, writable=True) as registry:
        adds, back = add_commits(registry)
        quarter, half = adds[len(adds) // 4 - 1], adds[len(adds) // 2 - 1]
        registry.tag("bench-quarter", registry.commit(quarter), "bench")
        t, _ = timed(lambda: registry.create_branch("half", registry.commit(half), "bench"))
        out["create_branch_s"] = t
        out["tag"] = {"name": "bench-quarter", "at": f"main~{back[quarter]}", "commit": quarter}
        out["branch_half"] = {"name": "half", "at": f"main~{back[half]}", "commit": half}

    # --- tag and branch resolved and listed, and the branch diffed against main -----------------
    for name in ("bench-quarter", "half"):
        def resolve_and_list(r: Registry, name: str = name) -> int:
            return len(r.active_edit_ids(r.resolve(name)))
        timings, n_active = cold_and_warm(scratch, resolve_and_list, args.repeats, args.repeats)
        resolve_only, _ = cold_and_warm(scratch, lambda r, name=name: r.resolve(name), args.repeats, args.repeats)
        out[f"resolve_and_list_{name}"] = dict(timings, n_active=n_active, resolve=resolve_only)
        print(f"  resolve + list {name}: {timings['cold_with_open']['median_s']:.3f} s cold with open", flush=True)
    with Registry.open(scratch) as registry:
        result = registry.diff(registry.resolve("half"), registry.resolve("main"))
    timings, _ = cold_and_warm(scratch, lambda r: r.diff(r.resolve("half"), r.resolve("main")), args.repeats, args.repeats)
    out["diff_half_vs_main"] = dict(timings, added=len(result["added"]), removed=len(result["removed"]),
                                    note="branch `half` at the commit where half of the adds happened, against main's head")
    print(f"  diff half main: {timings['cold']['median_s']:.3f} s cold, {len(result['added'])} added, "
          f"{len(result['removed'])} removed", flush=True)
    if args.cli_diff:
        command = [str(CLI), "--registry", str(scratch), "diff", "half", "main", "--json"]
        try:
            t, text = run_cli(command, timeout=args.cli_diff_timeout)
            document = json.loads(text)
            out["diff_half_vs_main_cli"] = {"wall_s": t, "added": len(document["added"]), "removed": len(document["removed"]),
                                            "command": "sola --registry SCRATCH diff half main --json"}
        except subprocess.TimeoutExpired:
            t, out["diff_half_vs_main_cli"] = args.cli_diff_timeout, {"wall_s": None, "timed_out_after_s": args.cli_diff_timeout}
        print(f"  CLI diff half main: {t:.1f} s", flush=True)

    # --- merges of 1k-edit proposal branches ------------------------------------------------------
    merges = []
    for round_ in range(args.merges):
        name = "proposal" if round_ == 0 else f"proposal-{round_ + 1}"
        with Registry.open(scratch, writable=True) as registry:
            fork = registry.head()
            registry.create_branch(name, fork, "bench")
            started = time.perf_counter()
            with BulkLoader(registry, batch=1000, branch=name) as loader:
                proposed = [loader.add(e["tensors"], e["provenance"], e["key_prompts"], "proposer", e["message"])
                            for e in (random_edit(synthetic) for _ in range(args.proposal_edits))]
            t_load = time.perf_counter() - started
            on_main = []
            started = time.perf_counter()
            for _ in range(args.main_edits):
                e = random_edit(synthetic)
                on_main.append(registry.store_edit(e["tensors"], e["provenance"], e["key_prompts"], str(synthetic.rng.choice(AUTHORS)),
                                                   e["message"])[0])
            t_main = time.perf_counter() - started
            main_before = registry.head()
            expected = dict(registry.members(main_before))
            expected.update({e: ACTIVE for e in proposed})
            proposal_head = registry.branch_head(name)
            t_merge, report = timed(lambda: editsets.merge(registry, name, "main", "bench", "benchmark"))
            merged = registry.head()
            got = registry.members(merged)
        check = {"fast_forward": report["fast_forward"], "conflicts": len(report["conflicts"]), "warnings": len(report["warnings"]),
                 "added": len(report["added"]), "removed": len(report["removed"]),
                 "parents_ok": merged.parents == (main_before.commit_id, proposal_head.commit_id),
                 "base_is_fork": report["base"] == fork.commit_id, "members_ok": got == expected,
                 "n_members": len(got), "n_active": merged.n_active}
        merges.append({"branch": name, "proposal_edits": len(proposed), "main_edits_since_fork": len(on_main),
                       "bulk_load_s": t_load, "main_store_edit_s": t_main, "merge_s": t_merge, "check": check,
                       "merge_commit": merged.commit_id})
        print(f"  merge {name} ({len(proposed)} edits, {len(on_main)} on main since the fork): {t_merge:.2f} s, {check}", flush=True)
    out["merges"] = merges
    out["merge"] = dict(stats([m["merge_s"] for m in merges]), all_checks_ok=all(
        m["check"]["members_ok"] and m["check"]["parents_ok"] and m["check"]["base_is_fork"] and not m["check"]["fast_forward"]
        and m["check"]["added"] == m["proposal_edits"] and not m["check"]["removed"] for m in merges))

    # --- after the merges: log through merge commits, blame of a merged-in edit, graph checks ------
    def log20(r: Registry) -> int:
        return len([c.to_dict() for c in r.log(20)])
    timings, _ = cold_and_warm(scratch, log20, args.repeats, args.repeats * 4)
    out["log20_after_merges"] = timings
    with Registry.open(scratch) as registry:
        key_ids, owners, matrix = registry.all_keys()
        last_merge = merges[-1]
        proposal_key = len(owners) - args.main_edits - 1  # the last key the last proposal added (keys are dense in write order)
        t, moments = timed(lambda: blame(registry, matrix[proposal_key], registry.head()))
        out["blame_merged_edit"] = {"seconds": t, "moments": [{k: m[k] for k in ("commit", "op", "edit", "tombstone")} for m in moments],
                                    "answered_at_merge_commit": bool(moments) and moments[-1]["commit"] == last_merge["merge_commit"]
                                    and moments[-1]["edit"] == owners[proposal_key]}
        print(f"  blame of a merged-in edit: {t:.2f} s, at merge commit: {out['blame_merged_edit']['answered_at_merge_commit']}", flush=True)
        scratch_report = Report()
        known = {row[0] for row in registry.catalog.scan("edits")[1]}
        t_trees, trees = timed(lambda: _check_trees(registry, scratch_report, known))
        t_commits, commits = timed(lambda: _check_commits(registry, scratch_report, known, trees))
        refs = refs_parts(registry, scratch_report, commits)
        out["scratch_graph_checks"] = {"ok": scratch_report.ok, "problems": scratch_report.problems[:10], "trees_s": t_trees,
                                       "commits_s": t_commits, **refs, "checked": scratch_report.checked}
        print(f"  scratch graph checks: ok={scratch_report.ok} ({t_trees + t_commits + sum(refs.values()):.1f} s)", flush=True)
    return out


def blames(root: Path, repeats: int) -> dict[str, Any]:
    """Blame of stored keys: an edit active at main, a revoked one, a superseded one."""
    with Registry.open(root) as registry:
        head = registry.head()
        key_ids, owners, matrix = registry.all_keys()
        members = registry.members(head)
        revoked_op = superseded_op = None
        chain = first_parents(registry.catalog.parent_map(), head.commit_id)
        for commit in registry.catalog.commits(chain[1:3000]).values():
            changes = registry.changes(commit.commit_id)
            if commit.op == "revoke" and revoked_op is None and not members.get(changes[0][0]):
                revoked_op = changes[0][0]
            if commit.op == "supersede" and superseded_op is None:
                old = [e for e, s in changes if s is None]
                if old and not members.get(old[0]):
                    superseded_op = old[0]
        index = {e: k for k, e in reversed(list(zip(key_ids.tolist(), owners)))}
        picks = {"active": index[next(e for e in owners[len(owners) // 2:] if members.get(e) == ACTIVE)]}
        if revoked_op:
            picks["revoked"] = index[revoked_op]
        if superseded_op:
            picks["superseded"] = index[superseded_op]
    out: dict[str, Any] = {"keys": len(key_ids), "first_parent_chain": len(chain)}
    for label, key in picks.items():
        query = matrix[key].copy()
        timings, moments = cold_and_warm(root, lambda r: blame(r, query, r.head()), repeats, repeats)
        final = moments[-1] if moments else None
        expected_edit = owners[key] if label == "active" else None
        out[label] = dict(timings, key_id=int(key), edit=owners[key], moments=len(moments),
                          ops=[m["op"] for m in moments], final_edit=final and final["edit"],
                          as_expected=bool(moments) and moments[0]["edit"] == owners[key] and final["edit"] == expected_edit)
        print(f"  blame ({label}): {timings['cold_with_open']['median_s']:.2f} s cold with open, "
              f"{timings['warm']['median_s']:.2f} s warm, {len(moments)} moment(s) {[m['op'] for m in moments]}", flush=True)
    return out


def logs(root: Path, repeats: int) -> dict[str, Any]:
    def log20(r: Registry) -> int:
        return len([c.to_dict() for c in r.log(20)])
    api, _ = cold_and_warm(root, log20, repeats * 2, repeats * 4)
    args = [str(CLI), "--registry", str(root), "log", "--limit", "20", "--json"]
    run_cli(args)
    cli = [run_cli(args)[0] for _ in range(repeats * 2)]
    startup = [run_cli([sys.executable, "-c", "import sola.cli"])[0] for _ in range(repeats)]
    python = [run_cli([sys.executable, "-c", "pass"])[0] for _ in range(repeats)]
    return {"api": api, "cli": stats(cli), "cli_import_only": stats(startup), "python_start": stats(python),
            "cli_command": " ".join(["sola", "--registry", str(root), "log", "--limit", "20", "--json"])}


def verify_parts(root: Path) -> dict[str, Any]:
    with Registry.open(root) as registry:
        t, report = timed(lambda: verify(registry))
        out: dict[str, Any] = {"seconds": t, "ok": report.ok, "problems": report.problems[:10], "notes": report.notes,
                               "checked": report.checked}
        print(f"  verify: {t:.1f} s ok={report.ok}", flush=True)
        parts: dict[str, float] = {}
        scratch = Report()
        keys_by_id: dict[int, np.ndarray] = {}
        parts["key_vectors_read_s"], stored = timed(lambda: dict(registry.catalog.scan("key_vectors")[1]))
        parts["edits_and_objects_s"], _ = timed(lambda: _check_edits(registry, scratch, keys_by_id, stored))
        parts["key_vectors_s"], _ = timed(lambda: _check_key_vectors(registry, scratch, keys_by_id, stored))
        parts["known_edits_s"], known = timed(lambda: {row[0] for row in registry.catalog.scan("edits")[1]})
        parts["trees_s"], trees = timed(lambda: _check_trees(registry, scratch, known))
        parts["commits_s"], commits = timed(lambda: _check_commits(registry, scratch, known, trees))
        parts.update(refs_parts(registry, scratch, commits))
        parts["caches_s"], _ = timed(lambda: _check_caches(registry, scratch, keys_by_id))
        parts["list_objects_s"], _ = timed(lambda: sum(1 for _ in registry.objects))
        out["breakdown_second_run"] = parts
    return out


def tree_storage(root: Path) -> dict[str, Any]:
    """Rows and blocks of the skip-delta tree storage, by raw read-only queries."""
    with _raw_connection(root) as raw:
        count = lambda sql: raw.execute(sql).fetchone()[0]  # noqa: E731
        rows = {t: count(f"SELECT count(*) FROM {t}") for t in ("commits", "commit_parents", "commit_changes", "trees", "tree_members", "edits")}
        per_tree = raw.execute("""SELECT t.level, count(m.edit_id) AS n FROM trees t LEFT JOIN tree_members m USING (tree_id)
                                  GROUP BY t.tree_id, t.level""").fetchall()
        block_size = count("SELECT block_size FROM pragma_database_size()")
        blocks = {t: count(f"SELECT count(DISTINCT block_id) FROM pragma_storage_info('{t}') WHERE persistent")
                  for t in ("tree_members", "trees", "commits", "commit_changes", "edits", "key_vectors")}
    sizes = np.array([n for _, n in per_tree])
    levels = np.array([level for level, _ in per_tree])
    by_zeros: dict[str, float] = {}
    for zeros in range(0, 18):
        chosen = (levels > 0) & ((levels & -levels) == (1 << zeros))
        if chosen.any():
            by_zeros[str(1 << zeros)] = float(sizes[chosen].mean())
    return {"rows": rows, "tree_member_rows_per_commit": rows["tree_members"] / rows["commits"],
            "tree_member_rows_per_tree": rows["tree_members"] / rows["trees"],
            "largest_delta_rows": int(sizes.max()), "median_delta_rows": float(np.median(sizes)),
            "max_level": int(levels.max()), "log2_max_level": float(np.log2(max(levels.max(), 1))),
            "mean_rows_by_level_lowest_set_bit": by_zeros,
            "blocks": {t: {"blocks": b, "bytes": b * block_size, "bytes_per_commit": b * block_size / rows["commits"]} for t, b in blocks.items()},
            "block_size": block_size,
            "note": "a tree at level L stores its difference from the tree at level L & (L-1): 2^(trailing zeros of L) commits' worth "
                    "of changes; blocks are DuckDB storage blocks touched by the table (compressed, shared blocks counted in each)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/sola-scale"))
    parser.add_argument("--edits", type=int, default=100_000, help="steps to fill --root with when it holds no registry")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="samples per cheap item (cold and warm)")
    parser.add_argument("--deep-repeats", type=int, default=1, help="cold samples of main~N for N >= 10,000 (one step per commit)")
    parser.add_argument("--deep-walk", action="store_true", help="also walk main~N to the half-add point (~52k steps) instead of projecting it")
    parser.add_argument("--merges", type=int, default=3, help="proposal branches made and merged, each one sample")
    parser.add_argument("--proposal-edits", type=int, default=1000)
    parser.add_argument("--main-edits", type=int, default=5, help="edits stored on main after each proposal forks")
    parser.add_argument("--skip-verify", action="store_true")
    parser.add_argument("--cli-diff", action=argparse.BooleanOptionalAction, default=True,
                        help="also time `sola diff half main --json` once (it summarises every edit of the diff)")
    parser.add_argument("--cli-diff-timeout", type=float, default=300.0)
    parser.add_argument("--keep-scratch", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "editsets_scale.json")
    args = parser.parse_args()

    document: dict[str, Any] = {
        "command": " ".join(["OMP_NUM_THREADS=1", ".venv/bin/python", "benchmarks/editsets_scale.py", *sys.argv[1:]]),
        "started": iso(utcnow()), "nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
        "environment": environment(), "targets": TARGETS, "machine": [machine("start")],
        "code": code_state(),
    }
    document["environment"]["note"] = ("shared 2-core VM; other agents ran pytest and edits concurrently "
                                       "(see machine[].pytest_processes and busiest_processes per phase)")
    if not (args.root / "registry.duckdb").exists():
        print(f"filling {args.root} with {args.edits} edits (scale.py's bulk fill) ...", flush=True)
        document["fill"] = fill(args.root, args.edits, "bulk", 1000, args.seed, 0.0)
    with Registry.open(args.root) as registry:
        document["counts"] = registry.counts()
        document["counts"]["active_at_main"] = registry.head().n_active
    print(f"registry {args.root}: {document['counts']}", flush=True)
    m: dict[str, Any] = {}
    document["measurements"] = m

    def phase(label: str) -> None:
        """Record the machine's state; save what is measured so far (a late failure keeps it)."""
        document["machine"].append(machine(label))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(dict(document, partial=True), indent=1, default=str))

    phase("tree storage")
    m["tree_storage"] = tree_storage(args.root)
    print(f"  tree_members {m['tree_storage']['rows']['tree_members']} rows for {m['tree_storage']['rows']['commits']} commits "
          f"({m['tree_storage']['tree_member_rows_per_commit']:.2f} per commit)", flush=True)
    phase("log")
    m["log"] = logs(args.root, args.repeats)
    print(f"  log(20) API {m['log']['api']['cold']['median_s']:.4f} s cold, CLI {m['log']['cli']['median_s']:.3f} s", flush=True)
    phase("diff on main")
    m["diff_main"] = diff_on_main(args.root, args.repeats)
    print(f"  diff (main, {m['diff_main']['adds_apart']} adds apart): {m['diff_main']['cold']['median_s']:.3f} s cold", flush=True)
    phase("blame")
    m["blame"] = blames(args.root, args.repeats)
    phase("scratch copy")
    scratch, t_copy = scratch_copy(args.root)
    try:
        m["scratch"] = {"path": str(scratch), "copy_s": t_copy,
                        "how": "registry.duckdb copied, objects/ hard-linked file by file (cp -al), no cache/"}
        phase("writes on the scratch copy")
        m.update(write_side(scratch, args))
    finally:
        if not args.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    phase("revisions")
    m["revisions"] = revisions(args.root, args.repeats, args.deep_repeats, args.deep_walk)
    if not args.skip_verify:
        phase("verify")
        m["verify"] = verify_parts(args.root)
    phase("end")

    r = m["revisions"]
    resolve_list = {k: v["resolve_and_list_cold_with_open_median_s"] or v["resolve_plus_list_cold_median_s"] for k, v in r.items()
                    if isinstance(v, dict) and "resolve" in v}
    document["summary"] = {
        "resolve_and_list_cold_s": resolve_list,
        "resolve_and_list_tag_cold_s": m["resolve_and_list_bench-quarter"]["cold_with_open"]["median_s"],
        "resolve_and_list_branch_cold_s": m["resolve_and_list_half"]["cold_with_open"]["median_s"],
        "diff_main_50k_adds_cold_s": m["diff_main"]["cold"]["median_s"],
        "diff_branch_half_vs_main_cold_s": m["diff_half_vs_main"]["cold"]["median_s"],
        "merge_1k_median_s": m["merge"]["median_s"], "merge_1k_max_s": m["merge"]["max_s"], "merge_checks_ok": m["merge"]["all_checks_ok"],
        "blame_cold_with_open_s": {k: v["cold_with_open"]["median_s"] for k, v in m["blame"].items() if isinstance(v, dict)},
        "log20_api_cold_with_open_s": m["log"]["api"]["cold_with_open"]["median_s"],
        "log20_cli_s": m["log"]["cli"]["median_s"],
        "verify_s": m.get("verify", {}).get("seconds"),
        "tree_member_rows_per_commit": m["tree_storage"]["tree_member_rows_per_commit"],
    }
    document["finished"] = iso(utcnow())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=1, default=str))
    print(json.dumps(document["summary"], indent=1, default=str))


if __name__ == "__main__":
    main()
