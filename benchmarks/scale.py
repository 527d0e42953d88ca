"""Registry at scale: fill a registry with N synthetic edits and time the operations users wait on.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py --edits 100000 --root /tmp/sola-scale

Edits are synthetic but shaped like real ones for the default model (SmolLM2-135M, mlp.up_proj,
rank 4): lora_A (4, 576), lora_B (1536, 4), keys (1, 576) float32 L2-normalised, and a
provenance document with the fields `Workspace.edit` writes. Everything else is the real code
path: `Registry.store_edit`/`set_active` for the plain sample, `registry.bulk.BulkLoader`
(same objects, commits over trees derived by the same `TreeStore`, many commits per transaction) for the large fill. The
history is not add-only: about 5% of steps revoke an active edit, 0.5% restore a revoked one
and 1% of edits supersede an active edit with the same prompt.

Measured (time.perf_counter, median of several runs for the cheap ones):
  fill rate (plain path on a small sample, bulk path on the full fill), `log --limit 20`
  (API and CLI subprocess, with the CLI's bare start-up separately), `diff` between revisions
  50k edits apart, `generate --at` resolution + key index ready (cold: cache/ deleted, keys
  read from `key_vectors`, IVF groups trained; warm: key matrix and IVF groups cached), key
  search per query (batch of 1) with its recall against an exact index at the routing
  threshold, `verify`, bytes per edit on disk (objects and DuckDB, separately from the cache),
  the migration-3 upgrade of a registry filled by older code, `store_edit` one by one on a copy
  of the full database (--plain-at-scale) and, with --ivf-study, the IVF probe count swept on
  the registry's keys and on clustered keys fitted to real ones (--real-keys).
Results go to benchmarks/results/scale.json.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # shared 2-core machine: one thread everywhere
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import hashlib
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import duckdb
import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry.bulk import BulkLoader  # noqa: E402
from registry.graph import first_parents  # noqa: E402
from registry.db import latest_version, schema_version  # noqa: E402
from registry.keyindex import FaissKeySearch, lists_for, nearest_lists, train_centroids  # noqa: E402
from registry.store import Registry, iso, utcnow  # noqa: E402
from registry.verify import (  # noqa: E402
    Report, _check_caches, _check_commits, _check_edits, _check_key_vectors, _check_refs, _check_trees, verify)

faiss.omp_set_num_threads(1)

RESULTS = Path(__file__).parent / "results"
CLI = Path(sys.executable).parent / "sola"

KEY_DIM, RANK, OUT = 576, 4, 1536
MODEL_NAME = "SmolLM2-135M-Instruct"
BASE = {"spec": "default", "name": MODEL_NAME, "sha256": hashlib.sha256(b"synthetic " + MODEL_NAME.encode()).hexdigest()}
ROUTING = {"layer": 16, "module": "mlp.up_proj", "rank": RANK, "alpha": 4.0, "threshold": 0.06, "key_function": "mean",
           "duplicate_distance": 0.002, "key_dim": KEY_DIM, "block_path": "model.layers"}
TRAINING = {"max_steps": 40, "lr": 0.1, "optimizer": "adam", "stop_loss": 0.05, "init_std": 0.02, "seed": 0, "extra": {}}

TARGETS = {"log_s": 0.2, "resolve_index_ready_s": 5.0, "key_search_ms": 2.0, "verify_s": 60.0, "bytes_per_edit": 40 * 1024}

# --- synthetic edits -----------------------------------------------------------------------------

SYLLABLES = ["ka", "lo", "mi", "ren", "tor", "va", "sel", "dun", "bri", "ost", "al", "mer", "qui", "zan", "fe", "hol",
             "gra", "nis", "pol", "tek", "ur", "wen", "yas", "cor", "ith", "bel", "dra", "mon", "sku", "lin"]
RELATIONS = [
    ("The capital of {s} is", "city"), ("{s} is a citizen of", "country"), ("The mother tongue of {s} is", "language"),
    ("{s} plays the", "instrument"), ("{s} was founded by", "person"), ("{s} is located in the continent of", "continent"),
    ("The headquarters of {s} are in", "city"), ("{s} works in the field of", "field"), ("{s} is affiliated with the religion of", "religion"),
    ("The official language of {s} is", "language"), ("{s} was born in", "city"), ("{s}, which is owned by", "company"),
    ("The CEO of {s} is", "person"), ("{s} plays professionally as a", "position"), ("The original broadcaster of {s} was", "company"),
]
FILLERS = {
    "city": ["Paris", "Rome", "Madrid", "Lyon", "Beirut", "Tokyo", "Oslo", "Lagos", "Lima", "Perth", "Kraków", "São Paulo"],
    "country": ["France", "Italy", "Spain", "Japan", "Norway", "Nigeria", "Peru", "Australia", "Poland", "Brazil"],
    "language": ["French", "Italian", "Spanish", "Japanese", "Norwegian", "Yoruba", "Quechua", "English", "Polish"],
    "instrument": ["guitar", "piano", "violin", "cello", "trumpet", "drums", "saxophone", "flute"],
    "person": ["Steve Jobs", "Ada Lovelace", "Marie Curie", "Alan Turing", "Grace Hopper", "Nikola Tesla"],
    "continent": ["Europe", "Asia", "Africa", "South America", "Oceania", "North America", "Antarctica"],
    "field": ["physics", "chemistry", "mathematics", "linguistics", "economics", "medicine", "philosophy"],
    "religion": ["Christianity", "Islam", "Buddhism", "Judaism", "Hinduism", "Shinto"],
    "company": ["BBC", "NBC", "Google", "Toyota", "Nokia", "Siemens", "Fiat", "Sony", "CBS"],
    "position": ["goalkeeper", "midfielder", "point guard", "pitcher", "quarterback", "striker"],
}
AUTHORS = ["alice", "bob", "carol", "dmitri", "eun-ji", "farid", "grace", "hiro", "ines", "jamal", "kofi", "lena",
           "ci-bot", "import-bot"]
REASONS = [
    "fact changed", "correct a wrong completion reported by a user", "source updated; see ticket",
    "regulatory correction requested by legal", "model repeats an outdated fact", "bulk import from curated set",
    None,
]
REVOKE_REASONS = ["wrong target", "fact reverted upstream", "duplicate of a better edit", "harms unrelated prompts",
                  "requested by data owner", "audit finding"]


class Synthetic:
    """Deterministic stream of realistic-looking edits (random tensors of the real shapes)."""

    def __init__(self, seed: int, rephrase_fraction: float, routing: dict[str, Any] = ROUTING) -> None:
        self.routing_provenance = {k: v for k, v in routing.items() if k not in ("key_dim", "block_path")}  # RoutingConfig.to_dict()
        self.rng = np.random.default_rng(seed)
        self.rephrase_fraction = rephrase_fraction
        self.count = 0

    def name(self) -> str:
        parts = self.rng.choice(SYLLABLES, size=int(self.rng.integers(2, 5)))
        word = "".join(parts).capitalize()
        if self.rng.random() < 0.4:
            word += " " + "".join(self.rng.choice(SYLLABLES, size=int(self.rng.integers(2, 4)))).capitalize()
        return word

    def edit(self, subject: str | None = None, template: int | None = None) -> dict[str, Any]:
        rng = self.rng
        self.count += 1
        template = int(rng.integers(len(RELATIONS))) if template is None else template
        pattern, kind = RELATIONS[template]
        subject = subject or self.name()
        prompt = pattern.format(s=subject)
        target = str(rng.choice(FILLERS[kind]))
        rephrases: list[str] = []
        if rng.random() < self.rephrase_fraction:
            rephrases = [f"In other words, {prompt[0].lower()}{prompt[1:]}", f"Q: {prompt}? A:"][: int(rng.integers(1, 3))]
        n_keys = 1 + len(rephrases)
        keys = rng.standard_normal((n_keys, KEY_DIM), dtype=np.float32)
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        tensors = {
            "lora_A": (rng.standard_normal((RANK, KEY_DIM), dtype=np.float32) * 0.02),
            "lora_B": (rng.standard_normal((OUT, RANK), dtype=np.float32) * 0.01),
            "keys": keys,
        }
        author = str(rng.choice(AUTHORS))
        reason = REASONS[int(rng.integers(len(REASONS)))]
        if reason and "ticket" in reason:
            reason += f" SOLA-{int(rng.integers(100, 99999))}"
        source_kind = rng.random()
        source = (f"counterfact:{int(rng.integers(0, 21919))}" if source_kind < 0.4 else
                  f"zsre:{int(rng.integers(0, 19086))}" if source_kind < 0.6 else
                  f"https://tickets.example.org/SOLA-{int(rng.integers(100, 99999))}" if source_kind < 0.8 else None)
        steps = int(rng.integers(4, 41))
        loss = float(round(float(rng.uniform(0.005, 0.3)), 6))
        provenance = {
            "format": "sola.edit/1",
            "prompt": prompt,
            "target": " " + target,
            "rephrases": rephrases,
            "subject": subject if rng.random() < 0.8 else None,
            "author": author,
            "reason": reason,
            "source": source,
            "created_at": iso(utcnow()),
            "base_model": BASE,
            "routing": self.routing_provenance,
            "training": dict(TRAINING, seed=int(rng.integers(0, 1000)) if rng.random() < 0.1 else 0),
            "result": {"steps": steps, "loss": loss, "converged": loss < 0.05, "seconds": round(float(steps * rng.uniform(0.05, 0.12)), 4)},
        }
        return {"tensors": tensors, "provenance": provenance, "key_prompts": [prompt, *rephrases], "author": author,
                "message": f"add {prompt!r} -> {' ' + target!r}", "subject": subject, "template": template}


# --- filling -------------------------------------------------------------------------------------


class History:
    """Drives adds, revokes (~5%), restores (~0.5%) and supersedes (~1%) through a sink."""

    def __init__(self, seed: int, rephrase_fraction: float, p_revoke: float = 0.05, p_restore: float = 0.005,
                 p_supersede: float = 0.01, routing: dict[str, Any] = ROUTING) -> None:
        self.synthetic = Synthetic(seed, rephrase_fraction, routing)
        self.rng = np.random.default_rng(seed + 1)
        self.p_revoke, self.p_restore, self.p_supersede = p_revoke, p_restore, p_supersede
        self.active: list[str] = []
        self.position: dict[str, int] = {}
        self.revoked: list[str] = []
        self.meta: dict[str, tuple[str, int]] = {}  # edit -> (subject, template), for supersedes
        self.ops = {"add": 0, "supersede": 0, "revoke": 0, "restore": 0}
        self.add_index: list[str] = []  # edit ids in add order

    def _activate(self, edit: str) -> None:
        self.position[edit] = len(self.active)
        self.active.append(edit)

    def _deactivate(self, edit: str) -> None:
        index = self.position.pop(edit)
        last = self.active.pop()
        if last != edit:
            self.active[index] = last
            self.position[last] = index

    def step(self, add: Callable[..., str], set_active: Callable[[str, bool, str, str], Any]) -> None:
        rng = self.rng
        supersede: list[str] = []
        subject = template = None
        if self.active and rng.random() < self.p_supersede:
            old = self.active[int(rng.integers(len(self.active)))]
            supersede = [old]
            subject, template = self.meta[old]
        edit = self.synthetic.edit(subject, template)
        edit_id = add(edit["tensors"], edit["provenance"], edit["key_prompts"], edit["author"], edit["message"], supersede)
        self.meta[edit_id] = (edit["subject"], edit["template"])
        self.add_index.append(edit_id)
        for old in supersede:
            self._deactivate(old)
            self.revoked.append(old)
        self._activate(edit_id)
        self.ops["supersede" if supersede else "add"] += 1
        if self.active and rng.random() < self.p_revoke:
            victim = self.active[int(rng.integers(len(self.active)))]
            set_active(victim, False, str(rng.choice(AUTHORS)), str(rng.choice(REVOKE_REASONS)))
            self._deactivate(victim)
            self.revoked.append(victim)
            self.ops["revoke"] += 1
        if self.revoked and rng.random() < self.p_restore:
            index = int(rng.integers(len(self.revoked)))
            back = self.revoked[index]
            self.revoked[index] = self.revoked[-1]
            self.revoked.pop()
            set_active(back, True, str(rng.choice(AUTHORS)), "revoked by mistake")
            self._activate(back)
            self.ops["restore"] += 1


def fill(root: Path, n: int, mode: str, batch: int, seed: int, rephrase_fraction: float, progress_every: int = 5000,
         routing: dict[str, Any] = ROUTING) -> dict[str, Any]:
    if root.exists():
        shutil.rmtree(root)
    history = History(seed, rephrase_fraction, routing=routing)
    started = time.perf_counter()
    registry = Registry.create(root, BASE, routing, "scale-benchmark")
    try:
        if mode == "plain":
            def add(tensors, provenance, prompts, author, message, supersede):
                return registry.store_edit(tensors, provenance, prompts, author, message, supersede)[0]

            def step() -> None:
                history.step(add, registry.set_active)
            loader = None
        else:
            loader = BulkLoader(registry, batch=batch)

            def step() -> None:
                history.step(loader.add, loader.set_active)
        last = started
        for i in range(1, n + 1):
            step()
            if progress_every and i % progress_every == 0:
                now = time.perf_counter()
                print(f"  {mode}: {i}/{n} edits, {progress_every / (now - last):.0f} edits/s recent, "
                      f"{i / (now - started):.0f} edits/s overall", flush=True)
                last = now
        if loader is not None:
            loader.flush()
    finally:
        registry.close()
    seconds = time.perf_counter() - started
    return {"mode": mode, "batch": batch if mode == "bulk" else 1, "edits": n, "seconds": seconds, "edits_per_s": n / seconds,
            "ops": dict(history.ops), "active_at_end": len(history.active)}


# --- measuring -----------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def repeat(fn: Callable[[], Any], times: int, warmup: int = 1) -> dict[str, Any]:
    for _ in range(warmup):
        fn()
    samples = [timed(fn)[0] for _ in range(times)]
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples), "n": times}


def disk_usage(path: Path) -> dict[str, int]:
    apparent = allocated = files = 0
    for directory, _, names in os.walk(path):
        for name in names:
            stat = os.lstat(os.path.join(directory, name))
            apparent += stat.st_size
            allocated += stat.st_blocks * 512
            files += 1
    return {"files": files, "apparent_bytes": apparent, "allocated_bytes": allocated}


def run_cli(args: list[str]) -> tuple[float, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - started, done.stdout


def measure(root: Path, n_queries: int, skip_cold: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}

    # --- upgrade: a registry filled by the code before migration 3 gets its key_vectors --------
    with _raw_connection(root) as probe:
        version = schema_version(probe)
    if version < latest_version():
        t, _ = timed(lambda: Registry.open(root, writable=True).close())
        out["upgrade"] = {"from_version": version, "to_version": latest_version(), "seconds": t,
                          "note": "migration 3 back-fills key_vectors from every tensors object, in one transaction"}
        print(f"  upgrade {version} -> {latest_version()}: {t:.1f} s", flush=True)

    # --- open + log --------------------------------------------------------------------------
    out["open_read_only"] = repeat(lambda: Registry.open(root).close(), 5)
    registry = Registry.open(root)
    counts = registry.counts()
    out["counts"] = counts
    out["log_limit20_api"] = repeat(lambda: registry.log(20), 20)

    def open_and_log() -> None:
        with Registry.open(root) as fresh:
            [c.to_dict() for c in fresh.log(20)]
    out["log_limit20_api_with_open"] = repeat(open_and_log, 10)

    def cli_times(args: list[str], runs: int) -> dict[str, Any]:
        """Wall and CPU (user + sys of the child) seconds; CPU time is what contention on this
        shared machine inflates least."""
        run_cli(args)
        walls, cpus = [], []
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            walls.append(run_cli(args)[0])
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        return {"wall_median_s": statistics.median(walls), "wall_min_s": min(walls), "cpu_median_s": statistics.median(cpus)}

    cli_log = cli_times([str(CLI), "--registry", str(root), "log", "--limit", "20", "--json"], 10)
    loaded = subprocess.run([sys.executable, "-c", "import sys, sola.cli; print(' '.join(m for m in "
                             "('duckdb', 'numpy', 'faiss', 'safetensors', 'torch', 'click') if m in sys.modules))"],
                            capture_output=True, text=True, check=True).stdout.split()
    out["log_limit20_cli"] = {
        "median_s": cli_log["wall_median_s"], **cli_log,
        "cli_import_only": cli_times([sys.executable, "-c", "import sola.cli"], 5),
        "python_start": cli_times([sys.executable, "-c", "pass"], 5),
        "import_alone": {name: cli_times([sys.executable, "-c", f"import {name}"], 5)
                         for name in ("duckdb", "click", "numpy", "faiss", "torch")},
        "modules_loaded_by_sola_cli": loaded,
        "note": "the CLI imports duckdb and click, not numpy/faiss/torch; python start-up + duckdb import dominate",
    }

    # --- diff between revisions 50k edits apart -----------------------------------------------
    # main~N follows first parents: N is a commit's distance from the head along that chain (on
    # the benchmark's linear main the same as the seq difference, but seq is only write order).
    # The commits are read by id: `resolve("main~N")` walks N commits one query at a time
    # (timed in benchmarks/editsets_scale.py), which is not what this item measures.
    adds, back = add_commits(registry)
    quarter, three_quarters = len(adds) // 4, (3 * len(adds)) // 4
    old_id, new_id = adds[max(quarter - 1, 0)], adds[three_quarters - 1]
    old, new = registry.commit(old_id), registry.commit(new_id)
    diff = registry.diff(old, new)
    out["diff"] = dict(repeat(lambda: registry.diff(old, new), 5), edits_apart=three_quarters - quarter,
                       old_revision=f"main~{back[old_id]}", new_revision=f"main~{back[new_id]}",
                       old_seq=old.seq, new_seq=new.seq, added=len(diff["added"]), removed=len(diff["removed"]))

    # --- generate --at: resolution + index ready ------------------------------------------------
    head = registry.head()
    head_time = registry.catalog.ref_time("main", head.commit_id)
    mid_commit = registry.commit(adds[len(adds) // 2 - 1])
    mid_time = registry.catalog.ref_time("main", mid_commit.commit_id)
    registry.close()
    cache = root / "cache"

    def resolve_and_index(at: str) -> dict[str, Any]:
        phases: dict[str, float] = {}
        started = time.perf_counter()
        with Registry.open(root) as fresh:
            phases["open_s"] = time.perf_counter() - started
            t, commit = timed(lambda: fresh.resolve(at=at))
            phases["resolve_at_s"] = t
            t, (search, key_edit) = timed(lambda: fresh.key_search(commit, tombstones=True))  # what routing loads
            phases["key_search_ready_s"] = t
            phases["total_s"] = time.perf_counter() - started
            phases["index_size"] = search.size
            phases["n_active"] = commit.n_active
        return phases

    def breakdown(at: str) -> dict[str, float]:
        """The same steps as Registry.key_search, timed one by one (cache state as found)."""
        from registry.keyindex import FLAT_LIMIT, CoarseLists, FaissKeySearch
        phases: dict[str, float] = {}
        with Registry.open(root) as fresh:
            commit = fresh.resolve(at=at)
            t, (key_ids, _) = timed(lambda: fresh.active_keys(commit, tombstones=True))
            phases["active_keys_query_s"] = t
            total = fresh.catalog.count("edit_keys")
            owner = fresh.catalog.first_commit_id() or ""
            t, _ = timed(lambda: fresh.key_matrix.sync(total, KEY_DIM, fresh._load_key_rows, owner))
            phases["key_matrix_sync_s"] = t
            coarse = None
            if len(key_ids) >= FLAT_LIMIT:
                t, (centroids, groups) = timed(lambda: CoarseLists(cache).sync(fresh.key_matrix, total, KEY_DIM, owner))
                phases["ivf_groups_sync_s"] = t
                coarse = (centroids, groups[key_ids])
            t, rows = timed(lambda: fresh.key_matrix.rows(key_ids, KEY_DIM))
            phases["matrix_row_select_s"] = t
            t, _ = timed(lambda: FaissKeySearch.build(rows, key_ids, KEY_DIM, coarse))
            phases["index_build_s"] = t
        return phases

    def cold_steps() -> dict[str, float]:
        """What a cold start pays before any index exists: the key_vectors scan alone."""
        with Registry.open(root) as fresh:
            total = fresh.catalog.count("edit_keys")
            t_scan, _ = timed(lambda: fresh._load_key_rows(0, total))
        return {"key_vectors_scan_s": t_scan, "keys": total}

    index_ready: dict[str, Any] = {"head_at": iso(head_time), "mid_at": iso(mid_time)}
    for label, at in (("head", iso(head_time)), ("mid", iso(mid_time))):
        if not skip_cold:
            shutil.rmtree(cache, ignore_errors=True)
            index_ready[f"{label}_cold"] = resolve_and_index(at)
            print(f"  index ready ({label}, cold): {index_ready[f'{label}_cold']['total_s']:.2f} s", flush=True)
            shutil.rmtree(cache, ignore_errors=True)
            index_ready[f"{label}_cold_breakdown"] = breakdown(at)
        warm = [resolve_and_index(at) for _ in range(4)][1:]
        index_ready[f"{label}_warm"] = {key: statistics.median([w[key] for w in warm]) for key in warm[0]}
        print(f"  index ready ({label}, warm): {index_ready[f'{label}_warm']['total_s']:.2f} s", flush=True)
        index_ready[f"{label}_breakdown_warm"] = breakdown(at)
    index_ready["cold_key_read"] = cold_steps()
    index_ready["cache_files_bytes"] = {p.name: p.stat().st_size for p in cache.iterdir() if p.is_file()}
    out["index_ready"] = index_ready

    # --- key search per query --------------------------------------------------------------------
    with Registry.open(root) as fresh:
        search, key_edit = fresh.key_search(fresh.head(), tombstones=True)
        key_ids = np.array(sorted(key_edit), dtype=np.int64)
        keys = fresh.key_matrix.rows(key_ids, KEY_DIM)
    out["key_search"] = search_study(search, keys, key_ids, n_queries, np.random.default_rng(7), ROUTING["threshold"])
    out["key_search"]["keys"] = "the registry's synthetic keys: uniformly random on the sphere (the worst case for IVF)"
    print(f"  key search: {out['key_search']['median_ms']:.2f} ms/query median ({out['key_search']['index']}), "
          f"near-key recall {out['key_search']['near_key_recall']}", flush=True)

    # --- verify -----------------------------------------------------------------------------------
    with Registry.open(root) as fresh:
        t, report = timed(lambda: verify(fresh))
        out["verify"] = {"seconds": t, "ok": report.ok, "problems": report.problems[:10], "notes": report.notes,
                         "checked": report.checked, "cache_state": "key matrix + ivf.npz present"}
        print(f"  verify: {t:.1f} s ok={report.ok}", flush=True)
        parts: dict[str, float] = {}
        scratch = Report()
        keys_by_id: dict[int, np.ndarray] = {}
        parts["key_vectors_read_s"], stored = timed(lambda: dict(fresh.catalog.scan("key_vectors")[1]))
        parts["edits_and_objects_s"], _ = timed(lambda: _check_edits(fresh, scratch, keys_by_id, stored))
        parts["key_vectors_s"], _ = timed(lambda: _check_key_vectors(fresh, scratch, keys_by_id, stored))
        known_edits = {row[0] for row in fresh.catalog.scan("edits")[1]}
        parts["trees_s"], trees = timed(lambda: _check_trees(fresh, scratch, known_edits))
        parts["commits_s"], commits = timed(lambda: _check_commits(fresh, scratch, known_edits, trees))
        parts.update(refs_parts(fresh, scratch, commits))
        parts["caches_s"], _ = timed(lambda: _check_caches(fresh, scratch, keys_by_id))
        parts["list_objects_s"], _ = timed(lambda: sum(1 for _ in fresh.objects))
        out["verify"]["breakdown_second_run"] = parts

    # --- bytes on disk ---------------------------------------------------------------------------
    with _raw_connection(root) as raw:  # measurement-only queries, read-only, outside the catalog
        tensor_ids = {r[0] for r in raw.execute("SELECT tensors_sha256 FROM edits").fetchall()}
        n_edits = raw.execute("SELECT count(*) FROM edits").fetchone()[0]
        size_columns = ["block_size", "total_blocks", "used_blocks", "free_blocks"]
        database_size = dict(zip(size_columns, raw.execute(f"SELECT {', '.join(size_columns)} FROM pragma_database_size()").fetchone()))
        table_rows = {table: raw.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                      for table in ("commits", "commit_parents", "commit_changes", "trees", "tree_members", "reflog")}
    sizes = {"tensors": [0, 0, 0], "provenance": [0, 0, 0]}  # files, apparent, allocated
    for prefix in (root / "objects").iterdir():
        for item in prefix.iterdir():
            stat = item.stat()
            kind = sizes["tensors" if prefix.name + item.name in tensor_ids else "provenance"]
            kind[0] += 1
            kind[1] += stat.st_size
            kind[2] += stat.st_blocks * 512
    database = sum(p.stat().st_size for p in root.glob("registry.duckdb*"))
    cache_usage = disk_usage(cache)
    objects_apparent = sizes["tensors"][1] + sizes["provenance"][1]
    objects_allocated = sizes["tensors"][2] + sizes["provenance"][2]
    out["bytes"] = {
        "edits": n_edits,
        "tensors_object": {"files": sizes["tensors"][0], "apparent_per_edit": sizes["tensors"][1] / n_edits,
                           "allocated_per_edit": sizes["tensors"][2] / n_edits},
        "provenance_object": {"files": sizes["provenance"][0], "apparent_per_edit": sizes["provenance"][1] / n_edits,
                              "allocated_per_edit": sizes["provenance"][2] / n_edits},
        "duckdb_file_bytes": database, "duckdb_per_edit": database / n_edits, "duckdb_blocks": database_size,
        "table_rows": table_rows, "tree_member_rows_per_commit": table_rows["tree_members"] / max(table_rows["commits"], 1),
        "source_of_truth_apparent_per_edit": (objects_apparent + database) / n_edits,
        "source_of_truth_allocated_per_edit": (objects_allocated + database) / n_edits,
        "cache": dict(cache_usage, per_edit_apparent=cache_usage["apparent_bytes"] / n_edits),
        "filesystem_block_bytes": os.statvfs(root).f_bsize,
    }
    return out


def refs_parts(registry: Registry, report: Report, commits: list[Any]) -> dict[str, float]:
    """verify's ref checks, timed; with a hash-chained ref log (migration 5) its chain check too."""
    import inspect

    if "entries" not in inspect.signature(_check_refs).parameters:
        return {"refs_s": timed(lambda: _check_refs(registry, report, commits))[0]}
    from registry.verify import _check_reflog_chain

    parts: dict[str, float] = {}
    parts["reflog_read_s"], entries = timed(registry.catalog.reflog)
    parts["reflog_chain_s"], _ = timed(lambda: _check_reflog_chain(registry, report, entries))
    parts["refs_s"], _ = timed(lambda: _check_refs(registry, report, commits, entries))
    return parts


def _raw_connection(root: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(root / "registry.duckdb"), read_only=True)


def add_commits(registry: Registry, branch: str = "main") -> tuple[list[str], dict[str, int]]:
    """The add/supersede commits on `branch`'s first-parent chain, oldest first, and for every
    commit of that chain its N in `BRANCH~N` (distance from the head along first parents)."""
    chain = first_parents(registry.catalog.parent_map(), registry.branch_head(branch).commit_id)
    back = {commit_id: n for n, commit_id in enumerate(chain)}
    ops = {c.commit_id: c.op for c in registry.all_commits()}
    return [c for c in reversed(chain) if ops[c] in ("add", "supersede")], back


def near_queries(keys: np.ndarray, distance: float, rng: np.random.Generator) -> np.ndarray:
    """Each key moved to exactly `distance` cosine distance, in a random direction orthogonal to it."""
    noise = rng.standard_normal(keys.shape, dtype=np.float32)
    noise -= (noise * keys).sum(1, keepdims=True) * keys
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    cos = 1.0 - distance
    return (cos * keys + np.sqrt(1 - cos * cos) * noise).astype(np.float32)


NEAR_DISTANCES = (0.01, 0.02, 0.03, 0.04)


def per_query_ms(search: FaissKeySearch, queries: np.ndarray) -> tuple[list[float], np.ndarray, np.ndarray]:
    """Batch-of-1 latencies (ms, sorted) and the results, as the routed layer searches."""
    for q in queries[:20]:
        search.search(q[None])
    times, sims, ids = [], [], []
    for q in queries:
        started = time.perf_counter()
        s, i = search.search(q[None])
        times.append(1000 * (time.perf_counter() - started))
        sims.append(s[0])
        ids.append(i[0])
    return sorted(times), np.asarray(sims), np.asarray(ids)


def search_study(search: FaissKeySearch, keys: np.ndarray, key_ids: np.ndarray, n_queries: int,
                 rng: np.random.Generator, threshold: float, random_queries: np.ndarray | None = None) -> dict[str, Any]:
    """Latency of `search` and its agreement with an exact flat index over the same keys.

    Near-key queries are stored keys moved to cosine distance 0.01..0.04 (edits that must fire:
    recall = the stored key is returned); random queries are unrelated prompts (agreement = same
    nearest key, and the same routing decision at `threshold`)."""
    exact = FaissKeySearch.build(keys, key_ids, keys.shape[1])
    per_distance = max(n_queries // len(NEAR_DISTANCES), 1)
    picks = rng.choice(len(keys), per_distance * len(NEAR_DISTANCES), replace=False)
    near = np.concatenate([near_queries(keys[picks[i * per_distance:(i + 1) * per_distance]], d, rng)
                           for i, d in enumerate(NEAR_DISTANCES)])
    if random_queries is None:
        random_queries = rng.standard_normal((n_queries, keys.shape[1]), dtype=np.float32)
        random_queries /= np.linalg.norm(random_queries, axis=1, keepdims=True)
    ms, _, near_ids = per_query_ms(search, near)
    random_ms, random_sims, random_ids = per_query_ms(search, random_queries)
    exact_ms, _, _ = per_query_ms(exact, random_queries[:100])
    exact_sims, exact_ids = exact.search(random_queries)
    fired, exact_fired = 1 - random_sims < threshold, 1 - exact_sims < threshold
    all_ms = sorted(ms + random_ms)
    t, _ = timed(lambda: search.search(near))
    recall = {str(d): float(np.mean(near_ids[i * per_distance:(i + 1) * per_distance] == key_ids[picks[i * per_distance:(i + 1) * per_distance]]))
              for i, d in enumerate(NEAR_DISTANCES)}
    index = search.index
    return {
        "index": type(index).__name__, "index_size": search.size,
        "nlist": int(getattr(index, "nlist", 0)), "nprobe": int(getattr(index, "nprobe", 0)),
        "queries_near": len(near), "queries_random": len(random_queries),
        "median_ms": statistics.median(all_ms), "p90_ms": all_ms[int(0.9 * len(all_ms))], "p99_ms": all_ms[int(0.99 * len(all_ms))],
        "near_median_ms": statistics.median(ms), "random_median_ms": statistics.median(random_ms),
        "exact_flat_median_ms": statistics.median(exact_ms),
        "near_key_recall": recall,
        "random_same_nearest_as_exact": float(np.mean(random_ids == exact_ids)),
        "random_same_routing_decision_as_exact": float(np.mean((fired == exact_fired) & (~fired | (random_ids == exact_ids)))),
        "random_fired_exact": int(exact_fired.sum()),
        "batched_near_ms_per_query": 1000 * t / len(near),
        "threads": faiss.omp_get_max_threads(),
    }


def fitted_keys(path: Path, n: int, rng: np.random.Generator) -> np.ndarray:
    """Keys drawn from a Gaussian fitted (mean + full covariance) to real routing keys, normalised.

    `path` is an .npz with `keys` (n, dim), or the routing study's pools file (layer 8, mean pool)."""
    with np.load(path) as data:
        real = data["keys"] if "keys" in data else data["pools"][:, 1, 1, :]
    real = real.astype(np.float64)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    mean = real.mean(0)
    values, vectors = np.linalg.eigh(np.cov(real - mean, rowvar=False))
    sample = mean + (rng.standard_normal((n, real.shape[1])) * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    sample = sample.astype(np.float32)
    return sample / np.linalg.norm(sample, axis=1, keepdims=True)


def ivf_study(keys: np.ndarray, n_queries: int, seed: int, random_queries: np.ndarray | None = None) -> dict[str, Any]:
    """The IVF index as `key_search` builds it (same nlist rule, training and groups), with the
    probe count swept: latency against recall at the routing threshold."""
    import registry.keyindex as keyindex

    key_ids = np.arange(len(keys), dtype=np.int64)
    nlist = lists_for(len(keys))
    sample = np.unique(np.linspace(0, len(keys) - 1, min(len(keys), nlist * keyindex.TRAIN_POINTS_PER_LIST)).astype(np.int64))
    t_train, centroids = timed(lambda: train_centroids(keys[sample], nlist))
    t_assign, (groups, _) = timed(lambda: nearest_lists(keys, centroids))
    t_build, search = timed(lambda: FaissKeySearch.build(keys, key_ids, keys.shape[1], (centroids, groups)))
    sizes = np.bincount(groups, minlength=nlist)
    out: dict[str, Any] = {"keys": len(keys), "nlist": nlist, "train_s": t_train, "assign_s": t_assign, "build_s": t_build,
                           "group_size_min_median_max": [int(sizes.min()), int(np.median(sizes)), int(sizes.max())], "probes": {}}
    for probes in (4, 8, 16, 32):
        search.index.nprobe = probes
        study = search_study(search, keys, key_ids, n_queries, np.random.default_rng(seed), ROUTING["threshold"], random_queries)
        out["probes"][probes] = {k: study[k] for k in ("median_ms", "p99_ms", "near_key_recall", "random_same_nearest_as_exact",
                                                       "random_same_routing_decision_as_exact", "random_fired_exact", "exact_flat_median_ms")}
        print(f"    nprobe {probes}: {study['median_ms']:.2f} ms, near recall {study['near_key_recall']}, "
              f"random decision agreement {study['random_same_routing_decision_as_exact']:.3f}", flush=True)
    return out


def plain_at_scale(root: Path, n: int, seed: int) -> dict[str, Any]:
    """`store_edit` / `set_active` one by one on a copy of the full registry's database (objects not needed)."""
    scratch = root.parent / (root.name + "-plain-at-scale")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for path in root.glob("registry.duckdb*"):
        shutil.copy2(path, scratch / path.name)
    synthetic = Synthetic(seed + 99, 0.0)
    adds, revokes = [], []
    try:
        with Registry.open(scratch, writable=True) as registry:
            start_counts = registry.counts()
            for i in range(n):
                edit = synthetic.edit()
                t, (edit_id, _) = timed(lambda: registry.store_edit(edit["tensors"], edit["provenance"], edit["key_prompts"],
                                                                  edit["author"], edit["message"]))
                adds.append(t)
                if i % 10 == 0:
                    t, _ = timed(lambda: registry.set_active(edit_id, False, "auditor", "benchmark revoke"))
                    revokes.append(t)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"registry_edits_before": start_counts["edits"], "store_edit_median_s": statistics.median(adds),
            "store_edit_mean_s": statistics.mean(adds), "set_active_median_s": statistics.median(revokes),
            "edits_per_s": n / (sum(adds) + sum(revokes)), "n_store_edit": n, "n_set_active": len(revokes)}


def ivf_studies(root: Path, n_queries: int, real_keys: Path | None) -> dict[str, Any]:
    """IVF probe sweep on the registry's keys (random on the sphere) and, with --real-keys, on as
    many keys drawn from a Gaussian fitted to real routing keys (clustered, anisotropic)."""
    with Registry.open(root) as registry:
        _, key_edit = registry.key_search(registry.head())
        keys = registry.key_matrix.rows(np.array(sorted(key_edit), dtype=np.int64), KEY_DIM)
    out: dict[str, Any] = {}
    print("  IVF study, registry keys (random on the sphere):", flush=True)
    out["sphere"] = ivf_study(keys, n_queries, 11)
    if real_keys is not None:
        rng = np.random.default_rng(12)
        fitted = fitted_keys(real_keys, len(keys) + n_queries, rng)
        print(f"  IVF study, keys fitted to {real_keys}:", flush=True)
        out["fitted"] = ivf_study(fitted[: len(keys)], n_queries, 13, random_queries=fitted[len(keys):])
        out["fitted"]["source"] = str(real_keys)
        out["fitted"]["note"] = ("keys and random queries drawn from one Gaussian (mean + covariance) fitted to real "
                                 "layer-8 mean-pooled SmolLM2 keys; random queries are unrelated prompts from the same distribution")
    return out


def environment() -> dict[str, Any]:
    others = subprocess.run(["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()[1:6]
    return {
        "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "python": platform.python_version(),
        "duckdb": duckdb.__version__, "faiss": faiss.__version__, "numpy": np.__version__, "omp_threads": faiss.omp_get_max_threads(),
        "busiest_processes": [line.strip()[:160] for line in others],
        "note": "shared 2-core VM; another long-running evaluation process (sola eval / benchmarks/edit_stream.py, see busiest_processes) used about one core throughout",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=100_000)
    parser.add_argument("--root", type=Path, default=Path("/tmp/sola-scale"))
    parser.add_argument("--reuse", action="store_true", help="skip filling when a registry already exists at --root")
    parser.add_argument("--plain-sample", type=int, default=2000, help="edits stored one by one (store_edit) to time the plain path; 0 to skip")
    parser.add_argument("--batch", type=int, default=1000, help="commits per DuckDB transaction in the bulk fill")
    parser.add_argument("--mode", choices=["bulk", "plain"], default="bulk")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--rephrase-fraction", type=float, default=0.0, help="share of edits with 1-2 rephrases (extra key rows)")
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold index rebuilds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plain-at-scale", type=int, default=200, help="store_edit calls timed on a copy of the full registry; 0 to skip")
    parser.add_argument("--ivf-study", action="store_true", help="also sweep the IVF probe count (latency vs recall at the threshold)")
    parser.add_argument("--real-keys", type=Path, default=None,
                        help="with --ivf-study: .npz of real routing keys (`keys`, or the routing study's `pools`) to fit clustered keys to")
    parser.add_argument("--output", type=Path, default=RESULTS / "scale.json")
    parser.add_argument("--revoke-mode", choices=["tombstone", "delete", "unrecorded"], default="unrecorded",
                        help="the registry's revoke_mode; unrecorded = a routing record without it (reads as delete, as scale.json was made)")
    args = parser.parse_args()
    routing = ROUTING if args.revoke_mode == "unrecorded" else dict(ROUTING, revoke_mode=args.revoke_mode)

    previous = json.loads(args.output.read_text()) if args.output.exists() else {}
    document: dict[str, Any] = {
        "command": " ".join(["OMP_NUM_THREADS=1", ".venv/bin/python", "benchmarks/scale.py", *sys.argv[1:]]),
        "started": iso(utcnow()), "environment": environment(), "targets": TARGETS,
        "shapes": {"lora_A": [RANK, KEY_DIM], "lora_B": [OUT, RANK], "keys": [1, KEY_DIM], "dtype": "float32"},
        "rephrase_fraction": args.rephrase_fraction, "revoke_mode": args.revoke_mode,
    }
    reuse = args.reuse and (args.root / "registry.duckdb").exists()
    if args.plain_sample and not reuse:
        sample_root = args.root.parent / (args.root.name + "-plain-sample")
        print(f"plain path: {args.plain_sample} edits through store_edit ...", flush=True)
        document["plain_sample"] = fill(sample_root, args.plain_sample, "plain", 1, args.seed, args.rephrase_fraction, 500, routing)
        document["plain_sample"]["projected_100k_minutes"] = 100_000 / document["plain_sample"]["edits_per_s"] / 60
        shutil.rmtree(sample_root)
        print(f"  {document['plain_sample']['edits_per_s']:.0f} edits/s", flush=True)
    elif "plain_sample" in previous:
        document["plain_sample"] = dict(previous["plain_sample"], reused_from=previous.get("started"))
    if reuse:
        document["fill"] = dict(previous.get("fill", {}), reused_from=previous.get("started"))
        print(f"reusing {args.root}", flush=True)
    else:
        print(f"filling {args.root} with {args.edits} edits ({args.mode}) ...", flush=True)
        document["fill"] = fill(args.root, args.edits, args.mode, args.batch, args.seed, args.rephrase_fraction, routing=routing)
        print(f"  {document['fill']['seconds']:.0f} s, {document['fill']['edits_per_s']:.0f} edits/s", flush=True)
    document["measurements"] = measure(args.root, args.queries, args.skip_cold)
    if args.plain_at_scale:
        print(f"plain path at scale: {args.plain_at_scale} store_edit calls ...", flush=True)
        document["measurements"]["plain_path_at_scale"] = plain_at_scale(args.root, args.plain_at_scale, args.seed)
    if args.ivf_study:
        print("IVF study ...", flush=True)
        document["measurements"]["ivf_study"] = ivf_studies(args.root, min(args.queries, 1000), args.real_keys)
    m = document["measurements"]
    document["summary"] = {
        "log_limit20_api_s": m["log_limit20_api_with_open"]["median_s"],
        "log_limit20_cli_s": m["log_limit20_cli"]["median_s"],
        "log_limit20_cli_cpu_s": m["log_limit20_cli"]["cpu_median_s"],
        "cli_startup_s": m["log_limit20_cli"]["cli_import_only"]["wall_median_s"],
        "duckdb_import_alone_s": m["log_limit20_cli"]["import_alone"]["duckdb"]["wall_median_s"],
        "diff_50k_apart_s": m["diff"]["median_s"],
        "resolve_index_ready_cold_s": m["index_ready"].get("head_cold", {}).get("total_s"),
        "resolve_index_ready_warm_s": m["index_ready"]["head_warm"]["total_s"],
        "key_search_median_ms": m["key_search"]["median_ms"],
        "key_search_index": m["key_search"]["index"],
        "key_search_near_key_recall": m["key_search"]["near_key_recall"],
        "key_search_random_same_routing_decision": m["key_search"]["random_same_routing_decision_as_exact"],
        "upgrade_backfill_s": m.get("upgrade", {}).get("seconds"),
        "verify_s": m["verify"]["seconds"],
        "verify_ok": m["verify"]["ok"],
        "source_of_truth_bytes_per_edit_apparent": m["bytes"]["source_of_truth_apparent_per_edit"],
        "source_of_truth_bytes_per_edit_allocated": m["bytes"]["source_of_truth_allocated_per_edit"],
        "fill_edits_per_s": document["fill"].get("edits_per_s"),
        "plain_edits_per_s": document.get("plain_sample", {}).get("edits_per_s"),
        "plain_edits_per_s_at_scale": m.get("plain_path_at_scale", {}).get("edits_per_s"),
    }
    document["finished"] = iso(utcnow())
    document["environment_end"] = {"loadavg": os.getloadavg()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=1, default=str))
    print(json.dumps(document["summary"], indent=1))


if __name__ == "__main__":
    main()
