"""Where one edit's training time goes: steps, seconds per step, forward vs backward.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edit_time.py --records 12 --contexts 0,4

Trains the first `--records` CounterFact records (`../shared/data`) one at a time
(sola.train.train_edit, with the routing and training `sola init` records for subject keys:
block 20, stop loss 0.01; `--layer` and `--stop-loss` override them) at each
`--contexts` setting, on one thread, and reports the median edit time, the steps each edit
took, the seconds per training forward pass (each pass runs the edited block and those above
it over every row of the edit: the prompt, then the prompt after each context) and, from a
profile of one edit, the share of time in the backward pass and in the linear layers. Edit
time here is training alone (keys and fit rows included; `--rephrases none` trains the prompt
alone, as `sola eval`'s edits are made); `sola edit` adds the collision check and the commit.
Results: benchmarks/results/<name>.json (default edit_time).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import json
import os
import pstats
import statistics
import time
from pathlib import Path

import torch

from sola.arch import routing_defaults
from sola.config import RoutingConfig, TrainConfig
from sola.data import read_benchmark
from sola.modelio import load_base
from sola.routed import RoutedModel, subject_start_token
from sola.train import train_edit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=12)
    parser.add_argument("--contexts", default="0,4")
    parser.add_argument("--rephrases", choices=("keyed", "none"), default="keyed",
                        help="keyed: each record's rephrases are keyed with it (one lower-block pass each, as "
                             "`sola edit` with rephrases); none: the prompt alone, as `sola eval` edits")
    parser.add_argument("--compare-linears", action="store_true",
                        help="also train every record with nn.Linear's own layout (no transposed weights, "
                             "sola.linears), alternating the order per record, and report both")
    parser.add_argument("--layer", type=int, default=None,
                        help="the edited block (default: the subject registry's; subject keys read blocks 4 and 3 whatever it is)")
    parser.add_argument("--stop-loss", type=float, default=None, help="training early stop (default: the subject registry's)")
    parser.add_argument("--name", default="edit_time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer, _ = load_base(None)
    settings = routing_defaults(model, "subject")  # what `sola init --key-function subject` records
    if args.layer is not None:
        settings["layer"] = args.layer
    config = RoutingConfig(**{**settings, "start_token": subject_start_token(model, tokenizer)})
    training = TrainConfig.defaults_for("subject")
    if args.stop_loss is not None:
        training["stop_loss"] = args.stop_loss
    routed = RoutedModel(model, tokenizer, config)
    _, requests = read_benchmark(DATA / "counterfact-1k.json", args.records)
    if args.rephrases == "none":
        requests = [dataclasses.replace(request, rephrases=()) for request in requests]
    report: dict[str, object] = {"records": args.records, "rephrases": args.rephrases, "layer": config.layer,
                                 "stop_loss": training["stop_loss"],
                                 "loadavg_before": os.getloadavg()}
    if args.compare_linears:
        report["linears"] = compare_linears(routed, requests, TrainConfig.from_dict(training))
        print("linears", json.dumps(report["linears"]), flush=True)
    for contexts in (int(c) for c in args.contexts.split(",")):
        train = TrainConfig.from_dict({**training, "contexts": contexts})
        seconds, steps = [], []
        for request in requests:
            started = time.perf_counter()
            trained = train_edit(routed, request.prompt, request.target, list(request.rephrases), train, subject=request.subject)
            seconds.append(time.perf_counter() - started)
            steps.append(trained.steps)
        profile = cProfile.Profile()
        first = requests[0]
        profile.runcall(train_edit, routed, first.prompt, first.target, list(first.rephrases), train, subject=first.subject)
        stats = pstats.Stats(profile)
        total = sum(entry[2] for entry in stats.stats.values())  # tottime over all functions
        by_name = {func[2]: entry[2] for func, entry in stats.stats.items()}
        passes = sum(steps) + len(steps)  # each edit's forwards: one per step, plus the one that stops it
        report[f"contexts_{contexts}"] = entry = {
            "median_s": statistics.median(seconds), "seconds": seconds, "steps": steps,
            "median_steps": statistics.median(steps), "seconds_per_forward_pass": sum(seconds) / passes,
            "profile_share_backward": by_name.get("<method 'run_backward' of 'torch._C._EngineBase' objects>", 0.0) / total,
            # nn.Linear's own product, or (training's transposed layers, sola.linears) the matmul
            # and its backward: the forward's `@` is attributed to the Python function calling it
            "profile_share_linear": (by_name.get("<built-in method torch._C._nn.linear>", 0.0) + sum(
                entry[2] for func, entry in stats.stats.items() if func[0].endswith("sola/linears.py"))) / total,
        }
        print(contexts, json.dumps({k: v for k, v in entry.items() if k not in ("seconds", "steps")}), flush=True)
    report["loadavg_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")


def compare_linears(routed: RoutedModel, requests: list, train: TrainConfig) -> dict[str, dict[str, float]]:
    """Each record trained twice, with training's transposed linear layers and with
    nn.Linear's own (the routed model's `training_linears` replaced by a no-op on this instance),
    in alternating order so that drifting machine speed hits both alike."""
    swapping = routed.training_linears
    seconds: dict[str, list[float]] = {"transposed": [], "nn.Linear": []}
    steps: dict[str, list[int]] = {"transposed": [], "nn.Linear": []}
    for number, request in enumerate(requests):
        order = ["transposed", "nn.Linear"] if number % 2 == 0 else ["nn.Linear", "transposed"]
        for label in order:
            routed.training_linears = swapping if label == "transposed" else contextlib.nullcontext
            started = time.perf_counter()
            trained = train_edit(routed, request.prompt, request.target, list(request.rephrases), train, subject=request.subject)
            seconds[label].append(time.perf_counter() - started)
            steps[label].append(trained.steps)
    routed.training_linears = swapping
    return {label: {"median_s": statistics.median(seconds[label]), "median_steps": statistics.median(steps[label]),
                    "seconds_per_forward_pass": sum(seconds[label]) / (sum(steps[label]) + len(steps[label]))}
            for label in seconds}


if __name__ == "__main__":
    main()
