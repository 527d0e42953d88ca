"""Serving under load while a writer commits: `sola serve` on the default model.

    .venv/bin/python benchmarks/serve_load.py --root /tmp/sola-serve-bench [--edits 1000] [--clients 8] [--requests 50]

1. Builds (once; `--root` is reused) a registry on the default model holding `--edits` edits whose
   keys are the real routing keys of CounterFact prompts (computed by the model) and whose LoRA
   factors are small random matrices, loaded with the bulk loader: routing, snapshot and LoRA
   costs are those of a real 1k-edit registry; the answers are not meaningful (throughput only).
2. Starts `sola serve` (a real uvicorn subprocess) and runs `--clients` threads x `--requests`
   completions of 16 tokens each, on prompts half of which are edited ones (so edits fire):
   first against `model=<the init commit>` (the same server and prompts with 0 edits: the
   baseline), then against `model=main` while `sola edit --file` commits `--commits` real edits to
   main from another process. A probe thread asks main for one token every 50 ms and records,
   per commit, the time from the commit (its ref log entry) to the first response that reflects it.
Writes benchmarks/results/serve_load.json: errors, p50/p99 latency, tokens/s for both phases,
their ratio, the commit-to-response times, and what else ran on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "counterfact-1k.json"
RESULTS = ROOT / "benchmarks" / "results"
SOLA = str(Path(sys.executable).parent / "sola")


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def build(root: Path, edits: int, records: list[dict]) -> None:
    """A registry of `edits` synthetic-LoRA edits keyed by real CounterFact prompt keys."""
    from registry.bulk import BulkLoader
    from registry.store import iso, utcnow
    from sola.train import routing_key
    from sola.workspace import Workspace

    workspace = Workspace.init(root, None, {}, "serve-benchmark")
    routed = workspace.model()
    rng = np.random.default_rng(0)
    with workspace.writing() as registry, BulkLoader(registry, batch=250) as loader:
        for i, record in enumerate(records[:edits]):
            key = routing_key(routed, record["prompt"]).numpy()[None]
            tensors = {"lora_A": (rng.normal(size=(routed.config.rank, routed.layer.in_features)) * 0.02).astype(np.float32),
                       "lora_B": (rng.normal(size=(routed.layer.out_features, routed.config.rank)) * 0.02).astype(np.float32),
                       "keys": key.astype(np.float32)}
            provenance = {"prompt": record["prompt"], "target": record["target_new"], "author": "serve-benchmark", "reason": "synthetic LoRA",
                          "source": "benchmarks/serve_load.py", "subject": record.get("subject"), "created_at": iso(utcnow())}
            loader.add(tensors, provenance, [record["prompt"]], "serve-benchmark", f"add {record['prompt']!r}")
            if i % 100 == 0:
                print(f"build: {i}/{edits}", file=sys.stderr, flush=True)
    workspace.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_load(url: str, model: str, prompts: list[str], clients: int, requests: int, tokens: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    completion_tokens = [0]
    fired = [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(timeout=300) as http:
            for j in range(requests):
                prompt = prompts[(index * requests + j) % len(prompts)]
                started = time.perf_counter()
                try:
                    response = http.post(f"{url}/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": tokens})
                    elapsed = time.perf_counter() - started
                    if response.status_code != 200:
                        with lock:
                            errors.append(f"{response.status_code}: {response.text[:200]}")
                        continue
                    body = response.json()
                    with lock:
                        latencies.append(elapsed)
                        completion_tokens[0] += body["usage"]["completion_tokens"]
                        fired[0] += sum(e is not None for e in body["sola"]["edits"])
                except httpx.HTTPError as error:
                    with lock:
                        errors.append(f"{type(error).__name__}: {error}")

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"model": model, "requests": clients * requests, "ok": len(latencies), "errors": len(errors), "error_samples": errors[:5],
            "wall_s": round(wall, 3), "tokens": completion_tokens[0], "tokens_per_s": round(completion_tokens[0] / wall, 2),
            "p50_s": round(statistics.median(ordered), 4) if ordered else None,
            "p99_s": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 4) if ordered else None,
            "max_s": round(ordered[-1], 4) if ordered else None, "edits_fired": fired[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--edits", type=int, default=980, help="bulk-loaded edits (the writer adds --commits more: 1000 in all)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--name", default="serve_load")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    parser.add_argument("--writer-source", choices=["prompt", "rephrase_prompt", "locality_prompt"], default="prompt",
                        help="which prompt of the records the writer edits: `prompt` takes the records after the bulk-loaded "
                             "ones; a rerun on the same --root needs prompts not edited yet (the first records' paraphrases, then "
                             "their locality prompts)")
    args = parser.parse_args()

    records = json.loads(DATA.read_text())
    if not (args.root / "registry.duckdb").exists():
        build(args.root, args.edits, records)
    from registry.store import Registry

    with Registry.open(args.root) as registry:
        init_commit = registry.log()[-1].commit_id
        start_edits = len(registry.active_edit_ids(registry.head()))
    edited = [r["prompt"] for r in records[:200]]
    unrelated = [r["locality_prompt"] for r in records[:200]]
    prompts = [p for pair in zip(edited, unrelated) for p in pair]
    if args.writer_source != "prompt":
        fresh = [{"prompt": r[args.writer_source], "target_new": r["target_new"]} for r in records[:args.commits]]
    else:  # facts the bulk load left out
        fresh = [{"prompt": r["prompt"], "target_new": r["target_new"]} for r in records[args.edits : args.edits + args.commits]]
    edits_file = args.root.parent / f"{args.root.name}-writer.jsonl"
    edits_file.write_text("".join(json.dumps(r) + "\n" for r in fresh))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    load_before = load_average()
    threads = ["--threads", str(args.threads)] if args.threads else []
    server = subprocess.Popen([SOLA, "--registry", str(args.root), "serve", "--port", str(port), "--max-batch", str(args.max_batch), *threads],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"server did not start: {server.stdout.read() if server.poll() is not None else ''}")
            time.sleep(0.5)
        run_load(url, "main", prompts[:16], 2, 4, args.tokens)  # warm-up (snapshot build, kernels)
        run_load(url, init_commit, prompts[:16], 2, 4, args.tokens)
        print("baseline phase", file=sys.stderr, flush=True)
        baseline = run_load(url, init_commit, prompts, args.clients, args.requests, args.tokens)

        probes: list[tuple[float, str]] = []
        seen: list[tuple[float, str]] = []
        stop = threading.Event()

        def probe() -> None:
            with httpx.Client(timeout=300) as http:
                while not stop.is_set():
                    try:
                        body = http.post(f"{url}/v1/completions", json={"model": "main", "prompt": "Hello", "max_tokens": 1}).json()
                        probes.append((time.time(), body["sola"]["commit"]))
                    except (httpx.HTTPError, KeyError, ValueError):
                        pass
                    stop.wait(0.05)

        def watch() -> None:  # when the server has the commit (no generation queue in the way)
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    try:
                        seen.append((time.time(), http.get(f"{url}/healthz").json()["commit"]))
                    except (httpx.HTTPError, KeyError, ValueError):
                        pass
                    stop.wait(0.02)

        print("edited phase with a writer", file=sys.stderr, flush=True)
        phase_started = time.time()
        prober, watcher = threading.Thread(target=probe), threading.Thread(target=watch)
        prober.start()
        watcher.start()
        writer = subprocess.Popen([SOLA, "--registry", str(args.root), "edit", "--file", str(edits_file), "--author", "writer"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        loaded = run_load(url, "main", prompts, args.clients, args.requests, args.tokens)
        writer_code = writer.wait()
        time.sleep(2)
        stop.set()
        prober.join()
        watcher.join()
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        server.terminate()
        server.wait(timeout=30)
    load_after = load_average()

    with Registry.open(args.root) as registry:
        entries = [e for e in registry.catalog.reflog("main") if e.actor == "writer" and e.time.timestamp() >= phase_started]
        end_edits = len(registry.active_edit_ids(registry.head()))
    def lag(observations: list[tuple[float, str]]) -> list[float]:
        found = []
        for entry in entries:
            committed = entry.time.timestamp()
            later = {e.new_commit for e in entries if e.time >= entry.time}
            reflecting = [t for t, commit in observations if t >= committed and commit in later]
            if reflecting:
                found.append(round(min(reflecting) - committed, 3))
        return found

    lags, served = lag(probes), lag(seen)
    result = {
        "protocol": {"edits": args.edits, "clients": args.clients, "requests_per_client": args.requests, "max_tokens": args.tokens,
                     "writer_commits": args.commits, "max_batch": args.max_batch, "model": "SmolLM2-135M-Instruct (default)",
                     "server_threads": args.threads,
                     "edits_are": "real CounterFact prompt keys, random LoRA factors (std 0.02), bulk-loaded",
                     "baseline": "the same server and prompts at the init commit (0 edits)"},
        "baseline_0_edits": baseline,
        "edited_with_writer": loaded,
        "throughput_ratio": round(loaded["tokens_per_s"] / baseline["tokens_per_s"], 3) if baseline["tokens_per_s"] else None,
        "writer": {"exit_code": writer_code, "commits_seen": len(entries), "active_edits_before": start_edits, "active_edits_after": end_edits},
        "commit_to_response_s": {"values": lags, "max": max(lags) if lags else None,
                                 "median": statistics.median(lags) if lags else None,
                                 "note": "a 1-token probe request: includes its wait behind the running batch of 16-token requests"},
        "commit_to_server_s": {"values": served, "max": max(served) if served else None,
                               "median": statistics.median(served) if served else None,
                               "note": "first /healthz naming the commit as the followed head: when new requests get it"},
        "server_metrics_tail": [line for line in metrics.splitlines() if line.startswith(("sola_forward", "sola_sequences", "sola_snapshot"))],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_before": load_before,
                    "load_average_after": load_after, "when": datetime.now().isoformat(timespec="seconds")},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("baseline_0_edits", "edited_with_writer", "throughput_ratio", "commit_to_response_s",
                                             "commit_to_server_s")}, indent=2))


if __name__ == "__main__":
    main()
