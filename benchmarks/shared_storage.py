"""Local registry vs the same registry on PostgreSQL + S3, side by side.

    .venv/bin/python benchmarks/shared_storage.py --edits 10000 --root /tmp/sola-shared

Fills a local registry with N synthetic edits of the default model's shapes (benchmarks/scale.py's
generator and bulk path), copies it with `migrate-storage` to a PostgreSQL catalog and S3
objects (a real PostgreSQL 15 from Debian's package with fsync on, and moto's S3 server, an
emulator, both on loopback: tests/servers.py starts them), then times on both:

* commit latency: open for writing + `store_edit` + close, one edit at a time (median, p90);
* edits/s with 1 and with 4 writer processes committing to main at once;
* `log --limit 20` (open + read), revision (`main~100`) + key index ready, cold (cache/ deleted)
  and warm;
* `verify` (every object read from its store, bypassing the local cache);
* a new serving replica's first request: a fresh directory (`init --join` for the shared one,
  the same directory with its cache deleted for the local one, which only one disk can serve) until the routing index is ready and the LoRA of the edit
  that fires is in memory (the model load is the same for both and left out).

Results: benchmarks/results/shared_storage.json.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from scale import Synthetic, environment, fill  # noqa: E402
from servers import S3_CREDENTIALS, start_postgres, start_s3, stop_postgres, stop_s3  # noqa: E402

from registry.migrate_storage import migrate_storage  # noqa: E402
from registry.storage import Storage  # noqa: E402
from registry.store import Registry  # noqa: E402
from registry.verify import verify  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

WRITER = textwrap.dedent("""
    import os, sys, time
    sys.path[:0] = sys.argv[4].split(os.pathsep)
    from scale import Synthetic
    from registry.store import Registry
    synthetic = Synthetic(int(sys.argv[2]), 0.0)
    for _ in range(int(sys.argv[3])):
        edit = synthetic.edit()
        with Registry.open(sys.argv[1], writable=True, wait_seconds=600) as registry:
            registry.store_edit(edit["tensors"], edit["provenance"], edit["key_prompts"], edit["author"], edit["message"])
""")


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"median_s": statistics.median(ordered), "p90_s": ordered[int(0.9 * (len(ordered) - 1))], "n": len(ordered)}


def commit_latency(root: Path, n: int, seed: int) -> dict[str, float]:
    synthetic = Synthetic(seed, 0.0)
    times = []
    for _ in range(n):
        edit = synthetic.edit()

        def commit() -> None:
            with Registry.open(root, writable=True, wait_seconds=60) as registry:
                registry.store_edit(edit["tensors"], edit["provenance"], edit["key_prompts"], edit["author"], edit["message"])
        times.append(timed(commit))
    return summary(times)


def writers_throughput(root: Path, writers: int, per_writer: int, seed: int) -> dict[str, float]:
    path = os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])
    started = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(seed + i), str(per_writer), path]) for i in range(writers)]
    codes = [p.wait() for p in processes]
    seconds = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"a writer failed: {codes}")
    return {"writers": writers, "edits": writers * per_writer, "seconds": seconds, "edits_per_s": writers * per_writer / seconds}


def reads(root: Path, repeats: int) -> dict[str, Any]:
    def log20() -> None:
        with Registry.open(root) as registry:
            registry.log(limit=20)

    def index_ready() -> None:
        with Registry.open(root) as registry:
            registry.key_search(registry.resolve("main~100"))

    out: dict[str, Any] = {"log_limit_20": summary([timed(log20) for _ in range(repeats)])}
    cold = []
    for _ in range(3):
        shutil.rmtree(root / "cache", ignore_errors=True)
        cold.append(timed(index_ready))
    out["revision_index_ready_cold"] = summary(cold)
    out["revision_index_ready_warm"] = summary([timed(index_ready) for _ in range(repeats)])
    return out


def replica_first_request(source: Path, replica: Path, storage: Storage) -> dict[str, float]:
    """A fresh directory until the head's routing index is ready and one firing edit's LoRA is loaded."""
    shutil.rmtree(replica, ignore_errors=True)
    shutil.rmtree(source / "cache", ignore_errors=True)  # local: a new server on the same disk starts with no cache
    started = time.perf_counter()
    registry = Registry.join(replica, storage) if storage.shared else Registry.open(source)
    joined = time.perf_counter()
    head = registry.head()
    search, key_edit = registry.key_search(head)
    indexed = time.perf_counter()
    registry.edit_lora(key_edit[next(iter(key_edit))])
    fetched = time.perf_counter()
    registry.close()
    return {"open_s": joined - started, "index_ready_s": indexed - joined, "first_lora_s": fetched - indexed,
            "total_s": fetched - started}


def measure(root: Path, label: str, storage: Storage, args: argparse.Namespace) -> dict[str, Any]:
    print(f"[{label}] commit latency", flush=True)
    result: dict[str, Any] = {"commit": commit_latency(root, args.commits, args.seed + 1)}
    for writers in (1, 4):
        print(f"[{label}] {writers} writer(s)", flush=True)
        result[f"writers_{writers}"] = writers_throughput(root, writers, args.per_writer, args.seed + 100 * writers)
    print(f"[{label}] reads", flush=True)
    result.update(reads(root, args.repeats))
    print(f"[{label}] verify", flush=True)
    with Registry.open(root) as registry:
        started = time.perf_counter()
        report = verify(registry)
        result["verify"] = {"seconds": time.perf_counter() - started, "ok": report.ok, "problems": report.problems[:5]}
    print(f"[{label}] replica", flush=True)
    result["replica_first_request"] = replica_first_request(root, root.parent / f"{label}-replica", storage)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=10_000)
    parser.add_argument("--root", type=Path, default=Path("/tmp/sola-shared"))
    parser.add_argument("--commits", type=int, default=30, help="single commits timed for latency")
    parser.add_argument("--per-writer", type=int, default=10, help="commits per writer process")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "shared_storage.json")
    args = parser.parse_args()

    os.environ.update(S3_CREDENTIALS)
    shutil.rmtree(args.root, ignore_errors=True)
    args.root.mkdir(parents=True)
    postgres, s3 = start_postgres(), start_s3()
    try:
        print(f"filling {args.edits} edits", flush=True)
        filled = fill(args.root / "local", args.edits, "bulk", 1000, args.seed, 0.0)
        storage = Storage(postgres.url("bench"), s3.url("registry"))
        print("migrate-storage to Postgres + S3", flush=True)
        with Registry.open(args.root / "local", writable=True) as source:
            copied = migrate_storage(source, args.root / "shared", storage)
        document = {
            "edits": args.edits, "fill": filled, "migrate_storage": copied,
            "local": measure(args.root / "local", "local", Storage(), args),
            "shared": measure(args.root / "shared", "shared", storage, args),
            "backends": {"catalog": "PostgreSQL 15 (Debian), fsync on, loopback, same machine",
                         "objects": "moto 5 S3 server (an emulator, in memory), loopback, same machine"},
            "environment": environment(),
        }
    finally:
        stop_s3(s3)
        stop_postgres(postgres)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(json.dumps({k: document[k] for k in ("local", "shared")}, indent=2, default=str))


if __name__ == "__main__":
    main()
