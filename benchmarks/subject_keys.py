"""Routing study for subject keys vs the mean key, through the product's own code paths.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/subject_keys.py --n 1000 --name subject_keys

For CounterFact, zsRE and a mixed bank (first n/2 of each), every record's prompt becomes a
stored key (`sola.train.routing_key`, with the record's subject) and its paraphrase a query
(`RoutedLoRA.queries` on `RoutedModel.capture_keys`: the very query generation routes by).
The routing rule (`registry.routing`: nearest key, radius min(threshold, ratio x isolation))
is evaluated over a grid; per point:

- recall: share of paraphrases that fire their own edit
- false_fire: share of unrelated probes that fire any edit (the records' locality prompts and
  known-1000 prompts, minus those naming an edited subject)
- relation_fire: share of other-relation probes of edited subjects (sola/probes.py) that fire
- locality_fire: share of the records' own locality prompts that fire any edit, none left out
  (the prompts `sola eval`'s unrelated locality scores; a fired one nearly always changes)

Routing only: whether the LoRA then produces the target is `sola eval`'s business. Never reads
../shared/holdout. Results: benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from registry.routing import ExactKeySearch, RoutingRule, decide, isolation
from sola.arch import routing_defaults
from sola.config import RoutingConfig
from sola.data import read_benchmark
from sola.modelio import load_base
from sola.probes import relation_probes
from sola.routed import RoutedModel
from sola.subjects import infer_subject
from sola.train import routing_key

sys.path.insert(0, str(Path(__file__).resolve().parent))
from value_side import start_token_choice  # noqa: E402  (one reading of --start-token for every study)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
THRESHOLDS = [0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.2, 0.22, 0.25]
RATIOS = [0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]


def queries_of(routed: RoutedModel, prompts: list[str], cache: dict) -> list:
    """The routing query of each prompt, as the routed layer makes it at prefill (cached by text)."""
    for prompt in prompts:
        if prompt not in cache:
            states = routed.capture_keys(routed.encode(prompt).input_ids)
            cache[prompt] = routed.layer.queries(states, None)[0]
    return [cache[p] for p in prompts]


def nearest(search: ExactKeySearch, key_edit: dict[int, str], queries: list) -> tuple[np.ndarray, list[str | None], np.ndarray]:
    """(distance, nearest edit, that key's isolation) per query, via registry.routing.decide."""
    batch = np.stack(queries) if isinstance(queries[0], np.ndarray) else list(queries)
    routing = decide(search, key_edit, frozenset(), batch, RoutingRule(2.0, 0.0, 0.0))
    iso_cache: dict[int, float] = {}
    isolations = []
    edit_key = {}
    for key_id, edit in key_edit.items():
        edit_key.setdefault(edit, key_id)
    for edit in routing.nearest:
        key_id = edit_key[edit]
        if key_id not in iso_cache:
            iso_cache[key_id] = isolation(search, key_edit, key_id)
        isolations.append(iso_cache[key_id])
    return np.array(routing.distances), routing.nearest, np.array(isolations)


def study(routed: RoutedModel, banks: dict[str, list], known: list[dict], infer: bool = False) -> dict:
    """`infer`: every stored key is read from the subject sola.subjects infers from the prompt
    (as for an edit that names none), the records' own subjects serving the probes only."""
    out: dict = {}
    cache: dict = {}
    key_cache: dict = {}
    for name, requests in banks.items():
        started = time.perf_counter()
        for r in requests:
            if (r.prompt, r.subject) not in key_cache:
                subject = (infer_subject(r.prompt) if infer else None) or r.subject
                key_cache[(r.prompt, r.subject)] = routing_key(routed, r.prompt, subject).numpy()
        keys = np.stack([key_cache[(r.prompt, r.subject)] for r in requests])
        edits = [f"e{i}" for i in range(len(requests))]
        key_edit = dict(enumerate(edits))
        search = ExactKeySearch(keys, np.arange(len(keys)))
        subjects = {r.subject.lower() for r in requests if r.subject}
        unrelated = [r.locality_prompt for r in requests if r.locality_prompt]
        unrelated += [k["prompt"] for k in known]
        unrelated = [p for p in unrelated if not any(s in p.lower() for s in subjects)]
        probes = relation_probes(requests)
        para = [(i, r.rephrases[0]) for i, r in enumerate(requests) if r.rephrases]
        locality = [r.locality_prompt for r in requests if r.locality_prompt]
        groups = {"paraphrase": [p for _, p in para], "unrelated": unrelated, "relation": [p.prompt for p in probes],
                  "locality": locality}
        measured = {g: nearest(search, key_edit, queries_of(routed, prompts, cache)) for g, prompts in groups.items()}
        own = np.array([edits[i] for i, _ in para])
        grid = []
        for ratio in RATIOS:
            for threshold in THRESHOLDS:
                def fires(group: str) -> np.ndarray:
                    distance, _, iso = measured[group]
                    radius = np.minimum(threshold, ratio * iso) if ratio > 0 else np.full(len(distance), threshold)
                    return distance < radius
                recall = float((fires("paraphrase") & (np.array(measured["paraphrase"][1]) == own)).mean())
                grid.append({"threshold": threshold, "radius_ratio": ratio, "recall": recall,
                             "false_fire": float(fires("unrelated").mean()), "relation_fire": float(fires("relation").mean()),
                             "locality_fire": float(fires("locality").mean())})
        ok = [g for g in grid if g["false_fire"] <= 0.01]
        best = max(ok, key=lambda g: g["recall"]) if ok else None
        out[name] = {"n_edits": len(requests), "n_paraphrases": len(para), "n_unrelated": len(unrelated), "n_relation": len(probes),
                     "grid": grid, "best_at_1pct_false_fire": best, "seconds": round(time.perf_counter() - started, 1)}
        print(f"{name}: best at <=1% false fire {best}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="edits per bank (mixed: n/2 of each)")
    parser.add_argument("--name", default="subject_keys")
    parser.add_argument("--key-functions", default="mean,subject")
    parser.add_argument("--banks", default="counterfact,zsre,mixed", help="which banks to study, comma-separated")
    parser.add_argument("--infer-subjects", action="store_true",
                        help="key every edit on the subject inferred from its prompt (sola.subjects), not the record's")
    parser.add_argument("--start-token", default="registry",
                        help="subject keys' start token: registry (what `sola init --key-function subject` "
                             "records), none, or a token id")
    parser.add_argument("--key-layers", default="4,3", help="subject keys' token block and span block (DESIGN.md 3b: 4,3 on SmolLM2)")
    parser.add_argument("--model", default=None, help="a model spec as `sola init --model` takes it (default: the bundled SmolLM2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base, tokenizer, identity = load_base(args.model)
    _, counterfact = read_benchmark(DATA / "counterfact-1k.json", args.n)
    _, zsre = read_benchmark(DATA / "zsre-eval-1037.json", args.n)
    mixed = [r for pair in zip(zsre[: args.n // 2], counterfact[: args.n // 2]) for r in pair]
    known = json.loads((DATA / "known-1000.json").read_text())
    banks = {name: bank for name, bank in {"counterfact": counterfact, "zsre": zsre, "mixed": mixed}.items()
             if name in args.banks.split(",")}
    results = {"protocol": {"n": args.n, "model": identity.to_dict(), "thresholds": THRESHOLDS, "ratios": RATIOS,
                            "load": os.getloadavg(), "threads": 1,
                            "note": "other sessions were running on the same 2-core machine"}}
    for key_function in args.key_functions.split(","):
        settings = {"key_function": key_function, "layer": routing_defaults(base, key_function)["layer"]}
        if key_function == "subject":  # the rest of the rule is the grid's
            settings.update(key_layers=[int(b) for b in args.key_layers.split(",")], start_token=start_token_choice(base, tokenizer, args.start_token))
        config = RoutingConfig.from_dict(settings)
        routed = RoutedModel(base, tokenizer, config) if key_function == args.key_functions.split(",")[0] else None
        if routed is None:  # a fresh copy of the model: attach wraps one layer per model
            base2, tokenizer2, _ = load_base(args.model)
            routed = RoutedModel(base2, tokenizer2, config)
        print(f"key function {key_function}: {config.to_dict()}", flush=True)
        results[key_function] = {"routing": config.to_dict(), "banks": study(routed, banks, known, args.infer_subjects),
                                 "inferred_subjects": args.infer_subjects}
        results["protocol"]["git"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        RESULTS.mkdir(exist_ok=True)  # after each key function, so a long run keeps what it measured
        (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=1))
        print(f"wrote {RESULTS / (args.name + '.json')}", flush=True)


if __name__ == "__main__":
    main()
