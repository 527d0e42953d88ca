"""Can routing tell "what about" apart from "who"? A study of a relation gate for subject keys.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/relation_gate.py --records 200

Subject keys route every prompt that names an edited subject, so "Danielle Darrieux was born
in" fires the "mother tongue" edit (docs/results.md section 7). A gate on a second vector, the
edited module's input at the prompt's **last** token (what the model is about to answer), might
keep the paraphrase ("Danielle Darrieux's native tongue is") and drop other relations. For the
first `--records` records of CounterFact and zsRE (`../shared/data`), this measures the cosine
distance between the edit prompt's last-token state and (a) its paraphrase's, (b) its
other-relation probes' (`sola/probes.py`, 2 per edit), at blocks `--layers`, and reports per
block the ROC AUC and, at gates that keep 90/95/99% of paraphrases, the share of relation
probes still let through. Routing only; no training. Results: benchmarks/results/relation_gate.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/relation_gate.py --records 100 --answer

`--answer` asks the same of what the base model is about to *answer* (the top of the network,
which a gate could only read after a full base pass over the prompt): the cosine of the final
normed state at the last token, the overlap of the two next-token distributions (Bhattacharyya
coefficient, and the share of the top 20 tokens in common), and how much more (log-probability)
the query than the edit prompt expects the edit's new target's first token, or the old answer's
(CounterFact `ground_truth`, zsRE `answers[0]`). Results: benchmarks/results/relation_gate_answer.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sola.config import RoutingConfig
from sola.data import read_benchmark
from sola.modelio import load_base
from sola.probes import relation_probes
from sola.arch import decoder_blocks
from sola.routed import RoutedModel

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"


@torch.no_grad()
def last_states(routed: RoutedModel, prompt: str, layers: list[int]) -> dict[int, torch.Tensor]:
    """The edited projection's input at the prompt's last token, at each block of `layers`."""
    blocks = decoder_blocks(routed.model)
    seen: dict[int, torch.Tensor] = {}

    def keeper(layer: int):
        def keep(_module: torch.nn.Module, inputs: tuple) -> None:
            seen[layer] = torch.nn.functional.normalize(inputs[0][0, -1].float(), dim=-1)
        return keep

    hooks = [blocks[layer].get_submodule(routed.config.module).register_forward_pre_hook(keeper(layer)) for layer in layers]
    try:
        routed.model(input_ids=routed.encode(prompt).input_ids, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@torch.no_grad()
def answer_view(routed: RoutedModel, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the final normed state at the prompt's last token, L2-normalised; the base model's
    next-token log-probabilities there)."""
    seen: dict[str, torch.Tensor] = {}
    hook = routed.model.model.norm.register_forward_hook(lambda _m, _i, out: seen.__setitem__("final", out[0, -1].float()))
    try:
        logits = routed.model(input_ids=routed.encode(prompt).input_ids, use_cache=False).logits[0, -1].float()
    finally:
        hook.remove()
    return torch.nn.functional.normalize(seen["final"], dim=-1), torch.log_softmax(logits, dim=-1)


def answer_features(edit: tuple[torch.Tensor, torch.Tensor], query: tuple[torch.Tensor, torch.Tensor],
                    answers: dict[str, int]) -> dict[str, float]:
    """How alike two prompts' answers are (higher = more alike), for `--answer`."""
    (edit_state, edit_logp), (query_state, query_logp) = edit, query
    edit_top = set(torch.topk(edit_logp, 20).indices.tolist())
    features = {
        "final_state_cosine": float(edit_state @ query_state),
        "distribution_overlap": float((edit_logp.exp() * query_logp.exp()).sqrt().sum()),
        "top20_shared": len(edit_top & set(torch.topk(query_logp, 20).indices.tolist())) / 20,
    }
    for name, token in answers.items():
        features[f"{name}_logp_gain"] = float(query_logp[token] - edit_logp[token])
    return features


def answer_study(routed: RoutedModel, records: int) -> dict[str, object]:
    """`--answer`: per dataset and feature, the AUC of paraphrase vs relation probe and the share
    of probes a gate keeping 90/95% of paraphrases lets through."""
    report: dict[str, object] = {}
    for name, file in (("counterfact", "counterfact-1k.json"), ("zsre", "zsre-eval-1037.json")):
        raw = json.loads((DATA / file).read_text())[:records]
        _, requests = read_benchmark(DATA / file, records)
        probes = relation_probes(requests, per_edit=2)
        paraphrase, other = [], []
        for index, request in enumerate(requests):
            if not request.rephrases:
                continue
            old = raw[index].get("ground_truth") or (raw[index].get("answers") or [None])[0]
            answers = {"new_target": int(routed.encode(request.prompt, request.target).target_ids[0])}
            if old:
                answers["old_answer"] = int(routed.encode(request.prompt, str(old)).target_ids[0])
            own = answer_view(routed, request.prompt)
            paraphrase.append(answer_features(own, answer_view(routed, request.rephrases[0]), answers))
            other += [answer_features(own, answer_view(routed, p.prompt), answers) for p in probes if p.record == index]
            if (index + 1) % 20 == 0:
                print(f"{name} {index + 1}/{len(requests)}", file=sys.stderr, flush=True)
        per_feature = {}
        for feature in paraphrase[0]:
            kept = sorted((f[feature] for f in paraphrase if feature in f), reverse=True)
            probed = [f[feature] for f in other if feature in f]
            entry = {"auc": auc([-x for x in kept], [-x for x in probed]), "n_paraphrases": len(kept), "n_probes": len(probed)}
            for keep in (0.9, 0.95):
                gate = kept[min(len(kept) - 1, int(keep * len(kept)))]
                entry[f"probes_through_at_{int(keep * 100)}"] = sum(x >= gate for x in probed) / len(probed)
            per_feature[feature] = entry
            print(name, feature, json.dumps(entry), file=sys.stderr, flush=True)
        report[name] = per_feature
    return report


def auc(positives: list[float], negatives: list[float]) -> float:
    """P(a paraphrase is closer than a relation probe): distances, smaller = closer."""
    wins = sum((p < n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--layers", default="4,6,8,10,12,16")
    parser.add_argument("--answer", action="store_true", help="study the base model's answer at the last token instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    layers = [int(x) for x in args.layers.split(",")]
    model, tokenizer, _ = load_base(None)
    routed = RoutedModel(model, tokenizer, RoutingConfig(key_function="subject"))  # the subject registry's prompts (start token)
    if args.answer:
        RESULTS.mkdir(exist_ok=True)
        report = answer_study(routed, args.records)
        (RESULTS / "relation_gate_answer.json").write_text(json.dumps({"records": args.records, "report": report}, indent=1) + "\n")
        return
    report = {}
    for name, file in (("counterfact", "counterfact-1k.json"), ("zsre", "zsre-eval-1037.json")):
        _, requests = read_benchmark(DATA / file, args.records)
        probes = relation_probes(requests, per_edit=2)
        para = {layer: [] for layer in layers}
        other = {layer: [] for layer in layers}
        for index, request in enumerate(requests):
            if not request.rephrases:
                continue
            own = last_states(routed, request.prompt, layers)
            rephrase = last_states(routed, request.rephrases[0], layers)
            for layer in layers:
                para[layer].append(1 - float(own[layer] @ rephrase[layer]))
            for probe in (p for p in probes if p.record == index):
                state = last_states(routed, probe.prompt, layers)
                for layer in layers:
                    other[layer].append(1 - float(own[layer] @ state[layer]))
            if (index + 1) % 20 == 0:
                print(f"{name} {index + 1}/{len(requests)}", file=sys.stderr, flush=True)
        per_layer = {}
        for layer in layers:
            ranked = sorted(para[layer])
            entry = {"auc": auc(para[layer], other[layer]), "n_paraphrases": len(ranked), "n_probes": len(other[layer])}
            for keep in (0.9, 0.95, 0.99):
                gate = ranked[min(len(ranked) - 1, int(keep * len(ranked)))]
                entry[f"probes_through_at_{int(keep * 100)}"] = sum(d <= gate for d in other[layer]) / len(other[layer])
                entry[f"gate_at_{int(keep * 100)}"] = gate
            per_layer[layer] = entry
            print(name, layer, json.dumps(entry), file=sys.stderr, flush=True)
        report[name] = per_layer
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "relation_gate.json").write_text(json.dumps({"records": args.records, "layers": layers, "report": report}, indent=1) + "\n")


if __name__ == "__main__":
    main()
