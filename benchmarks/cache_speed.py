"""Seconds per edit with and without the cached-lower-blocks trick, same edits, same model.

    .venv/bin/python benchmarks/cache_speed.py --limit 20

Trains each of the first N CounterFact edits twice (cached / full forward) on the default
model and records median and p90 training seconds to benchmarks/results/cache_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from sola.config import RoutingConfig
from sola.data import read_benchmark
from sola.modelio import load_base
from sola.routed import RoutedModel
from sola.train import train_edit

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact-1k.json"


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "mean": statistics.mean(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--layer", type=int, default=RoutingConfig.layer)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, identity = load_base(None)
    routed = RoutedModel(model, tokenizer, RoutingConfig(layer=args.layer))
    _, requests = read_benchmark(DATA, args.limit)
    timings: dict[str, list[float]] = {"cached": [], "full": []}
    steps = []
    for request in requests:
        for mode in ("cached", "full"):
            trained = train_edit(routed, request.prompt, request.target, cache_lower_blocks=mode == "cached")
            timings[mode].append(trained.seconds)
        steps.append(trained.steps)
    document = {
        "n": len(requests), "layer": args.layer, "threads": args.threads, "model": identity.to_dict(),
        "cached": quantiles(timings["cached"]), "full": quantiles(timings["full"]),
        "speedup_median": statistics.median(timings["full"]) / statistics.median(timings["cached"]),
        "steps": quantiles([float(s) for s in steps]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"cache_speed_L{args.layer}.json").write_text(json.dumps(document, indent=1))
    print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
