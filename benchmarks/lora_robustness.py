"""Does a stricter or noisier fit make an edit's LoRA carry to the paraphrase?

The zsRE generalisation gap has two parts (docs/results.md, section 2b): paraphrases routed to
a restatement (routing) and the 3.5% of target tokens an edit's own LoRA misses on its
paraphrase. This measures the second part alone: each record's edit is trained on its prompt,
then the LoRA is applied to the paraphrase unconditionally (no routing) and scored by
teacher-forced token accuracy. Variants: the former default fit (lr 0.1), a stricter stop
loss, a larger learning rate, and Gaussian noise (sigma x the token's RMS) on the cached input
of the edited block during training. The paraphrases are never trained on. With
`--fluency-tokens N`, each edited prompt is also continued for N tokens with the LoRA on and
scored by n-gram entropy (the literature's fluency), against the base model's continuations.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora_robustness.py --records 1000:1037,0:40
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

import sola.routed as routed_module
from sola.config import RoutingConfig, TrainConfig
from sola.evaluate import bootstrap_interval
from sola.modelio import load_base
from sola.routed import RoutedModel
from sola.train import train_edit

RESULTS = Path(__file__).parent / "results"
# every setting spelled out: "default" is the fit sola used until 2026-11-27 (lr 0.1), so the
# names keep meaning what the recorded results measured whatever TrainConfig's defaults become
DEFAULT_FIT = TrainConfig(max_steps=40, lr=0.1, stop_loss=0.05)
VARIANTS = {  # name: (training config, noise sigma)
    "default": (DEFAULT_FIT, 0.0),
    "stop_loss_0.01": (dataclasses.replace(DEFAULT_FIT, stop_loss=0.01, max_steps=60), 0.0),
    "noise_0.1": (DEFAULT_FIT, 0.1),
    "noise_0.3": (DEFAULT_FIT, 0.3),
    "stop_loss_0.02": (dataclasses.replace(DEFAULT_FIT, stop_loss=0.02, max_steps=60), 0.0),
    "stop_loss_0.01_lr_0.2": (dataclasses.replace(DEFAULT_FIT, stop_loss=0.01, max_steps=60, lr=0.2), 0.0),
    "stop_loss_0.01_lr_0.3": (dataclasses.replace(DEFAULT_FIT, stop_loss=0.01, max_steps=60, lr=0.3), 0.0),
    "lr_0.3": (dataclasses.replace(DEFAULT_FIT, lr=0.3), 0.0),
    "stop_loss_0.02_lr_0.3": (dataclasses.replace(DEFAULT_FIT, stop_loss=0.02, max_steps=60, lr=0.3), 0.0),
}


def noisy_replay(sigma: float, generator: torch.Generator):
    """A `_ReplayInput.forward` that adds noise to the cached block input while gradients are on
    (training steps), and replays it unchanged otherwise (scoring)."""
    def forward(self, hidden_states, *args, **kwargs):
        hidden = self.hidden
        if sigma > 0 and torch.is_grad_enabled():
            rms = hidden.pow(2).mean(-1, keepdim=True).sqrt()
            hidden = hidden + torch.randn(hidden.shape, generator=generator) * rms * sigma
        return hidden
    return forward


def ngram_entropy(text: str) -> float:
    """Fluency as the editing literature scores generations (ROME/MEMIT's n-gram entropy): the
    weighted mean of the bigram (2/3) and trigram (4/3) entropies in bits over the words of the
    generated text. Repetitive continuations ("fever fever fever") score low."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    entropies = []
    for n, weight in ((2, 2 / 3), (3, 4 / 3)):
        grams = collections.Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        entropy = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        entropies.append(weight * entropy)
    return statistics.mean(entropies)


def paired_against(reference: list[float], variant: list[float]) -> dict[str, Any]:
    """Per-record difference to the reference fit, with the 95% bootstrap interval `sola eval`
    uses: the same records under both fits, so pairing removes most between-record noise."""
    differences = [v - r for r, v in zip(reference, variant)]
    return {"mean_difference": statistics.mean(differences), "interval": bootstrap_interval(differences),
            "records_better": sum(d > 0 for d in differences), "records_worse": sum(d < 0 for d in differences)}


def with_pairing(results: dict[str, dict]) -> dict[str, dict]:
    """Each variant's paired difference to the default fit: `vs_default` (paraphrase accuracy)
    and `fluency_vs_default`, where both carry the per-record values."""
    default = results.get("default", {})
    for name, result in results.items():
        if name == "default":
            continue
        if "per_record_accuracy" in default and "per_record_accuracy" in result:
            result["vs_default"] = paired_against(default["per_record_accuracy"], result["per_record_accuracy"])
        if "per_record_fluency" in default and "per_record_fluency" in result:
            result["fluency_vs_default"] = paired_against(default["per_record_fluency"], result["per_record_fluency"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/zsre-eval-1037.json"))
    parser.add_argument("--records", default="1000:1037,0:40", help="comma-separated start:end slices")
    parser.add_argument("--output", type=Path, default=RESULTS / "lora_robustness.json")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset; results for other variants already in --output are kept")
    parser.add_argument("--fluency-tokens", type=int, default=0,
                        help="also generate N tokens from each prompt with the LoRA on, and score their n-gram entropy")
    parser.add_argument("--pair-only", action="store_true",
                        help="only recompute each variant's paired difference to the default fit in --output")
    args = parser.parse_args()
    if args.pair_only:
        document = json.loads(args.output.read_text())
        document["variants"] = with_pairing(document["variants"])
        args.output.write_text(json.dumps(document, indent=1))
        return
    chosen = args.variants.split(",")
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    torch.set_num_threads(1)
    records = json.loads(args.data.read_text())
    spans = [tuple(int(x) for x in span.split(":")) for span in args.records.split(",")]
    sample = [records[i] for start, end in spans for i in range(start, end)]
    model, tokenizer, _ = load_base(None)
    routed = RoutedModel(model, tokenizer, RoutingConfig())
    plain = routed_module._ReplayInput.forward
    results = {}
    if args.fluency_tokens:
        texts, _ = routed.generate([record["src"] for record in sample], max_new_tokens=args.fluency_tokens)
        results["base_model"] = {"fluency": statistics.mean(ngram_entropy(t) for t in texts), "examples": texts[:5]}
    for name in chosen:
        config, sigma = VARIANTS[name]
        routed_module._ReplayInput.forward = noisy_replay(sigma, torch.Generator().manual_seed(0))
        accuracies, successes, seconds, steps, fluencies, examples = [], [], [], [], [], []
        try:
            for record in sample:
                trained = train_edit(routed, record["src"], record["alt"], config=config)
                with torch.no_grad(), routed.layer.training_adapter(trained.lora_a, trained.lora_b):
                    logits, encoded, _ = routed.score(record["rephrase"], record["alt"])
                    own, own_encoded, _ = routed.score(record["src"], record["alt"])
                    if args.fluency_tokens:
                        [text], _ = routed.generate([record["src"]], max_new_tokens=args.fluency_tokens)
                        fluencies.append(ngram_entropy(text))
                        examples.append(text)
                accuracies.append((logits.argmax(-1) == encoded.target_ids).float().mean().item())
                successes.append(float(bool((own.argmax(-1) == own_encoded.target_ids).all())))
                seconds.append(trained.seconds)
                steps.append(trained.steps)
        finally:
            routed_module._ReplayInput.forward = plain
        results[name] = {"sigma": sigma, "training": config.to_dict(), "paraphrase_token_accuracy": statistics.mean(accuracies),
                         "edit_success": statistics.mean(successes), "median_seconds": statistics.median(seconds),
                         "median_steps": statistics.median(steps), "per_record_accuracy": accuracies}
        if fluencies:
            results[name].update(fluency=statistics.mean(fluencies), per_record_fluency=fluencies, examples=examples[:5])
        print(name, {k: v for k, v in results[name].items() if not k.startswith("per_record")}, file=sys.stderr, flush=True)
    command = " ".join(["OMP_NUM_THREADS=1", ".venv/bin/python", "benchmarks/lora_robustness.py", *sys.argv[1:]])
    for name in chosen:
        results[name]["command"] = command
    # read what is there only now, so two runs with different --variants can share one output
    earlier = json.loads(args.output.read_text()) if args.output.exists() else {}
    if earlier.get("data") == str(args.data) and earlier.get("records") == args.records:
        results = {**earlier["variants"], **results}
    document = {"command": command,
                "data": str(args.data), "records": args.records, "n": len(sample), "threads": 1, "variants": with_pairing(results)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
