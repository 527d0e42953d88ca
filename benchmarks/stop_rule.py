"""Learning rate and stop rule, routing aside: what each step of one edit's training buys.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stop_rule.py --out benchmarks/results/stop_rule_cf60.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stop_rule.py --data zsre-eval-1037.json --out benchmarks/results/stop_rule_zsre60.json
    .venv/bin/python benchmarks/stop_rule.py --analyse benchmarks/results/stop_rule_cf60.json

Records offset..offset+records of `--data` (../shared/data) are each trained for a fixed
`--steps` Adam steps per learning rate (subject-key registry settings; the LoRA starts as
sola.train.fresh_adapter starts it), the LoRA forced on. After every step the trajectory records
the loss, whether every target token is the argmax, the smallest target-token probability, the
teacher-forced accuracy after up to 3 paraphrases and the base-argmax share of 2 other-relation
probes (sola.probes). Training for a fixed number of steps, rather than to today's stop, lets
`--analyse` replay any stop rule over the same trajectories: where each would stop, and what the
edit is then (docs/results.md, "Learning rate and stop rule").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from value_side import DATA, accuracy, next_token  # noqa: E402

from sola.config import SUBJECT_ROUTING_DEFAULTS, RoutingConfig, TrainConfig  # noqa: E402
from sola.data import read_benchmark  # noqa: E402
from sola.modelio import load_base  # noqa: E402
from sola.probes import relation_probes  # noqa: E402
from sola.routed import RoutedModel, start_token_for  # noqa: E402
from sola.train import fresh_adapter, target_loss  # noqa: E402

Step = dict  # one step of a trajectory: loss, argmax, minprob, gen (per paraphrase), rel (per probe)


def _below(limit: float) -> Callable[[Step], bool]:
    """Today's rule at another loss bound (sola.train.reached_target): every target token is
    the argmax and the loss is under `limit`."""
    return lambda step: step["argmax"] and step["loss"] < limit


STOP_RULES: dict[str, Callable[[Step], bool]] = {
    **{f"loss<{limit:g}": _below(limit) for limit in (0.5, 0.2, 0.1, 0.05, 0.02, 0.01)},
    "argmax": lambda step: step["argmax"],
    "minp>0.5": lambda step: step["minprob"] > 0.5,
    "minp>0.8": lambda step: step["minprob"] > 0.8,
}


def trajectory(routed: RoutedModel, request, probes: list, base: dict[str, int], lr: float, steps: int) -> list[Step]:
    """`steps` Adam steps on one edit's prompt + target, the state measured before each step and after the last."""
    lora_a, lora_b, optimizer = fresh_adapter(routed, TrainConfig(lr=lr))
    encoded = routed.encode(request.prompt, request.target)
    start = encoded.prompt_len - 1
    rows: list[Step] = []
    for step in range(steps + 1):
        with routed.layer.training_adapter(lora_a, lora_b):
            logits = routed.model(input_ids=encoded.input_ids, use_cache=False).logits[0, start : start + len(encoded.target_ids)]
            loss = target_loss(logits, encoded.target_ids)
            with torch.no_grad():
                rows.append({
                    "loss": float(loss),
                    "argmax": bool((logits.argmax(-1) == encoded.target_ids).all()),
                    "minprob": float(logits.softmax(-1).gather(1, encoded.target_ids[:, None]).min()),
                    "gen": [accuracy(routed, text, request.target) for text in request.rephrases[:3]],
                    "rel": [1.0 if next_token(routed, p.prompt) == base[p.prompt] else 0.0 for p in probes],
                })
        if step < steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return rows


def analyse(path: Path) -> None:
    """Per learning rate and stop rule: where the edits would stop, and their generalisation and
    relation locality there (an edit the rule never stops is taken at its last step)."""
    for lr, edits in json.loads(path.read_text()).items():
        for name, rule in STOP_RULES.items():
            stops = [next((k for k, step in enumerate(edit) if rule(step)), len(edit) - 1) for edit in edits]
            reached = sum(rule(edit[k]) for edit, k in zip(edits, stops)) / len(edits)
            gen = [statistics.mean(edit[k]["gen"]) for edit, k in zip(edits, stops) if edit[k]["gen"]]
            rel = [statistics.mean(edit[k]["rel"]) for edit, k in zip(edits, stops) if edit[k]["rel"]]
            print(f"lr {lr} n {len(edits)} {name:10s} steps med {statistics.median(stops):4.1f} mean {statistics.mean(stops):5.2f} "
                  f"reached {reached:.2f} gen {statistics.mean(gen):.3f} rel {statistics.mean(rel):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=60)
    parser.add_argument("--offset", type=int, default=100, help="skip this many records first")
    parser.add_argument("--data", default="counterfact-1k.json")
    parser.add_argument("--lrs", default="0.05,0.1,0.2")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stop_rule.json")
    parser.add_argument("--analyse", type=Path, help="print the stop rules over a saved run instead of training")
    args = parser.parse_args()
    if args.analyse:
        analyse(args.analyse)
        return
    torch.set_num_threads(1)
    model, tokenizer, _ = load_base(None)
    routing = RoutingConfig(key_function="subject", start_token=start_token_for(tokenizer), **SUBJECT_ROUTING_DEFAULTS)
    routed = RoutedModel(model, tokenizer, routing)
    _, requests = read_benchmark(DATA / args.data, args.offset + args.records)
    requests = requests[args.offset:]
    probes = relation_probes(requests, per_edit=2)
    base = {p.prompt: next_token(routed, p.prompt) for p in probes}
    results: dict[str, list[list[Step]]] = {}
    for lr in (float(x) for x in args.lrs.split(",")):
        results[str(lr)] = edits = []
        for index, request in enumerate(requests):
            edits.append(trajectory(routed, request, [p for p in probes if p.record == index], base, lr, args.steps))
            print(lr, index, [round(step["loss"], 3) for step in edits[-1]], edits[-1][-1]["gen"], file=sys.stderr, flush=True)
        args.out.parent.mkdir(exist_ok=True)  # after every rate, so a stopped run keeps what it measured
        args.out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
