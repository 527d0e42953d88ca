"""Registry at scale: fill a registry with N synthetic edits and time the operations users wait on.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py --edits 100000 --root /tmp/sola-scale

Edits are synthetic but shaped like real ones for the default model (SmolLM2-135M, mlp.up_proj,
rank 4): lora_A (4, 576), lora_B (1536, 4), keys (1, 576) float32 L2-normalised, and a
provenance document with the fields `Workspace.edit` writes. Everything else is the real code
path: `Registry.store_edit`/`set_active` for the plain sample, `registry.bulk.BulkLoader`
(same objects, the commit arithmetic of `_append_commit`, many commits per transaction) for the large fill. The
history is not add-only: about 5% of steps revoke an active edit, 0.5% restore a revoked one
and 1% of edits supersede an active edit with the same prompt.

Measured (time.perf_counter, median of several runs for the cheap ones):
  fill rate (plain path on a small sample, bulk path on the full fill), `log --limit 20`
  (API and CLI subprocess, with the CLI's bare start-up separately), `diff` between revisions
  50k edits apart, `generate --at` resolution + key index ready (cold: cache/ deleted; matrix
  warm but no index for the tree; warm: cached .faiss), key search per query (batch of 1),
  `verify`, and bytes per edit on disk (objects and DuckDB, separately from the cache);
  `store_edit` one by one on a copy of the full database (--plain-at-scale) and, with
  --ann-study, float16 and HNSW indexes over the same keys for comparison.
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
from registry.store import Registry, iso, utcnow  # noqa: E402
from registry.verify import _check_caches, _check_chain, _check_edits, _check_refs, Report, verify  # noqa: E402

faiss.omp_set_num_threads(1)

RESULTS = Path(__file__).parent / "results"
CLI = Path(sys.executable).parent / "sola"

KEY_DIM, RANK, OUT = 576, 4, 1536
MODEL_NAME = "SmolLM2-135M-Instruct"
BASE = {"spec": "default", "name": MODEL_NAME, "sha256": hashlib.sha256(b"synthetic " + MODEL_NAME.encode()).hexdigest()}
ROUTING = {"layer": 16, "module": "mlp.up_proj", "rank": RANK, "alpha": 4.0, "threshold": 0.06, "key_function": "mean",
           "duplicate_distance": 0.002, "key_dim": KEY_DIM, "block_path": "model.layers"}
ROUTING_PROVENANCE = {k: v for k, v in ROUTING.items() if k not in ("key_dim", "block_path")}  # RoutingConfig.to_dict()
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

    def __init__(self, seed: int, rephrase_fraction: float) -> None:
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
            "routing": ROUTING_PROVENANCE,
            "training": dict(TRAINING, seed=int(rng.integers(0, 1000)) if rng.random() < 0.1 else 0),
            "result": {"steps": steps, "loss": loss, "converged": loss < 0.05, "seconds": round(float(steps * rng.uniform(0.05, 0.12)), 4)},
        }
        return {"tensors": tensors, "provenance": provenance, "key_prompts": [prompt, *rephrases], "author": author,
                "message": f"add {prompt!r} -> {' ' + target!r}", "subject": subject, "template": template}


# --- filling -------------------------------------------------------------------------------------


class History:
    """Drives adds, revokes (~5%), restores (~0.5%) and supersedes (~1%) through a sink."""

    def __init__(self, seed: int, rephrase_fraction: float, p_revoke: float = 0.05, p_restore: float = 0.005,
                 p_supersede: float = 0.01) -> None:
        self.synthetic = Synthetic(seed, rephrase_fraction)
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


def fill(root: Path, n: int, mode: str, batch: int, seed: int, rephrase_fraction: float, progress_every: int = 5000) -> dict[str, Any]:
    if root.exists():
        shutil.rmtree(root)
    history = History(seed, rephrase_fraction)
    started = time.perf_counter()
    registry = Registry.create(root, BASE, ROUTING, "scale-benchmark")
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

    cli_log = [run_cli([str(CLI), "--registry", str(root), "log", "--limit", "20", "--json"])[0] for _ in range(4)][1:]
    cli_start = [run_cli([sys.executable, "-c", "import sola.cli"])[0] for _ in range(4)][1:]
    bare_python = [run_cli([sys.executable, "-c", "pass"])[0] for _ in range(4)][1:]
    store_only = [run_cli([sys.executable, "-c", "import registry.store"])[0] for _ in range(4)][1:]
    imports = {name: statistics.median([run_cli([sys.executable, "-c", f"import {name}"])[0] for _ in range(3)])
               for name in ("duckdb", "numpy", "faiss", "safetensors", "torch")}
    out["log_limit20_cli"] = {
        "median_s": statistics.median(cli_log), "samples_s": cli_log,
        "cli_import_only_median_s": statistics.median(cli_start),
        "python_start_median_s": statistics.median(bare_python),
        "import_registry_store_median_s": statistics.median(store_only),
        "import_alone_median_s": imports,
        "note": "`import sola.cli` pulls in torch (sola.cli -> sola.modelio); that, not the query, is the CLI's cost",
    }

    # --- diff between revisions 50k edits apart -----------------------------------------------
    adds = registry.db.execute("SELECT seq FROM commits WHERE op IN ('add', 'supersede') ORDER BY seq").fetchall()
    quarter, three_quarters = len(adds) // 4, (3 * len(adds)) // 4
    old = registry.resolve(f"main~{registry.head().seq - adds[max(quarter - 1, 0)][0]}")
    new = registry.resolve(f"main~{registry.head().seq - adds[three_quarters - 1][0]}")
    diff = registry.diff(old, new)
    out["diff"] = dict(repeat(lambda: registry.diff(old, new), 5), edits_apart=three_quarters - quarter,
                       old_seq=old.seq, new_seq=new.seq, added=len(diff["added"]), removed=len(diff["removed"]))

    # --- generate --at: resolution + index ready ------------------------------------------------
    head = registry.head()
    head_time = registry.db.execute("SELECT max(time) FROM reflog WHERE ref = 'main'").fetchone()[0]
    mid_commit = registry.resolve(f"main~{head.seq - adds[len(adds) // 2 - 1][0]}")
    mid_time = registry.db.execute("SELECT time FROM reflog WHERE ref = 'main' AND new_commit = ?", [mid_commit.commit_id]).fetchone()[0]
    registry.close()
    cache = root / "cache"

    def resolve_and_index(at: str) -> dict[str, Any]:
        phases: dict[str, float] = {}
        started = time.perf_counter()
        with Registry.open(root) as fresh:
            phases["open_s"] = time.perf_counter() - started
            t, commit = timed(lambda: fresh.resolve(at=at))
            phases["resolve_at_s"] = t
            t, (search, key_edit) = timed(lambda: fresh.key_search(commit))
            phases["key_search_ready_s"] = t
            phases["total_s"] = time.perf_counter() - started
            phases["index_size"] = search.size
            phases["n_active"] = commit.n_active
        return phases

    def breakdown(at: str) -> dict[str, float]:
        """The same steps as Registry.key_search, timed one by one (cache state as found)."""
        from registry.keyindex import FaissKeySearch
        phases: dict[str, float] = {}
        with Registry.open(root) as fresh:
            commit = fresh.resolve(at=at)
            t, (key_ids, _) = timed(lambda: fresh.active_keys(commit))
            phases["active_keys_query_s"] = t
            total = fresh.db.execute("SELECT count(*) FROM edit_keys").fetchone()[0]
            t, _ = timed(lambda: fresh.key_matrix.sync(total, KEY_DIM, fresh._load_key_rows, fresh.all_commits()[0].commit_id))
            phases["key_matrix_sync_s"] = t
            t, rows = timed(lambda: fresh.key_matrix.rows(key_ids, KEY_DIM))
            phases["matrix_row_select_s"] = t
            t, search = timed(lambda: FaissKeySearch.build(rows, key_ids, KEY_DIM))
            phases["faiss_build_s"] = t
            path = cache / "index" / f"{commit.tree_id}.faiss"
            if path.exists():
                t, loaded = timed(lambda: FaissKeySearch.load(path))
                phases["faiss_load_s"] = t
                t, _ = timed(lambda: np.array_equal(np.sort(loaded.ids()), key_ids))
                phases["cached_ids_check_s"] = t
        return phases

    index_ready: dict[str, Any] = {"head_at": iso(head_time), "mid_at": iso(mid_time)}
    for label, at in (("head", iso(head_time)), ("mid", iso(mid_time))):
        if not skip_cold:
            shutil.rmtree(cache, ignore_errors=True)
            index_ready[f"{label}_cold"] = resolve_and_index(at)
            print(f"  index ready ({label}, cold): {index_ready[f'{label}_cold']['total_s']:.2f} s", flush=True)
        for path in (cache / "index").glob("*.faiss"):
            path.unlink()
        index_ready[f"{label}_matrix_warm_no_index"] = resolve_and_index(at)
        warm = [resolve_and_index(at) for _ in range(4)][1:]
        index_ready[f"{label}_warm"] = {key: statistics.median([w[key] for w in warm]) for key in warm[0]}
        print(f"  index ready ({label}, warm): {index_ready[f'{label}_warm']['total_s']:.2f} s", flush=True)
        index_ready[f"{label}_breakdown_warm"] = breakdown(at)
        index_ready[f"{label}_faiss_file_bytes"] = [p.stat().st_size for p in (cache / "index").glob("*.faiss")]
    out["index_ready"] = index_ready

    # --- key search per query --------------------------------------------------------------------
    with Registry.open(root) as fresh:
        search, key_edit = fresh.key_search(fresh.head())
        rng = np.random.default_rng(7)
        queries = rng.standard_normal((n_queries, KEY_DIM), dtype=np.float32)
        # half random directions, half near a stored key (cosine distance ~0.03, i.e. an edit that fires)
        stored = fresh.key_matrix.rows(np.asarray(rng.choice(list(key_edit), n_queries // 2)), KEY_DIM)
        queries[: n_queries // 2] = stored + rng.standard_normal(stored.shape, dtype=np.float32) * 0.011
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        for q in queries[:20]:
            search.search(q[None])
        per_query = []
        hits = 0
        for q in queries:
            started = time.perf_counter()
            sims, ids = search.search(q[None])
            per_query.append(time.perf_counter() - started)
            hits += int(1.0 - sims[0] < ROUTING["threshold"])
        ms = sorted(1000 * s for s in per_query)
        t, _ = timed(lambda: search.search(queries))
        out["key_search"] = {
            "index_size": search.size, "queries": n_queries, "median_ms": statistics.median(ms), "mean_ms": statistics.mean(ms),
            "p90_ms": ms[int(0.9 * len(ms))], "p99_ms": ms[int(0.99 * len(ms))], "fired": hits,
            "batched_all_queries_ms_per_query": 1000 * t / n_queries, "index": type(search.index).__name__,
            "threads": faiss.omp_get_max_threads(),
        }
        print(f"  key search: {out['key_search']['median_ms']:.2f} ms/query median", flush=True)

    # --- verify -----------------------------------------------------------------------------------
    with Registry.open(root) as fresh:
        t, report = timed(lambda: verify(fresh))
        out["verify"] = {"seconds": t, "ok": report.ok, "problems": report.problems[:10], "notes": report.notes,
                         "checked": report.checked, "cache_state": "key matrix + faiss index files present"}
        print(f"  verify: {t:.1f} s ok={report.ok}", flush=True)
        parts: dict[str, float] = {}
        scratch = Report()
        parts["edits_and_objects_s"], _ = timed(lambda: _check_edits(fresh, scratch))
        parts["chain_s"], commits = timed(lambda: _check_chain(fresh, scratch))
        parts["refs_s"], _ = timed(lambda: _check_refs(fresh, scratch, commits))
        parts["caches_s"], _ = timed(lambda: _check_caches(fresh, scratch, commits))
        parts["list_objects_s"], _ = timed(lambda: sum(1 for _ in fresh.objects))
        out["verify"]["breakdown_second_run"] = parts

    # --- bytes on disk ---------------------------------------------------------------------------
    with Registry.open(root) as fresh:
        tensor_ids = {r[0] for r in fresh.db.execute("SELECT tensors_sha256 FROM edits").fetchall()}
        n_edits = fresh.counts()["edits"]
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
        "duckdb_file_bytes": database, "duckdb_per_edit": database / n_edits,
        "source_of_truth_apparent_per_edit": (objects_apparent + database) / n_edits,
        "source_of_truth_allocated_per_edit": (objects_allocated + database) / n_edits,
        "cache": dict(cache_usage, per_edit_apparent=cache_usage["apparent_bytes"] / n_edits),
        "filesystem_block_bytes": os.statvfs(root).f_bsize,
    }
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


def ann_study(root: Path, n_queries: int) -> dict[str, Any]:
    """What the 2 ms target would need: the same keys in an HNSW graph and in a float16 flat index."""
    out: dict[str, Any] = {}
    with Registry.open(root) as registry:
        search, key_edit = registry.key_search(registry.head())
        key_ids = np.array(sorted(key_edit), dtype=np.int64)
        keys = registry.key_matrix.rows(key_ids, KEY_DIM)
    rng = np.random.default_rng(11)
    picks = rng.choice(len(key_ids), n_queries)
    queries = keys[picks] + rng.standard_normal((n_queries, KEY_DIM), dtype=np.float32) * 0.011
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, truth = search.search(queries)

    def per_query(index: faiss.Index) -> tuple[float, float]:
        found, times = [], []
        for q in queries:
            started = time.perf_counter()
            _, ids = index.search(q[None], 1)
            times.append(time.perf_counter() - started)
            found.append(ids[0, 0])
        recall = float(np.mean(np.asarray(found) == truth))
        return 1000 * statistics.median(times), recall

    out["flat_f32"] = dict(zip(("median_ms", "recall_at_1"), per_query(search.index)))
    fp16 = faiss.IndexIDMap2(faiss.IndexScalarQuantizer(KEY_DIM, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT))
    t, _ = timed(lambda: fp16.add_with_ids(keys, key_ids))
    out["flat_f16"] = dict(zip(("median_ms", "recall_at_1"), per_query(fp16)), build_s=t)
    hnsw = faiss.IndexHNSWFlat(KEY_DIM, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 64
    wrapped = faiss.IndexIDMap2(hnsw)
    t, _ = timed(lambda: wrapped.add_with_ids(keys, key_ids))
    out["hnsw32"] = {"build_s": t}
    for ef in (32, 64):
        hnsw.hnsw.efSearch = ef
        out["hnsw32"][f"ef{ef}"] = dict(zip(("median_ms", "recall_at_1"), per_query(wrapped)))
    out["queries"] = n_queries
    out["note"] = "queries are stored keys plus noise (cosine distance ~0.03, an edit that fires); random 576-d keys are the worst case for graph search"
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
    parser.add_argument("--ann-study", action="store_true", help="also time HNSW and float16 indexes over the same keys")
    parser.add_argument("--output", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()

    previous = json.loads(args.output.read_text()) if args.output.exists() else {}
    document: dict[str, Any] = {
        "command": " ".join(["OMP_NUM_THREADS=1", ".venv/bin/python", "benchmarks/scale.py", *sys.argv[1:]]),
        "started": iso(utcnow()), "environment": environment(), "targets": TARGETS,
        "shapes": {"lora_A": [RANK, KEY_DIM], "lora_B": [OUT, RANK], "keys": [1, KEY_DIM], "dtype": "float32"},
        "rephrase_fraction": args.rephrase_fraction,
    }
    reuse = args.reuse and (args.root / "registry.duckdb").exists()
    if args.plain_sample and not reuse:
        sample_root = args.root.parent / (args.root.name + "-plain-sample")
        print(f"plain path: {args.plain_sample} edits through store_edit ...", flush=True)
        document["plain_sample"] = fill(sample_root, args.plain_sample, "plain", 1, args.seed, args.rephrase_fraction, 500)
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
        document["fill"] = fill(args.root, args.edits, args.mode, args.batch, args.seed, args.rephrase_fraction)
        print(f"  {document['fill']['seconds']:.0f} s, {document['fill']['edits_per_s']:.0f} edits/s", flush=True)
    document["measurements"] = measure(args.root, args.queries, args.skip_cold)
    if args.plain_at_scale:
        print(f"plain path at scale: {args.plain_at_scale} store_edit calls ...", flush=True)
        document["measurements"]["plain_path_at_scale"] = plain_at_scale(args.root, args.plain_at_scale, args.seed)
    if args.ann_study:
        print("ANN study ...", flush=True)
        document["measurements"]["ann_study"] = ann_study(args.root, min(args.queries, 500))
    m = document["measurements"]
    document["summary"] = {
        "log_limit20_api_s": m["log_limit20_api_with_open"]["median_s"],
        "log_limit20_cli_s": m["log_limit20_cli"]["median_s"],
        "cli_startup_s": m["log_limit20_cli"]["cli_import_only_median_s"],
        "diff_50k_apart_s": m["diff"]["median_s"],
        "resolve_index_ready_cold_s": m["index_ready"].get("head_cold", {}).get("total_s"),
        "resolve_index_ready_matrix_warm_s": m["index_ready"]["head_matrix_warm_no_index"]["total_s"],
        "resolve_index_ready_warm_s": m["index_ready"]["head_warm"]["total_s"],
        "key_search_median_ms": m["key_search"]["median_ms"],
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
