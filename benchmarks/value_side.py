"""The value side of an edit, routing aside: how a LoRA fitted one way behaves on prompts it was
not fitted to, with the LoRA forced on (as if routing always fired).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/value_side.py --records 40 --variants base,contexts,kl,contexts+kl

For the first `--records` CounterFact (and `--zsre`) records: train the edit under each variant
of `sola.config.TrainConfig` (with `--start-token registry`, every prompt starts with the token a
subject-keyed registry records, as `sola init --key-function subject` does; contexts: the prompt is also fitted after generic context
sentences; kl: the next-token distribution on other-relation prompts of the subject is held to
the base model's), then, with that LoRA applied to every sequence:
- success: teacher-forced token accuracy of the target after the prompt,
- generalisation: the same after the record's paraphrase (never trained on),
- relation locality: share of `sola eval`'s other-relation probes (sola/probes.py, evaluation
  templates; training uses another template set) whose next-token argmax is the base model's,
- steps and seconds per edit (1 thread).
Results: benchmarks/results/value_side.json (means with 95% bootstrap intervals).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

from sola.arch import routing_defaults
from sola.config import RoutingConfig, TrainConfig
from sola.data import read_benchmark
from sola.evaluate import bootstrap_interval
from sola.modelio import load_base
from sola.probes import relation_probes
from sola.routed import RoutedModel, subject_start_token
from sola.train import train_edit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"

# (value_side_cf30.json's "kl" and "contexts+kl" ran before an edit with held prompts also had to
# keep their base argmax to stop early; value_side_cf30_held.json's "kl8" ran with that rule)
VARIANTS = {
    "base": {},
    "contexts": {"contexts": 4},
    "kl": {"relation_kl": 1.0, "relation_prompts": 4},
    "contexts+kl": {"contexts": 4, "relation_kl": 1.0, "relation_prompts": 4},
    "kl8": {"relation_kl": 1.0, "relation_prompts": 8},
    "contexts2+kl8": {"contexts": 2, "relation_kl": 1.0, "relation_prompts": 8},
    # the LoRA's A factor drawn larger: B's first steps then move the output more
    "init0.05": {"init_std": 0.05},
    "init0.1": {"init_std": 0.1},
    "init0.2": {"init_std": 0.2},
    # fitted further past the stop loss, or after fewer/more context sentences
    "stop0.01": {"stop_loss": 0.01},
    "stop0.003": {"stop_loss": 0.003},
    "stop0.001": {"stop_loss": 0.001},
    "contexts2": {"contexts": 2},
    "contexts8": {"contexts": 8},
    "contexts+stop0.01": {"contexts": 4, "stop_loss": 0.01},
}


@torch.no_grad()
def accuracy(routed: RoutedModel, prompt: str, target: str) -> float:
    encoded = routed.encode(prompt, target)
    start = encoded.prompt_len - 1
    logits = routed.model(input_ids=encoded.input_ids, use_cache=False).logits[0, start : start + len(encoded.target_ids)]
    return float((logits.argmax(-1) == encoded.target_ids).float().mean())


@torch.no_grad()
def next_token(routed: RoutedModel, prompt: str) -> int:
    return int(routed.model(input_ids=routed.encode(prompt).input_ids, use_cache=False).logits[0, -1].argmax())


def start_token_choice(model: object, tokenizer: object, choice: str) -> int:
    """A study's `--start-token`: "none" (-1), "registry" (what `sola init --key-function subject`
    records for this model, sola.routed.subject_start_token) or a token id."""
    if choice == "none":
        return -1
    if choice == "registry":
        return subject_start_token(model, tokenizer)
    return int(choice)


def summarise(rows: list[dict]) -> dict:
    """Means with 95% bootstrap intervals of per-edit rows ({success, generalisation, relation
    (one 0/1 per probe), steps, seconds, converged}); relation locality is averaged per edit."""
    summary = {}
    for metric in ("success", "generalisation", "steps", "seconds"):
        values = [r[metric] for r in rows if r[metric] is not None]
        summary[metric] = {"mean": sum(values) / len(values), "ci95": bootstrap_interval(values)}
    relation = [sum(r["relation"]) / len(r["relation"]) for r in rows if r["relation"]]
    summary["relation_locality"] = {"mean": sum(relation) / len(relation), "ci95": bootstrap_interval(relation)}
    summary["converged"] = sum(r["converged"] for r in rows) / len(rows)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--offset", type=int, default=0, help="skip this many records first")
    parser.add_argument("--data", default="counterfact-1k.json")
    parser.add_argument("--variants", default="base,contexts,kl,contexts+kl")
    parser.add_argument("--key-function", default="subject")
    parser.add_argument("--start-token", default="none",
                        help="none, registry (the token `sola init --key-function subject` records), or a token id")
    parser.add_argument("--layer", type=int, default=None,
                        help="edited block (default: what `sola init` records for the key function; 8 before it chose 20)")
    parser.add_argument("--model", default=None, help="a model spec as `sola init --model` takes it (default: the bundled SmolLM2)")
    parser.add_argument("--name", default="value_side")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer, _ = load_base(args.model)
    start_token = start_token_choice(model, tokenizer, args.start_token)
    defaults = routing_defaults(model, args.key_function)  # what `sola init --key-function` records
    if args.layer is not None:
        defaults["layer"] = args.layer
    routing = RoutingConfig(**{**defaults, "start_token": start_token})
    routed = RoutedModel(model, tokenizer, routing)
    _, requests = read_benchmark(DATA / args.data, args.offset + args.records)
    requests = requests[args.offset:]
    probes = relation_probes(requests, per_edit=2)
    base_answers = {p.prompt: next_token(routed, p.prompt) for p in probes}
    results: dict[str, dict] = {}
    for name in args.variants.split(","):
        config = TrainConfig(**VARIANTS[name])
        rows = []
        for index, request in enumerate(requests):
            trained = train_edit(routed, request.prompt, request.target, config=config, subject=request.subject)
            with torch.no_grad(), routed.layer.training_adapter(trained.lora_a, trained.lora_b):
                row = {
                    "success": accuracy(routed, request.prompt, request.target),
                    "generalisation": accuracy(routed, request.rephrases[0], request.target) if request.rephrases else None,
                    "relation": [1.0 if next_token(routed, p.prompt) == base_answers[p.prompt] else 0.0
                                 for p in probes if p.record == index],
                    "steps": trained.steps, "seconds": trained.seconds, "converged": trained.converged,
                }
            rows.append(row)
            print(f"{name} {index + 1}/{len(requests)} success {row['success']:.2f} gen {row['generalisation']} "
                  f"relation {row['relation']} steps {row['steps']} {row['seconds']:.1f}s", file=sys.stderr, flush=True)
        summary = summarise(rows)
        results[name] = {"config": config.to_dict(), "summary": summary, "rows": rows, "load": os.getloadavg()}
        print(name, json.dumps(summary), file=sys.stderr, flush=True)
        RESULTS.mkdir(exist_ok=True)  # after every variant, so a stopped run keeps what it measured
        out = RESULTS / f"{args.name}.json"
        out.write_text(json.dumps({"records": args.records, "offset": args.offset, "data": args.data, "model": args.model,
                                   "routing": routing.to_dict(), "variants": results}, indent=1) + "\n")
        print(f"-> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
