"""Inference overhead of the routed model against the plain base model, with 0, 1k and 10k active edits.

    .venv/bin/python benchmarks/overhead.py --prompts 40 --repeats 3

Synthetic edits (random unit keys, random rank-4 LoRA tensors of the real shapes) fill an
EditBank searched by the registry's FAISS index, so routing does its full work per sequence;
prompts are real CounterFact prompts and never match a synthetic key, plus one in ten routed to
a real-shaped LoRA by planting its key, so the LoRA path is timed too. Base and routed forward
passes alternate in one run on the same prompts, so machine noise hits both equally.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from registry.keyindex import FaissKeySearch
from sola.config import RoutingConfig
from sola.data import read_benchmark
from sola.layer import EditBank
from sola.modelio import load_base
from sola.routed import RoutedModel
from sola.train import routing_key

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact-1k.json"


def synthetic_bank(n_edits: int, dim: int, out: int, rank: int, planted: dict[str, torch.Tensor], seed: int = 0) -> EditBank:
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(n_edits, dim)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    names = [f"synthetic-{i}" for i in range(n_edits)]
    for name, key in planted.items():
        keys = np.vstack([keys, key.numpy()[None]])
        names.append(name)
    ids = np.arange(len(names), dtype=np.int64)
    lora_a = torch.from_numpy(rng.normal(size=(rank, dim)).astype(np.float32) * 0.02)
    lora_b = torch.from_numpy(rng.normal(size=(out, rank)).astype(np.float32) * 0.02)
    return EditBank(FaissKeySearch.build(keys, ids, dim), dict(zip(ids.tolist(), names)), lambda _edit: (lora_a, lora_b))


def time_forward(routed: RoutedModel, ids: torch.Tensor) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        routed.model(input_ids=ids, use_cache=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 1000, 10000])
    parser.add_argument("--layer", type=int, default=RoutingConfig.layer)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, identity = load_base(None)
    routed = RoutedModel(model, tokenizer, RoutingConfig(layer=args.layer))
    _, requests = read_benchmark(DATA, args.prompts)
    prompts = [r.prompt for r in requests]
    planted = {f"planted-{i}": routing_key(routed, p) for i, p in enumerate(prompts[::10])}
    encoded = [routed.encode(p).input_ids for p in prompts]
    results = []
    for size in args.sizes:
        bank = synthetic_bank(size, routed.layer.in_features, routed.layer.out_features, routed.config.rank, planted if size else {})
        base_times, routed_times = [], []
        for _ in range(args.repeats):
            for ids in encoded:
                routed.set_bank(EditBank.empty())
                base_times.append(time_forward(routed, ids))
                routed.set_bank(bank)
                routed_times.append(time_forward(routed, ids))
        ratio = sum(routed_times) / sum(base_times)
        results.append({"active_edits": size + (len(planted) if size else 0), "base_ms_median": 1000 * statistics.median(base_times),
                        "routed_ms_median": 1000 * statistics.median(routed_times), "ratio_total": ratio})
        print(json.dumps(results[-1]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    document = {"model": identity.to_dict(), "routing": routed.config.to_dict(), "threads": args.threads, "prompts": len(prompts),
                "repeats": args.repeats, "results": results}
    (RESULTS / "overhead.json").write_text(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
