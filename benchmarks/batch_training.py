"""Batched edit training: edits/s and quality at `--batch` 1, 4, 16, 32 on the default model.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batch_training.py --data ../shared/data/counterfact-1k.json --limit 96

Each batch size runs the full `sola eval` protocol (sola.evaluate.run_eval: the same
`Workspace.edit_many` path as `sola edit --file --batch N`, one commit per edit in file order,
edit success measured right after each commit) on the same first N records, so throughput and
quality are measured on identical work. Batch 1 is the one-at-a-time trainer (sola.train).
Throughput is edits per second of the edit phase as `sola edit --file` spends it (keys, collision
checks, training, commits), from the first edit to the last commit, less the time of eval's
success probe after each commit: per wall-clock second, and per CPU-second of this process
(with 1 thread, the measure that other work on a shared machine moves least).

Writes benchmarks/results/batch_training.json (per batch size: throughput, speed-up over batch 1,
success, convergence, steps, locality, paraphrase metrics; the per-edit steps and losses to
compare with batch 1) and batch_training.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from sola.config import RoutingConfig
from sola.evaluate import run_eval

RESULTS = Path(__file__).parent / "results"
KEPT = ("edits_per_second", "edit_success", "converged", "retention", "locality", "locality_identical", "generalization",
        "generalization_routed", "paraphrase_routing", "rollback_fidelity", "seconds_per_edit_median")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=96)
    parser.add_argument("--batches", default="1,4,16,32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="batch_training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    routing = RoutingConfig().to_dict()
    runs = []
    for batch in batches:
        load_before = os.getloadavg()
        started = time.perf_counter()

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "editing" and (done == total or done % 16 == 0):
                print(f"batch {batch}: {stage} {done}/{total} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

        result = run_eval(args.data, None, routing, limit=args.limit, progress=progress, batch=batch, device=args.device)
        summary = result.summary()
        runs.append({
            "batch": batch,
            **{name: summary[name] for name in KEPT},
            "editing_seconds": result.protocol["editing_seconds"],
            "editing_cpu_seconds": result.protocol["editing_cpu_seconds"],
            "edits_per_cpu_second": round(len(result.records) / result.protocol["editing_cpu_seconds"], 4),
            "mean_steps": sum(r.steps for r in result.records) / len(result.records),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "steps": [r.steps for r in result.records],
            "success": [r.success for r in result.records],
        })
        print(json.dumps({k: v for k, v in runs[-1].items() if k not in ("steps", "success")}), flush=True)
    base = next((r for r in runs if r["batch"] == 1), None)
    for run in runs:
        run["speedup"] = round(run["edits_per_second"] / base["edits_per_second"], 3) if base else None
        run["speedup_cpu"] = round(run["edits_per_cpu_second"] / base["edits_per_cpu_second"], 3) if base else None
        if base:
            run["same_steps_as_batch_1"] = sum(a == b for a, b in zip(run["steps"], base["steps"])) / len(base["steps"])
    document = {
        "protocol": {"data": str(args.data), "n": args.limit, "threads": torch.get_num_threads(), "device": args.device,
                     "routing": routing, "training": train.to_dict(), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                     "versions": {"torch": torch.__version__, "python": platform.python_version()}},
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    path.write_text(json.dumps(document, indent=1))
    plot(document, path.with_suffix(".png"))
    print(table(document))


def table(document: dict) -> str:
    lines = ["| batch | edits/s (wall) | speed-up (wall) | edits per CPU-second | speed-up (CPU) | edit success | converged | "
             "same steps as batch 1 | locality | paraphrase (routed) | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in document["runs"]:
        lines.append(f"| {run['batch']} | {run['edits_per_second']:.3f} | {run['speedup']:.2f}× | {run['edits_per_cpu_second']:.3f} | "
                     f"{run['speedup_cpu']:.2f}× | {run['edit_success']:.3f} | "
                     f"{run['converged']:.3f} | {run.get('same_steps_as_batch_1', 1.0):.3f} | {run['locality']:.3f} | "
                     f"{run['generalization_routed']:.3f} | {run['load_average_before'][0]}–{run['load_average_after'][0]} |")
    return "\n".join(lines)


def plot(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = document["runs"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    batches = [r["batch"] for r in runs]
    left.plot(batches, [r["edits_per_second"] for r in runs], "-o", label="edits per wall-clock second")
    left.plot(batches, [r["edits_per_cpu_second"] for r in runs], "-s", label="edits per CPU-second")
    left.set_xscale("log", base=2)
    left.set_xticks(batches, [str(b) for b in batches])
    left.set_xlabel("--batch")
    left.set_ylabel("edits per second")
    if runs[0]["batch"] == 1:
        left.axhline(3 * runs[0]["edits_per_cpu_second"], color="grey", ls=":", label="3x batch 1 per CPU-second (target)")
    left.legend(loc="best", fontsize=8)
    protocol = document["protocol"]
    left.set_title(f"throughput ({protocol['n']} CounterFact edits, {protocol['threads']} thread(s), {protocol['device']})")
    for name in ("edit_success", "converged", "locality", "generalization_routed"):
        right.plot(batches, [r[name] for r in runs], "-o", label=name)
    right.set_xscale("log", base=2)
    right.set_xticks(batches, [str(b) for b in batches])
    right.set_ylim(-0.05, 1.05)
    right.set_xlabel("--batch")
    right.set_title("quality per batch size")
    right.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
