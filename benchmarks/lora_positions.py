"""Where in the sequence an edit's LoRA acts, routing aside: every position (today), the subject's
tokens only, the subject's last token only, the subject and every position after it, or only the
positions after the subject.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora_positions.py --records 30 --positions all,span,last,from,after

Why: a LoRA that acts on every position of the one prompt it is fitted on can learn the prompt's
wording (its last tokens) as much as its subject; a paraphrase then reaches the edit (subject keys
route it) but not the target. Editing only the subject's representation, as locate-then-edit
methods (ROME, MEMIT) do, leaves the model's own attention to read the new fact from the subject
wherever it is asked about. Whether that carries to paraphrases and what it costs other relations
of the subject is what this measures.

For the first `--records` CounterFact (or `--data`) records, on the subject-keyed registry's
settings (layer 8 `mlp.up_proj`, start token): a fresh rank-4 LoRA is fitted on the prompt + target
with the delta masked to the chosen positions (Adam, lr `--lr`, stop when every target token is the
argmax and the loss < 0.05, at most 40 steps), then, with the same mask rule on each prompt
(the subject's span located in it by text, as a routing query's best window would):
- success: teacher-forced token accuracy of the target after the prompt,
- generalisation: the same after the record's paraphrase,
- relation locality: share of `sola eval`'s other-relation probes (sola/probes.py) whose next-token
  argmax stays the base model's,
- steps per edit.
Results: benchmarks/results/<name>.json (means with 95% bootstrap intervals).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from sola.config import RoutingConfig, SUBJECT_ROUTING_DEFAULTS, TrainConfig
from sola.data import read_benchmark
from sola.modelio import load_base
from sola.probes import relation_probes, training_prompts
from sola.routed import RoutedModel
from sola.train import edit_loss, fit_rows, fresh_adapter

sys.path.insert(0, str(Path(__file__).parent))
from value_side import DATA, RESULTS, start_token_choice, summarise  # noqa: E402  (as the value-side study reads them)


def position_mask(length: int, span: tuple[int, int], rule: str) -> torch.Tensor:
    """(1, length, 1) float mask of the positions the LoRA acts on under `rule`."""
    start, end = span
    mask = torch.zeros(1, length, 1)
    if rule == "all":
        mask[:] = 1
    elif rule == "span":
        mask[0, start:end] = 1
    elif rule == "last":
        mask[0, end - 1] = 1
    elif rule == "from":
        mask[0, start:] = 1
    elif rule == "after":  # the relation's words and the answer: the subject's own states stay the base's
        mask[0, end:] = 1
    else:
        raise ValueError(f"unknown position rule {rule!r}")
    return mask


class MaskedLoRA:
    """A forward hook adding (x A^T) B^T * scale at the masked positions of the edited module."""

    def __init__(self, routed: RoutedModel) -> None:
        self.lora: tuple[torch.Tensor, torch.Tensor] | None = None
        self.mask: torch.Tensor | None = None
        self.scale = routed.layer.scale
        routed.layer.register_forward_hook(self._add)

    def _add(self, _module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.lora is None:
            return output
        lora_a, lora_b = self.lora
        return output + (args[0] @ lora_a.T) @ lora_b.T * self.scale * self.mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=30)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--data", default="counterfact-1k.json")
    parser.add_argument("--positions", default="all,span,last,from")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--start-token", default="registry",
                        help="none, registry (what `sola init --key-function subject` records now) or a token id; "
                             "docs/results.md's numbers ran with 0 (<|endoftext|>), the registry's token then")
    parser.add_argument("--relation-prompts", type=int, default=0,
                        help="other-relation prompts of the subject (training templates) held to the base model")
    parser.add_argument("--relation-kl", type=float, default=1.0, help="weight of their KL term (as sola edit's)")
    parser.add_argument("--name", default="lora_positions")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer, _ = load_base(None)
    settings = dict(SUBJECT_ROUTING_DEFAULTS, layer=args.layer)
    routing = RoutingConfig(key_function="subject", start_token=start_token_choice(model, tokenizer, args.start_token), **settings)
    routed = RoutedModel(model, tokenizer, routing)
    hook = MaskedLoRA(routed)
    # sola's defaults otherwise: 40 steps, stop at loss < 0.05 with every target the argmax
    train = TrainConfig(lr=args.lr, relation_prompts=args.relation_prompts, relation_kl=args.relation_kl)
    _, requests = read_benchmark(DATA / args.data, args.offset + args.records)
    requests = requests[args.offset:]
    probes = relation_probes(requests, per_edit=2)

    def logits_of(ids: torch.Tensor) -> torch.Tensor:
        return routed.model(input_ids=ids, use_cache=False).logits[0]

    def masked(prompt: str, subject: str, length: int, rule: str) -> torch.Tensor:
        span = routed.subject_span(prompt, subject)
        return position_mask(length, span, rule)

    with torch.no_grad():
        base_answers = {p.prompt: int(logits_of(routed.encode(p.prompt).input_ids)[-1].argmax()) for p in probes}
    results = {}
    for rule in args.positions.split(","):
        rows = []
        for index, request in enumerate(requests):
            encoded = routed.encode(request.prompt, request.target)
            mask = masked(request.prompt, request.subject, encoded.input_ids.shape[1], rule)
            lora_a, lora_b, optimizer = fresh_adapter(routed, train)  # sola's start: seeded A, zero B, Adam
            # the rows sola edit fits (prompt + target, then held other-relation prompts of the subject)
            # and its loss over them (sola.train.edit_loss: the KL term and the held argmax in the stop)
            rows_fit = fit_rows(routed, encoded, routed.capture(encoded.input_ids)[0], request.prompt, request.target,
                                request.subject, train)
            held_texts = training_prompts(request.prompt, request.subject, train.relation_prompts, train.seed)
            masks = [mask, *(masked(text, request.subject, len(ids), rule) for text, ids in zip(held_texts, rows_fit.ids[1:]))]
            reference = None  # the held rows' base log-probabilities, from the first step (B starts at zero)
            hook.lora = (lora_a, lora_b)
            began, steps, converged = time.perf_counter(), 0, False
            for steps in range(1, train.max_steps + 1):
                logits = []
                for ids, row_mask, positions in zip(rows_fit.ids, masks, rows_fit.positions):
                    hook.mask = row_mask
                    logits.append(logits_of(ids[None])[positions])
                step, reference = edit_loss(rows_fit, logits, reference, train)
                loss, reached = step.loss, step.reached
                if reached:
                    converged = True
                    break
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            seconds = time.perf_counter() - began
            with torch.no_grad():
                hook.lora = (lora_a.detach(), lora_b.detach())

                def accuracy(prompt: str) -> float:
                    row = routed.encode(prompt, request.target)
                    hook.mask = masked(prompt, request.subject, row.input_ids.shape[1], rule)
                    at = row.prompt_len - 1
                    predicted = logits_of(row.input_ids)[at : at + len(row.target_ids)].argmax(-1)
                    return float((predicted == row.target_ids).float().mean())

                def keeps(prompt: str) -> float:
                    ids = routed.encode(prompt).input_ids
                    hook.mask = masked(prompt, request.subject, ids.shape[1], rule)
                    return 1.0 if int(logits_of(ids)[-1].argmax()) == base_answers[prompt] else 0.0

                paraphrase = next((p for p in request.rephrases if request.subject.lower() in p.lower()), None)
                row = {
                    "success": accuracy(request.prompt),
                    "generalisation": accuracy(paraphrase) if paraphrase else None,
                    "relation": [keeps(p.prompt) for p in probes if p.record == index],
                    "steps": steps, "converged": converged, "seconds": seconds,
                }
            hook.lora = None
            rows.append(row)
            print(f"{rule} {index + 1}/{len(requests)} success {row['success']:.2f} gen {row['generalisation']} "
                  f"relation {row['relation']} steps {steps}", file=sys.stderr, flush=True)
        summary = summarise(rows)
        results[rule] = {"summary": summary, "rows": rows, "load": os.getloadavg()}
        print(rule, json.dumps({k: round(v["mean"], 3) if isinstance(v, dict) else v for k, v in summary.items()}),
              file=sys.stderr, flush=True)
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"{args.name}.json"
        out.write_text(json.dumps({"records": args.records, "offset": args.offset, "data": args.data, "lr": args.lr,
                                   "relation_prompts": args.relation_prompts, "relation_kl": args.relation_kl,
                                   "routing": routing.to_dict(), "positions": results}, indent=1) + "\n")
        print(f"-> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
