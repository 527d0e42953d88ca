"""Cold start of `sola` commands: each run is a fresh process, as a user's shell would start it.

    .venv/bin/python benchmarks/startup.py                       # this checkout, default model
    .venv/bin/python benchmarks/startup.py --source /tmp/head    # another checkout (e.g. `git archive HEAD`)

Times `sola generate PROMPT --max-new-tokens 8` on a registry of the default model (made once
in a temporary directory unless --registry is given), with the phases of one extra run
(imports, model load, first forward) from `-X importtime`-free timers inside the process, and the
model-free commands `log`, `tag` and `revoke` (with whether each imported torch, and whether
generate imported transformers). Other work on the machine changes every number here, so each
run records the load average before it and the busiest other processes; results go to benchmarks/results/startup.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PROMPT = "The Eiffel Tower is located in the city of"

# runs one CLI command in this process as the `sola` executable does (sola.cli.entry, with
# sys.argv) and reports whether torch and transformers got imported
CLI = """
import sys, time
sys.path.insert(0, sys.argv[1])
started = time.perf_counter()
sys.argv = ["sola", *sys.argv[2:]]
from sola.cli import entry
try:
    entry()
except SystemExit as done:
    code = done.code or 0
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules,
                  "inside_s": time.perf_counter() - started}), file=sys.stderr)
""".replace("import sys, time", "import sys, time, json")

# the phases of a generate: imports, model load, first forward (what the command does, unrolled)
PHASES = """
import sys, time, json
sys.path.insert(0, sys.argv[1])
marks = [("start", time.perf_counter())]
import sola.cli  # noqa: F401  (sets the CLI's process defaults, as `sola` would)
import torch
marks.append(("import torch", time.perf_counter()))
from sola.workspace import Workspace
marks.append(("import sola.workspace (faiss, numpy)", time.perf_counter()))
workspace = Workspace.open(sys.argv[2])
routed, commit = workspace.routed_at()
marks.append(("open registry, load model (transformers or sola's core), build bank", time.perf_counter()))
routed.generate([sys.argv[3]], max_new_tokens=8)
marks.append(("first generate (8 tokens)", time.perf_counter()))
routed.generate([sys.argv[3]], max_new_tokens=8)
marks.append(("second generate (8 tokens)", time.perf_counter()))
phases = {name: round(t - marks[i][1], 3) for i, (name, t) in enumerate(marks[1:])}
print(json.dumps(dict(phases, model=type(routed.model).__module__, transformers_imported="transformers" in sys.modules)))
"""


def machine_state() -> dict[str, object]:
    """Load average and the busiest processes right now (other agents' tests and benchmarks)."""
    try:
        top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True, timeout=10).stdout
        busiest = [line.strip() for line in top.splitlines()[1:6]]
    except (OSError, subprocess.SubprocessError):
        busiest = []
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(), "busiest": busiest}


def run_cli(source: Path, args: list[str], env: dict[str, str]) -> dict[str, object]:
    state = machine_state()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CLI, str(source), *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    report = json.loads(done.stderr.strip().splitlines()[-1])
    if report["code"]:
        raise SystemExit(f"{args} failed: {done.stderr[-800:]}")
    return {"wall_s": round(wall, 3), "torch": report["torch"], "transformers": report["transformers"], "loadavg": state["loadavg"],
            "busiest": state["busiest"]}


def summary(runs: list[dict[str, object]]) -> dict[str, object]:
    walls = [float(r["wall_s"]) for r in runs]
    return {"median_s": round(statistics.median(walls), 3), "min_s": round(min(walls), 3), "max_s": round(max(walls), 3),
            "torch_imported": any(r["torch"] for r in runs), "transformers_imported": any(r["transformers"] for r in runs),
            "loadavg_1min": [r["loadavg"][0] for r in runs], "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose sola/ and registry/ to run (default: this one)")
    parser.add_argument("--registry", type=Path, default=None, help="registry on the default model (default: a new one in a temp dir)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--label", default=None, help="name of this measurement in the results file")
    parser.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    args = parser.parse_args()
    source = args.source.resolve()
    env = dict(os.environ, SOLA_AUTHOR="bench")
    scratch = Path(tempfile.mkdtemp(prefix="sola-startup-"))
    try:
        registry = args.registry
        if registry is None:
            registry = scratch / "registry"
            print(f"init {registry} on the default model ...", flush=True)
            run_cli(source, ["--registry", str(registry), "init"], env)
            made = subprocess.run([sys.executable, "-c", CLI, str(source), "--registry", str(registry), "edit", "--prompt", PROMPT,
                                   "--target", "Rome", "--json"], capture_output=True, text=True, env=env)
            edit = json.loads(made.stdout)["edit"]
        else:
            edit = None
        result: dict[str, object] = {"source": str(source), "python": sys.version.split()[0], "before": machine_state()}
        print("generate cold starts ...", flush=True)
        result["generate"] = summary([run_cli(source, ["--registry", str(registry), "generate", PROMPT, "--max-new-tokens", "8", "--json"], env)
                                      for _ in range(args.runs)])
        phases = subprocess.run([sys.executable, "-c", PHASES, str(source), str(registry), PROMPT], capture_output=True, text=True, env=env)
        result["generate_phases_s"] = json.loads(phases.stdout.strip().splitlines()[-1]) if phases.returncode == 0 else phases.stderr[-800:]
        model_free: dict[str, object] = {"log": summary([run_cli(source, ["--registry", str(registry), "log", "--json"], env)
                                                         for _ in range(args.runs)])}
        model_free["tag"] = summary([run_cli(source, ["--registry", str(registry), "tag", f"t{i}-{time.time_ns()}"], env)
                                     for i in range(args.runs)])
        if edit is not None:
            revokes = []
            for i in range(args.runs):
                revokes.append(run_cli(source, ["--registry", str(registry), "revoke", edit, "--reason", "bench"], env))
                run_cli(source, ["--registry", str(registry), "restore", edit, "--reason", "bench"], env)
            model_free["revoke"] = summary(revokes)
        result["model_free"] = model_free
        result["after"] = machine_state()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    label = args.label or ("this checkout" if source == ROOT else str(source))
    everything = json.loads(args.out.read_text()) if args.out.exists() else {}
    everything[label] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(everything, indent=2) + "\n")
    print(json.dumps({"label": label, "generate_median_s": result["generate"]["median_s"],
                      "generate_transformers": result["generate"]["transformers_imported"], "phases": result["generate_phases_s"],
                      **{name: m["median_s"] for name, m in model_free.items()},
                      "torch": {name: m["torch_imported"] for name, m in model_free.items()},
                      "loadavg": result["before"]["loadavg"]}, indent=2))


if __name__ == "__main__":
    main()
