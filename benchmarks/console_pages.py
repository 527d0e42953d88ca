"""Console page timings on a large registry: a real `sola serve --console --roles FILE` and a
client timing whole HTTP requests (server work, HTML rendering and transfer), one at a time.

    .venv/bin/python benchmarks/console_pages.py --copy-from /tmp/sola-scale --root /tmp/console-100k/reg

The registry is the one `benchmarks/scale.py` fills (100k edits, ~105k commits on main).
`--copy-from` copies its catalog and cache and hard-links its immutable objects, so the source
is never written; the copy gets governance data a console shows (main protected, a proposal
branch with one revoke, a tag). Each page is timed on its first request ("cold": whatever the
page needs that no earlier page loaded) and then `--runs` more times ("warm": median and max).
The server loads the base model once; Ask times include 8 greedy tokens on the CPU.

Results go to benchmarks/results/console_pages.json with the machine's load average and busiest
processes at the start and end (a shared 2-core machine: other jobs' load is in every number).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SOLA = [sys.executable, "-c", "from sola.cli import entry; entry()"]
TOKEN = "benchmark-reviewer-token"
# `sola serve --console --roles FILE`, except that the base model's weights are not checked against
# the registry's record: scale.py's registry records a synthetic base-model hash (its edits and keys
# are synthetic too), so the real command refuses to serve it. Everything else is the command's code.
LAUNCH = """
import sys
from pathlib import Path
import uvicorn
from sola.config import RoutingConfig
from sola.modelio import load_base
from sola.routed import RoutedModel
from sola.server import ServeConfig, Server, create_app, load_roles
from sola.snapshots import reading
root, roles, port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
with reading(root) as registry:
    routing, spec = RoutingConfig.from_record(registry.routing), registry.base_model["spec"]
model, tokenizer, _ = load_base(spec)
server = Server(ServeConfig(root, tokens=load_roles(roles), console=True), RoutedModel(model, tokenizer, routing))
uvicorn.run(create_app(server), host="127.0.0.1", port=port, log_level="warning")
"""


def environment() -> dict[str, Any]:
    busiest = subprocess.run(["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()[1:7]
    return {"cpus": os.cpu_count(), "loadavg": os.getloadavg(), "python": platform.python_version(),
            "busiest_processes": [line.strip()[:160] for line in busiest]}


def copy_registry(source: Path, target: Path) -> None:
    """Catalog and cache copied, objects hard-linked (they are immutable and replaced, never
    rewritten, so the source cannot be changed through the copy)."""
    if (target / "registry.duckdb").exists():
        return
    target.mkdir(parents=True)
    shutil.copy2(source / "registry.duckdb", target / "registry.duckdb")
    if (source / "cache").is_dir():
        shutil.copytree(source / "cache", target / "cache")
    subprocess.run(["cp", "-al", str(source / "objects"), str(target / "objects")], check=True)


def sola(root: Path, *args: str) -> Any:
    done = subprocess.run([*SOLA, "--registry", str(root), *args, "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sola {' '.join(args)}: {done.stderr.strip()}")
    return json.loads(done.stdout)


def prepare(root: Path) -> dict[str, Any]:
    """Governance records on the copy: a proposal branch (one revoke) into a protected main."""
    sys.path.insert(0, str(ROOT))
    from sola.snapshots import reading

    with reading(root) as registry:
        refs = {name for name, _, _ in registry.catalog.refs()}
        head = registry.head()
        active = registry.active_edit_ids(head)
        commits = registry.catalog.all_commits()
    rng = random.Random(0)
    if "proposal" not in refs:
        started = time.perf_counter()
        sola(root, "tag", "before-review")
        sola(root, "branch", "proposal")
        sola(root, "revoke", rng.choice(active), "--branch", "proposal", "--reason", "benchmark: a fact under review", "--author", "alice")
        sola(root, "protect", "main", "--reviews", "1", "--reason", "benchmark", "--author", "admin")
        print(f"  governance records written in {time.perf_counter() - started:.1f} s", flush=True)
    main_line = [c for c in commits]  # scale.py's history is one line: write order is main's order
    return {"edits": rng.sample(active, 12), "commits": [c.commit_id for c in rng.sample(commits, 8)], "n_commits": len(commits),
            "mid_time": main_line[len(main_line) // 2].to_dict()["time"],
            "prompt": None}


class Server:
    def __init__(self, root: Path, roles: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root.parent / "console-serve.log", "w")
        started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-c", LAUNCH, str(root), str(roles), str(self.port)], cwd=ROOT,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited ({(root.parent / 'console-serve.log').read_text()[-2000:]})")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        self.startup_s = time.perf_counter() - started
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600)

    def get(self, path: str, **params: Any) -> tuple[float, httpx.Response]:
        started = time.perf_counter()
        response = self.client.get(path, params=params or None)
        return time.perf_counter() - started, response

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def timed(server: Server, name: str, path: str, runs: int, results: dict[str, Any], **params: Any) -> None:
    first, response = server.get(path, **params)
    if response.status_code != 200:
        raise RuntimeError(f"{name}: {path} answered {response.status_code}: {response.text[-600:]}")
    warm = [server.get(path, **params)[0] for _ in range(runs)]
    results[name] = {"path": path, "params": params, "cold_s": round(first, 4), "warm_median_s": round(statistics.median(warm), 4) if warm else None,
                     "warm_max_s": round(max(warm), 4) if warm else None, "bytes": len(response.content)}
    print(f"  {name:34s} cold {first:7.3f} s   warm median {results[name]['warm_median_s']} s   ({len(response.content)} bytes)", flush=True)


def spread(server: Server, name: str, paths: list[str], results: dict[str, Any]) -> None:
    """Distinct pages each requested once (each is cold for what only it needs)."""
    times = []
    for path in paths:
        seconds, response = server.get(path)
        if response.status_code != 200:
            raise RuntimeError(f"{name}: {path} answered {response.status_code}")
        times.append(seconds)
    results[name] = {"pages": len(paths), "first_s": round(times[0], 4), "median_s": round(statistics.median(times), 4),
                     "max_s": round(max(times), 4), "all_s": [round(t, 4) for t in times]}
    print(f"  {name:34s} {len(paths)} pages: first {times[0]:.3f} s, median {results[name]['median_s']} s, max {results[name]['max_s']} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/console-100k/reg"))
    parser.add_argument("--copy-from", type=Path, default=None, help="registry to copy to --root first (never written)")
    parser.add_argument("--runs", type=int, default=5, help="warm repetitions per page")
    parser.add_argument("--skip-verify", action="store_true", help="do not wait for the Health page's verify")
    parser.add_argument("--output", type=Path, default=RESULTS / "console_pages.json")
    args = parser.parse_args()
    if args.copy_from is not None:
        copy_registry(args.copy_from, args.root)
    report: dict[str, Any] = {"command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "environment": environment()}
    print("preparing ...", flush=True)
    picks = prepare(args.root)
    roles = args.root.parent / "console-roles.json"
    roles.write_text(json.dumps({TOKEN: {"name": "benchmark", "role": "reviewer"}}))
    print("starting sola serve --console ...", flush=True)
    server = Server(args.root, roles)
    results: dict[str, Any] = {}
    try:
        report["server_startup_s"] = round(server.startup_s, 2)
        print(f"  up in {server.startup_s:.1f} s", flush=True)
        n = picks["n_commits"]
        timed(server, "timeline page 1", "/console/", args.runs, results)
        timed(server, "timeline page 2", "/console/", args.runs, results, page=2)
        timed(server, "timeline page 1000", "/console/", args.runs, results, page=1000)
        timed(server, "timeline last page", "/console/", args.runs, results, page=(n + 49) // 50)
        timed(server, "timeline filter author", "/console/", args.runs, results, author="alice")
        timed(server, "timeline filter author page 50", "/console/", args.runs, results, author="alice", page=50)
        timed(server, "timeline filter op=revoke", "/console/", args.runs, results, op="revoke")
        timed(server, "timeline filter text", "/console/", args.runs, results, q="Oslo")
        timed(server, "timeline filter dates", "/console/", args.runs, results, since=picks["mid_time"][:10], until=picks["mid_time"][:10])
        timed(server, "timeline of main~50000", "/console/", args.runs, results, rev="main~50000")
        timed(server, "timeline of a tag", "/console/", args.runs, results, rev="before-review")
        spread(server, "edit pages (distinct edits)", [f"/console/edits/{e}" for e in picks["edits"][:10]], results)
        timed(server, "edit page (one edit, again)", f"/console/edits/{picks['edits'][10]}", args.runs, results)
        spread(server, "commit pages (distinct commits)", [f"/console/commits/{c}" for c in picks["commits"]], results)
        timed(server, "compare main~50000 .. main", "/console/compare", args.runs, results, a="main~50000", b="main")
        timed(server, "compare main~50000 .. main page 100", "/console/compare", args.runs, results, a="main~50000", b="main", page=100)
        timed(server, "compare by date (mid .. now)", "/console/compare", args.runs, results, a="main", a_at=picks["mid_time"], b="main")
        timed(server, "compare main~50000 .. main JSON", "/console/compare", 1, results, a="main~50000", b="main", format="json")
        timed(server, "proposals", "/console/proposals", args.runs, results)
        timed(server, "proposal (merge plan)", "/console/proposals/proposal", args.runs, results, into="main")
        timed(server, "revoked facts", "/console/revoked", args.runs, results)
        timed(server, "revoked facts page 10", "/console/revoked", args.runs, results, page=10)
        timed(server, "revoked facts CSV", "/console/revoked", 1, results, format="csv")
        edit = server.get(f"/v1/edits/{picks['edits'][11]}")[1].json()
        timed(server, "ask (8 tokens) + blame", "/console/ask", max(1, args.runs // 2), results, prompt=edit["prompt"], rev="main", max_tokens=8)
        timed(server, "ask at a date + blame", "/console/ask", 1, results, prompt=edit["prompt"], rev="main", at=picks["mid_time"], max_tokens=8)
        timed(server, "health (verify starts)", "/console/health", 1, results)
        loaded = re.search(r"console index</dt><dd>(\d+) commit\(s\), loaded in ([\d.]+) s", server.get("/console/health")[1].text)
        if loaded:
            results["console commit index (loaded at start-up, in the background)"] = {"commits": int(loaded.group(1)),
                                                                                      "seconds": float(loaded.group(2))}
            print(f"  commit index: {loaded.group(1)} commits loaded in {loaded.group(2)} s at start-up", flush=True)
        if not args.skip_verify:
            started = time.perf_counter()
            while "running since" in server.get("/console/health")[1].text and time.perf_counter() - started < 1800:
                time.sleep(2)
            page = server.get("/console/health")[1].text
            results["verify (background, from Health)"] = {"seconds_to_finish": round(time.perf_counter() - started, 1),
                                                           "ok": "OK: every object" in page}
            print(f"  verify finished ~{time.perf_counter() - started:.0f} s after the first Health view; ok={'OK: every object' in page}")
        timed(server, "timeline page 1 after all", "/console/", args.runs, results)
    finally:
        server.stop()
    report["pages"] = results
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["environment_end"] = environment()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
