"""Writers never block readers: reads while `sola edit --file` trains, and concurrent writers.

    .venv/bin/python benchmarks/writers_readers.py --work /tmp/sola-wr [--edits 50] [--writers 4] [--per-writer 10]

Part 1: a fresh registry on the default model; `sola edit --file` of `--edits` CounterFact facts
runs in one process while three reader loops run beside it until it ends: `sola log --json`,
`sola generate PROMPT --json` (each a new process) and HTTP completions against `sola serve` on
the same registry. Records every read's exit status and wall time, the longest one, and how many
commits each read saw (so the reads really overlapped the writer).
Part 2: `--writers` processes each run `sola edit --file` of `--per-writer` distinct facts on the
same registry at once; afterwards every edit must be there (no lost edits) and `sola verify` ok.
Writes benchmarks/results/writers_readers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "counterfact-1k.json"
RESULTS = ROOT / "benchmarks" / "results"
SOLA = str(Path(sys.executable).parent / "sola")


def sola(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SOLA, *args], capture_output=True, text=True)


def write_edits(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "target_new": r["target_new"]}) + "\n" for r in records))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def reader_loop(name: str, run, stop: threading.Event, out: list) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        ok, seen = run()
        out.append({"reader": name, "ok": ok, "seconds": round(time.perf_counter() - started, 3), "commits_seen": seen})


def part_one(work: Path, records: list[dict], edits: int) -> dict:
    registry = work / "one"
    assert sola("--registry", str(registry), "init").returncode == 0
    edits_file = work / "one.jsonl"
    write_edits(edits_file, records[:edits])
    port = free_port()
    server = subprocess.Popen([SOLA, "--registry", str(registry), "serve", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    prompt = records[0]["prompt"]

    def log() -> tuple[bool, int | None]:
        result = sola("--registry", str(registry), "log", "--json")
        return result.returncode == 0, len(json.loads(result.stdout)) if result.returncode == 0 else None

    def generate() -> tuple[bool, int | None]:
        result = sola("--registry", str(registry), "generate", prompt, "--json", "--max-new-tokens", "4")
        return result.returncode == 0, None

    def http() -> tuple[bool, int | None]:
        try:
            response = httpx.post(f"{url}/v1/completions", json={"model": "main", "prompt": prompt, "max_tokens": 4}, timeout=120)
            return response.status_code == 200, None
        except httpx.HTTPError:
            return False, None

    reads: list[dict] = []
    stop = threading.Event()
    threads = [threading.Thread(target=reader_loop, args=(n, f, stop, reads)) for n, f in (("log", log), ("generate", generate), ("http", http))]
    started = time.perf_counter()
    writer = subprocess.Popen([SOLA, "--registry", str(registry), "edit", "--file", str(edits_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for thread in threads:
        thread.start()
    writer_code = writer.wait()
    writer_seconds = time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join()
    server.terminate()
    server.wait(timeout=30)
    by_reader = {}
    for name in ("log", "generate", "http"):
        mine = [r for r in reads if r["reader"] == name]
        by_reader[name] = {"reads": len(mine), "failed": sum(not r["ok"] for r in mine),
                           "longest_s": max((r["seconds"] for r in mine), default=None),
                           "median_s": sorted(r["seconds"] for r in mine)[len(mine) // 2] if mine else None}
    seen = sorted({r["commits_seen"] for r in reads if r["commits_seen"] is not None})
    return {"edits": edits, "writer_exit": writer_code, "writer_seconds": round(writer_seconds, 1), "readers": by_reader,
            "success_rate": round(sum(r["ok"] for r in reads) / len(reads), 4) if reads else None,
            "log_saw_commit_counts": [seen[0], seen[-1]] if seen else None, "verify_ok": json.loads(sola("--registry", str(registry), "verify", "--json").stdout)["ok"]}


def part_two(work: Path, records: list[dict], writers: int, per_writer: int, offset: int) -> dict:
    registry = work / "two"
    assert sola("--registry", str(registry), "init").returncode == 0
    processes = []
    started = time.perf_counter()
    for i in range(writers):
        chunk = records[offset + i * per_writer : offset + (i + 1) * per_writer]
        path = work / f"writer{i}.jsonl"
        write_edits(path, chunk)
        processes.append(subprocess.Popen([SOLA, "--registry", str(registry), "edit", "--file", str(path), "--author", f"writer{i}"],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    codes = [p.wait() for p in processes]
    seconds = time.perf_counter() - started
    log = json.loads(sola("--registry", str(registry), "log", "--json").stdout)
    adds = [c for c in log if c["op"] == "add"]
    verify = json.loads(sola("--registry", str(registry), "verify", "--json").stdout)
    return {"writers": writers, "per_writer": per_writer, "exit_codes": codes, "seconds": round(seconds, 1),
            "adds_committed": len(adds), "expected": writers * per_writer,
            "per_author": {f"writer{i}": sum(c["author"] == f"writer{i}" for c in adds) for i in range(writers)},
            "errors": [p.stderr.read()[-300:] for p, c in zip(processes, codes) if c != 0], "verify_ok": verify["ok"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--per-writer", type=int, default=10)
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    records = json.loads(DATA.read_text())
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    one = part_one(args.work, records, args.edits)
    print(json.dumps(one, indent=2), flush=True)
    two = part_two(args.work, records, args.writers, args.per_writer, args.edits)
    print(json.dumps(two, indent=2), flush=True)
    result = {"reads_during_edit_file": one, "concurrent_writers": two,
              "machine": {"cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": Path("/proc/loadavg").read_text().split()[:3],
                          "when": datetime.now().isoformat(timespec="seconds")}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "writers_readers.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
