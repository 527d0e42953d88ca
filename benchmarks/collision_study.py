"""Collision stress: when many edits crowd one neighbourhood, does a query fire exactly the right edit?

Protocol
--------
Keys are computed by the product's own path (`sola.train.routing_key`: the input of the edited
module over the prompt, pooled with the registry's key function, L2-normalised) at the default
routing config; routing is `sola.layer.RoutedLoRA.route`'s rule: the nearest key fires when its
cosine distance is strictly below the threshold.

Bank (every record's edit prompt is one stored key):
  zsRE        all 1037 `src` questions of zsre-eval-1037.json
  CounterFact all 1000 `prompt`s of counterfact-1k.json
  crowded     the above plus the 1209 prompts of known-1000.json (ROME): more keys of the very same
              relation templates, as a registry that has absorbed a whole knowledge base would hold.
Dense neighbourhoods:
  same subject   zsRE records sharing a `subject` (167 subjects cover 456 of the first 1000 records:
                 several questions about one entity, and one question restated with different targets)
  same relation  CounterFact prompts sharing a relation template (the prompt with its subject removed:
                 "{} plays", "{} is located in", up to 26 records per template)
Queries and the right answer:
  zsRE paraphrase (`rephrase`)     its own record's edit
  CounterFact locality prompt      nothing (another subject with the same relation template)
  zsRE locality question (`loc`)   nothing (an unrelated Natural Questions question)
  each edit prompt itself           its own edit (distance 0; fails only on identical prompts)
Metrics per threshold:
  routing precision   of the positive queries that fire an edit, the share firing exactly the right one
  routing recall      share of positive queries that fire exactly the right one (= routing generalisation)
  restatement capture share of zsRE paraphrases that fire another record about the same subject
  false fire          share of CounterFact locality prompts that fire any edit (zsRE `loc`: false_fire_zsre_loc)
Precision and recall are also broken down by neighbourhood size (how many bank records share the
query's subject / template).

Reproduce:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/collision_study.py [--model gemma3 [--layer L]]
Writes benchmarks/results/collision_study.json and collision_study.png. Never reads ../shared/holdout.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def product_keys(prompts: list[str], cache: Path, model_spec: str | None = None, layer: int | None = None) -> np.ndarray:
    """Routing keys (n, d) of `prompts` at the model family's default routing config (`sola init`'s;
    `layer` overrides its layer), cached by prompt list and model."""
    import torch

    from sola.arch import routing_defaults
    from sola.config import RoutingConfig
    from sola.modelio import load_base
    from sola.routed import RoutedModel
    from sola.train import routing_key

    torch.set_num_threads(1)
    model, tokenizer, identity = load_base(model_spec)
    config = RoutingConfig.from_dict({**routing_defaults(model), **({} if layer is None else {"layer": layer})})
    tag = f"{identity.sha256[:12]}-L{config.layer}-{config.key_function}-{len(prompts)}"
    path = cache / f"keys-{tag}.npz"
    if path.is_file():
        stored = np.load(path)
        if list(stored["prompts"]) == prompts:
            return stored["keys"]
    routed = RoutedModel(model, tokenizer, config)
    keys, started = [], time.time()
    with torch.no_grad():
        for done, prompt in enumerate(prompts, start=1):
            keys.append(routing_key(routed, prompt).numpy())
            if done % 500 == 0 or done == len(prompts):
                print(f"keys: {done}/{len(prompts)} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, keys=np.stack(keys), prompts=np.array(prompts))
    return np.stack(keys)


def nearest(queries: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and cosine distance to the nearest bank key, as the routed layer computes it."""
    sims = queries @ bank.T
    index = sims.argmax(1)
    return index, np.maximum(0.0, 1.0 - sims[np.arange(len(queries)), index])


def neighbourhood_sizes(labels: list[str]) -> np.ndarray:
    counts = collections.Counter(labels)
    return np.array([counts[label] for label in labels])


def size_bucket(size: int) -> str:
    return "1" if size == 1 else "2-3" if size <= 3 else "4-9" if size <= 9 else "10+"


def study(zsre: list[dict], counterfact: list[dict], keys: dict[str, np.ndarray], crowded: bool, grid: np.ndarray) -> dict:
    """Routing outcomes at every threshold for one bank (plain or crowded)."""
    parts = [keys["zsre_src"], keys["cf_prompt"]] + ([keys["known_prompt"]] if crowded else [])
    bank = np.concatenate(parts)
    n_z = len(zsre)
    subjects = [r["subject"] for r in zsre]
    templates = [r["prompt"].replace(r["subject"], "{}") for r in counterfact]
    subject_size, template_size = neighbourhood_sizes(subjects), neighbourhood_sizes(templates)

    para_index, para_dist = nearest(keys["zsre_rephrase"], bank)
    own = np.arange(n_z)
    right = para_index == own
    same_subject = np.array([j < n_z and j != i and subjects[j] == subjects[i] for i, j in enumerate(para_index)])
    loc_index, loc_dist = nearest(keys["cf_locality"], bank)
    _, zsre_loc_dist = nearest(keys["zsre_loc"], bank)
    self_index, _ = nearest(np.concatenate([keys["zsre_src"], keys["cf_prompt"]]), bank)
    self_right = self_index == np.arange(len(self_index))

    curve = []
    for t in grid:
        fired = para_dist < t
        hit = fired & right
        curve.append({
            "threshold": float(t),
            "precision": float(hit.sum() / max(fired.sum(), 1)),
            "recall": float(hit.mean()),
            "restatement_capture": float((fired & same_subject).mean()),
            "false_fire": float((loc_dist < t).mean()),
            "false_fire_zsre_loc": float((zsre_loc_dist < t).mean()),
            "by_subject_size": {
                bucket: {"n": int(m.sum()), "precision": float(hit[m].sum() / max(fired[m].sum(), 1)), "recall": float(hit[m].mean())}
                for bucket in ("1", "2-3", "4-9", "10+")
                if (m := np.array([size_bucket(s) == bucket for s in subject_size])).any()
            },
            "false_fire_by_template_size": {
                bucket: {"n": int(m.sum()), "false_fire": float((loc_dist[m] < t).mean())}
                for bucket in ("1", "2-3", "4-9", "10+")
                if (m := np.array([size_bucket(s) == bucket for s in template_size])).any()
            },
        })
    return {
        "bank_keys": int(len(bank)),
        "self_query_precision": float(self_right.mean()),
        "self_query_misses": [int(i) for i in np.flatnonzero(~self_right)],
        "paraphrase_nearest_is_own": float(right.mean()),
        "paraphrase_nearest_is_same_subject": float(same_subject.mean()),
        "curve": curve,
    }


def plot(results: dict, path: Path, marks: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 6.2))
    for name, style in (("plain", "-"), ("crowded", "--")):
        curve = results[name]["curve"]
        ts = [c["threshold"] for c in curve]
        for metric, colour in (("precision", "C0"), ("recall", "C1"), ("restatement_capture", "C2"), ("false_fire", "C3"), ("false_fire_zsre_loc", "C4")):
            left.plot(ts, [c[metric] for c in curve], style, color=colour, label=f"{metric} ({name}, {results[name]['bank_keys']} keys)")
    for t in marks:
        left.axvline(t, color="k", lw=0.7, ls=":")
    left.set(xlabel="threshold (cosine distance)", ylabel="share", title="zsRE paraphrases / CounterFact locality prompts vs threshold", ylim=(0, 1.02))
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    left.grid(alpha=0.3)
    curve = results["crowded"]["curve"]
    ts = [c["threshold"] for c in curve]
    for bucket in ("1", "2-3", "4-9", "10+"):
        if bucket in curve[0]["by_subject_size"]:
            n = curve[0]["by_subject_size"][bucket]["n"]
            right.plot(ts, [c["by_subject_size"][bucket]["precision"] for c in curve], label=f"precision, {bucket} records per subject (n={n})")
            right.plot(ts, [c["by_subject_size"][bucket]["recall"] for c in curve], ls="--", color=right.lines[-1].get_color())
    for t in marks:
        right.axvline(t, color="k", lw=0.7, ls=":")
    right.set(xlabel="threshold", ylabel="share (solid precision, dashed recall)", title="crowded bank, by neighbourhood size (same subject)", ylim=(0, 1.02))
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def study_keys(cache_dir: Path, model_spec: str | None = None, layer: int | None = None) -> tuple[list[dict], list[dict], dict[str, np.ndarray]]:
    """The zsRE and CounterFact records and the keys of every prompt group the routing studies
    use (zsRE questions, paraphrases and locality questions; CounterFact prompts and locality
    prompts; known-1000 prompts), float64 for exact distances, cached in `cache_dir`."""
    zsre = json.loads((DATA / "zsre-eval-1037.json").read_text())
    counterfact = json.loads((DATA / "counterfact-1k.json").read_text())
    known = json.loads((DATA / "known-1000.json").read_text())
    groups = {
        "zsre_src": [r["src"] for r in zsre], "zsre_rephrase": [r["rephrase"] for r in zsre],
        "cf_prompt": [r["prompt"] for r in counterfact], "cf_locality": [r["locality_prompt"] for r in counterfact],
        "known_prompt": [r["prompt"] for r in known], "zsre_loc": [r["loc"] for r in zsre],
    }
    flat = [p for prompts in groups.values() for p in prompts]
    every_key = product_keys(flat, cache_dir, model_spec, layer)
    keys, offset = {}, 0
    for name, prompts in groups.items():
        keys[name] = every_key[offset: offset + len(prompts)].astype(np.float64)
        offset += len(prompts)
    return zsre, counterfact, keys


def study_arguments(doc: str, extra=None) -> argparse.Namespace:
    """The command line shared by the routing studies: where keys are cached, where results go
    (`extra(parser)` adds a study's own options)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    if extra is not None:
        extra(parser)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/sola_collision_study"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--model", default=None, help="base model spec as for `sola init --model` (default: the bundled SmolLM2); "
                                                       "results are written as <study>-<model>.json")
    parser.add_argument("--layer", type=int, default=None, help="edited block (default: the model family's)")
    return parser.parse_args()


def result_name(study: str, args: argparse.Namespace) -> str:
    """`study` for the default model at its default layer, else `study-<model>[-L<layer>]`."""
    suffix = "" if args.model is None else f"-{args.model}"
    return study + suffix + ("" if args.layer is None else f"-L{args.layer}")


def main() -> None:
    args = study_arguments(__doc__)

    from sola.config import RoutingConfig

    zsre, counterfact, keys = study_keys(args.cache_dir, args.model, args.layer)
    name = result_name("collision_study", args)

    grid = np.round(np.arange(0.005, 0.2001, 0.005), 4)
    default = RoutingConfig().threshold
    results = {"protocol": __doc__, "default_threshold": default,
               "plain": study(zsre, counterfact, keys, False, grid),
               "crowded": study(zsre, counterfact, keys, True, grid)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / f"{name}.png", [default, 0.12])
    for name in ("plain", "crowded"):
        r = results[name]
        print(f"{name}: {r['bank_keys']} keys, self-query precision {r['self_query_precision']:.4f}, "
              f"paraphrase nearest own {r['paraphrase_nearest_is_own']:.3f}, same-subject {r['paraphrase_nearest_is_same_subject']:.3f}")
        for c in r["curve"]:
            if c["threshold"] in (default, 0.08, 0.12):
                print(f"  t={c['threshold']}: precision {c['precision']:.3f} recall {c['recall']:.3f} "
                      f"restatement {c['restatement_capture']:.3f} false fire CF {c['false_fire']:.3f} zsRE {c['false_fire_zsre_loc']:.3f} "
                      f"by subject size {json.dumps({k: round(v['precision'], 3) for k, v in c['by_subject_size'].items()})}")


if __name__ == "__main__":
    main()
