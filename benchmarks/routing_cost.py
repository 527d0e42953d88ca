"""Routing cost at 10k edits: a routed forward pass against the plain base forward pass.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/routing_cost.py --prompts 40 --repeats 3 --edits 10000

For each key function (mean, subject) the bank holds `--edits` keys shaped like real ones: the
keys of 200 real CounterFact prompts (sola.train.routing_key, with their subjects) and mixtures
of two of them (each part renormalised), searched by the registry's own index
(registry.keyindex.FaissKeySearch: flat, and IVF as a registry builds it from 10k keys on).
Each routed forward runs inside `RoutedModel.routing_call`, so the query is built from the
prefill's own activations and the two-stage subject search (registry.routing.nearest_subject)
runs in full; base and routed passes alternate on the same paraphrase prompts so machine
noise hits both alike. Also timed: the one-stage exact score over every key (what the
two-stage search avoids). Results: benchmarks/results/routing_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from registry.keyindex import FaissKeySearch, lists_for, nearest_lists, train_centroids
from registry.routing import PROJECT_FROM, PROJECTED_DIMS, SubjectIndex, subject_similarity
from sola.config import RoutingConfig
from sola.data import read_benchmark
from sola.layer import EditBank, RoutingScope
from sola.modelio import load_base
from sola.routed import RoutedModel, start_token_for
from sola.train import routing_key

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact-1k.json"


def realistic_keys(real: np.ndarray, n: int, parts: int, seed: int = 0) -> np.ndarray:
    """`n` keys: the real ones, then mixtures of two real keys with each part renormalised."""
    rng = np.random.default_rng(seed)
    out = [real]
    width = real.shape[1] // parts
    while sum(len(x) for x in out) < n:
        a, b = real[rng.integers(0, len(real), 256)], real[rng.integers(0, len(real), 256)]
        w = rng.uniform(0.3, 0.7, size=(256, 1)).astype(np.float32)
        mix = w * a + (1 - w) * b
        mix = np.concatenate([p / np.linalg.norm(p, axis=1, keepdims=True) for p in np.split(mix, parts, axis=1)], axis=1) / np.sqrt(parts)
        out.append(mix.astype(np.float32))
    return np.concatenate(out)[:n]


def index_for(keys: np.ndarray, ivf: bool) -> FaissKeySearch:
    ids = np.arange(len(keys), dtype=np.int64)
    if not ivf:
        return FaissKeySearch.build(keys, ids, keys.shape[1])
    nlist = lists_for(len(keys))
    centroids = train_centroids(keys[:: max(1, len(keys) // (32 * nlist))], nlist)
    groups, _ = nearest_lists(keys, centroids)
    return FaissKeySearch.build(keys, ids, keys.shape[1], (centroids, groups))


def first_stage_agreement(routed: RoutedModel, requests, keys: np.ndarray, count: int) -> dict[str, float]:
    """How often the two-stage search finds the exact nearest key (the two-part score over every
    key), with the full first stage and with the projected one the index uses from
    PROJECT_FROM keys on; over the first records' prompts and paraphrases."""
    ids = np.arange(len(keys), dtype=np.int64)
    full, projected = SubjectIndex(ids, keys, project_from=len(keys) + 1), SubjectIndex(ids, keys, project_from=0)
    texts = [t for r in requests for t in (r.prompt, *r.rephrases[:1])][:count]
    same_full = same_projected = 0
    for text in texts:
        query = routed.query_of(text)
        exact = int(subject_similarity(query, keys).argmax())
        same_full += int(full.nearest([query])[1][0]) == exact
        same_projected += int(projected.nearest([query])[1][0]) == exact
    return {"queries": len(texts), "full_first_stage": same_full / len(texts), "projected_first_stage": same_projected / len(texts)}


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--edits", type=int, default=10_000)
    parser.add_argument("--name", default="routing_cost")
    parser.add_argument("--key-functions", default="mean,subject")
    parser.add_argument("--agreement-queries", type=int, default=200,
                        help="subject: prompts + paraphrases whose nearest key the projected and full first stages must agree on")
    parser.add_argument("--full-first-stage", action="store_true",
                        help="the baseline: banks never project the first stage, whatever their size")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--no-name-ends", action="store_true", help="subject queries with every token and window (RoutingConfig.name_ends off)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # the baseline lays every bank out with a full first stage, whatever its size
    project_from = args.edits + 1 if args.full_first_stage else PROJECT_FROM
    _, requests = read_benchmark(DATA, 200)
    probes = [r.rephrases[0] for r in requests[: args.prompts]]
    results = []
    for key_function in args.key_functions.split(","):
        model, tokenizer, identity = load_base(None)
        settings = {"key_function": key_function}
        if key_function == "subject":
            settings.update(key_layers=[4, 3], start_token=start_token_for(tokenizer), name_ends=not args.no_name_ends)
        routed = RoutedModel(model, tokenizer, RoutingConfig.from_dict(settings))
        real = np.stack([routing_key(routed, r.prompt, r.subject).numpy() for r in requests])
        keys = realistic_keys(real, args.edits, 2 if key_function == "subject" else 1)
        rng = np.random.default_rng(1)
        lora = (torch.from_numpy(rng.normal(size=(4, routed.layer.in_features)).astype(np.float32) * 0.02),
                torch.from_numpy(rng.normal(size=(routed.layer.out_features, 4)).astype(np.float32) * 0.02))
        encoded = [routed.encode(p).input_ids for p in probes]
        for ivf in (False, True):
            search = index_for(keys, ivf)
            # the subject layout a bank would build on first use (EditBank.decide), built here
            # so the baseline can choose its first stage
            layout = SubjectIndex(*search.vectors(), project_from=project_from) if key_function == "subject" else None
            bank = EditBank(search, {i: f"e{i}" for i in range(len(keys))}, lambda _edit: lora, _subject_index=layout)

            def base_pass(ids: torch.Tensor) -> None:
                with torch.no_grad(), routed.routing_call(RoutingScope(), EditBank.empty()):
                    routed.model(input_ids=ids, use_cache=False)

            fired = []

            def routed_pass(ids: torch.Tensor) -> None:
                scope = routed.scope(ids)  # what the key function needs of the tokens (name ends), as every call builds it
                with torch.no_grad(), routed.routing_call(scope, bank):
                    routed.model(input_ids=ids, use_cache=False)
                fired.append(scope.decision.edits[0] is not None)

            routed_pass(encoded[0])  # warm-up: a bank lays its subject keys out once, on first use
            fired.clear()
            base_times, routed_times = [], []
            for _ in range(args.repeats):
                for ids in encoded:
                    base_times.append(timed(lambda: base_pass(ids)))
                    routed_times.append(timed(lambda: routed_pass(ids)))
            row = {"key_function": key_function, "index": "ivf" if ivf else "flat", "edits": len(keys),
                   "base_ms_median": round(1000 * statistics.median(base_times), 3),
                   "routed_ms_median": round(1000 * statistics.median(routed_times), 3),
                   "ratio_total": round(sum(routed_times) / sum(base_times), 4),
                   "ratio_paired_median": round(statistics.median(r / b for r, b in zip(routed_times, base_times)), 4),
                   "fired_share": round(float(np.mean(fired)), 3)}
            if key_function == "subject" and not ivf:  # what a one-stage exact score over every key costs
                queries = [routed.layer.queries(routed.capture_keys(ids), None, routed.name_ends(ids, None))[0] for ids in encoded]
                exhaustive = [timed(lambda: subject_similarity(q, keys)) for q in queries]
                row["one_stage_exact_ms_median"] = round(1000 * statistics.median(exhaustive), 3)
                row["agreement"] = first_stage_agreement(routed, requests, keys, args.agreement_queries)
            results.append(row)
            print(json.dumps(row), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    document = {"model": identity.to_dict(), "threads": 1, "prompts": len(probes), "repeats": args.repeats,
                "load": os.getloadavg(), "note": args.note, "full_first_stage": args.full_first_stage,
                "name_ends": not args.no_name_ends,
                "projected_dims": None if args.full_first_stage else PROJECTED_DIMS, "results": results}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
