"""Fluency of the text after an edit's answer: base cache after the target ("refresh"), LoRA off ("stop"), on ("keep").

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/after_target_fluency.py --records 30 --tokens 32

For the first `--records` CounterFact and zsRE records, each edit is trained on its prompt
(`sola.train.train_edit`, default training), then its prompt is generated greedily for
target + `--tokens` tokens with the edit routed (a one-edit bank that knows its target), under
`after_target` "refresh", "stop" and "keep". The continuation after the target is scored by n-gram
entropy (benchmarks/lora_robustness.py, ROME/MEMIT's fluency) against the reference the issue
names: the base model continuing the prompt with the target forced in as text. Records whose
generation does not begin with the target are counted apart (their continuation has no clean
"after"). Paired differences carry 95% bootstrap intervals. `refresh_same_as_forced` counts
the records whose "refresh" text after the target is the forced-text baseline's, character for
character (the forced text is tokenised from text, "refresh" continues the target's token ids,
so a different tokenisation of the joint can make them differ); `refresh_same_as_ids` those
whose text after the target is the base model's greedy continuation of the very token ids
prompt + target, which "refresh" reproduces by construction up to float rounding. Results:
benchmarks/results/after_target_fluency.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.lora_robustness import ngram_entropy
from registry.routing import join_target
from sola.config import RoutingConfig, TrainConfig
from sola.data import read_benchmark
from sola.evaluate import bootstrap_interval
from sola.layer import EditBank
from sola.modelio import load_base
from sola.routed import RoutedModel
from sola.train import train_edit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
MODES = ("refresh", "stop", "keep")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=30, help="records per dataset")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated after the target")
    parser.add_argument("--name", default="after_target_fluency")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer, identity = load_base(None)
    routed = RoutedModel(model, tokenizer, RoutingConfig(after_target="refresh"))
    started, load_at_start = time.perf_counter(), os.getloadavg()
    config = routed.config
    rows = []
    for dataset, file in (("counterfact", "counterfact-1k.json"), ("zsre", "zsre-eval-1037.json")):
        _, requests = read_benchmark(DATA / file, args.records)
        for number, request in enumerate(requests, start=1):
            trained = train_edit(routed, request.prompt, request.target, config=TrainConfig())
            bank = EditBank.from_tensors({"e": (trained.lora_a, trained.lora_b, trained.keys)})
            bank = dataclasses.replace(bank, answers={"e": (request.prompt, request.target)})
            target_text = join_target(request.prompt, request.target)
            length = len(routed.encode(request.prompt, request.target).target_ids)
            row = {"dataset": dataset, "prompt": request.prompt, "target": request.target}
            for mode in MODES:
                routed.config = dataclasses.replace(config, after_target=mode)
                begun = time.perf_counter()
                [text], routing = routed.generate([request.prompt], max_new_tokens=length + args.tokens, bank=bank)
                row[f"{mode}_seconds"] = time.perf_counter() - begun
                row[f"{mode}_fired"] = routing.edits[0] == "e"
                row[f"{mode}_answered"] = text.startswith(target_text)
                row[f"{mode}_after"] = text[len(target_text):] if text.startswith(target_text) else text
            routed.config = config
            [forced], _ = routed.generate([request.prompt + target_text], max_new_tokens=args.tokens, bank=EditBank.empty())
            row["forced_after"] = forced
            [from_ids], _ = routed.generate([""], max_new_tokens=args.tokens, bank=EditBank.empty(),
                                            token_ids=[routed.encode(request.prompt, request.target).input_ids[0].tolist()])
            row["ids_after"] = from_ids
            for name in (*MODES, "forced"):
                row[f"{name}_entropy"] = ngram_entropy(row[f"{name}_after"])
            rows.append(row)
            print(f"{dataset} {number}/{len(requests)} " + " ".join(f"{name} {row[f'{name}_entropy']:.2f}" for name in (*MODES, "forced")),
                  file=sys.stderr, flush=True)
    summary = {}
    for dataset in ("counterfact", "zsre", "all"):
        chosen = [r for r in rows if dataset in ("all", r["dataset"]) and all(r[f"{mode}_answered"] for mode in MODES)]
        entry = {"n": len(chosen), "n_not_answered": sum(1 for r in rows if dataset in ("all", r["dataset"])) - len(chosen)}
        for name in (*MODES, "forced"):
            values = [r[f"{name}_entropy"] for r in chosen]
            entry[f"{name}_entropy"] = statistics.mean(values) if values else None
            entry[f"{name}_interval"] = bootstrap_interval(values) if values else None
        for name in MODES:  # the generation's wall time ("refresh": one more prefill per fired row)
            entry[f"{name}_seconds"] = statistics.mean(r[f"{name}_seconds"] for r in chosen) if chosen else None
        for name in MODES:
            differences = [r[f"{name}_entropy"] - r["forced_entropy"] for r in chosen]
            entry[f"{name}_minus_forced"] = statistics.mean(differences) if differences else None
            entry[f"{name}_minus_forced_interval"] = bootstrap_interval(differences) if differences else None
        entry["refresh_same_as_forced"] = sum(r["refresh_after"] == r["forced_after"] for r in chosen)
        entry["refresh_same_as_ids"] = sum(r["refresh_after"] == r["ids_after"] for r in chosen)
        summary[dataset] = entry
    document = {"command": " ".join(["OMP_NUM_THREADS=1", ".venv/bin/python", "benchmarks/after_target_fluency.py", *sys.argv[1:]]),
                "model": identity.to_dict(), "routing": config.to_dict(), "threads": 1, "load_at_start": load_at_start, "load": os.getloadavg(),
                "seconds": round(time.perf_counter() - started, 1),
                "note": "other sessions were running on the same 2-core machine", "summary": summary,
                "examples": rows[:6], "records": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(document, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
