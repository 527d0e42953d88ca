"""Per-edit radius study: can a key's own neighbourhood set its routing radius?

Question
--------
With one global threshold T, CounterFact locality prompts (another subject, same relation
template) fire some edit more often as the bank grows (results.md section 2b: locality 1.00 at
100 edits, 0.973 at 1000). A template-crowded key has close neighbours in the bank itself, so
a radius that shrinks with the distance to the key's nearest other active key might refuse
those false fires while keeping the full radius for isolated facts.

Rules compared (routing only; keys by the product's path, `benchmarks/collision_study.py`):
  global   nearest key i fires when d(q, k_i) < T
  ratio    nearest key i fires when d(q, k_i) < min(T, alpha * nn_i), nn_i = cosine distance from
           k_i to the nearest *other* key of the bank (so it follows revokes and restores)
  margin   nearest key i fires when d1 = d(q, k_i) < T and d1 < rho * d2, d2 = distance from q to
           its second-nearest key (Lowe's ratio test: refuse a query that is nearly as close to
           another key; an edit's own prompt, d1 = 0, always fires)

Banks and queries:
  counterfact   the first N CounterFact prompts; negatives = their locality prompts,
                positives = their rephrase prompts (right answer: own edit)
  mixed         all 1037 zsRE questions + 1000 CounterFact prompts; positives = zsRE
                paraphrases, negatives = CounterFact locality prompts
Headline: the best positive recall (generalisation) among settings whose negative false-fire
rate is <= 0.01 (locality >= 0.99 at routing level), per rule.

`--pools FILE --pools-layer L` reads the keys instead from a routing_study activation cache
(`pools_<model>_n<N>_L<layers>.npz`: the mean keys of the first N CounterFact and zsRE records'
edit, paraphrase and locality prompts at each studied layer, checked there against the product's
keys): the same rules on banks of N CounterFact and N + N mixed keys, without computing the 7,300
keys of the full study (about 40 minutes at 1 thread for Gemma 3 on a busy machine).

Reproduce:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/radius_study.py [--model gemma3 [--layer L]]   (keys cached with collision_study)
            OMP_NUM_THREADS=1 .venv/bin/python benchmarks/radius_study.py --model gemma3 --pools /tmp/sola_routing_study/pools_gemma3_n400_L2-4-6-8-10-12-14.npz --pools-layer 12
Writes benchmarks/results/radius_study.json and radius_study.png. Never reads ../shared/holdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collision_study import product_keys, result_name, study_arguments, study_keys  # noqa: E402

THRESHOLDS = np.round(np.arange(0.005, 0.2001, 0.005), 4)
ALPHAS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.5]
RHOS = [0.3, 0.5, 0.7, 0.8, 0.9]
MAX_FALSE_FIRE = 0.01


def nearest_other(bank: np.ndarray) -> np.ndarray:
    """Cosine distance from each bank key to its nearest other bank key."""
    sims = bank @ bank.T
    np.fill_diagonal(sims, -np.inf)
    return np.maximum(0.0, 1.0 - sims.max(1))


def two_nearest(queries: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index of the nearest bank key, the cosine distance to it and to the second nearest."""
    sims = queries @ bank.T
    order = np.argsort(-sims, axis=1)[:, :2]
    rows = np.arange(len(queries))
    return order[:, 0], np.maximum(0.0, 1.0 - sims[rows, order[:, 0]]), np.maximum(0.0, 1.0 - sims[rows, order[:, 1]])


def sweep(bank: np.ndarray, positives: np.ndarray, right: np.ndarray, negatives: np.ndarray) -> list[dict]:
    """Recall of positives (nearest is `right` and fires) and false-fire rate of negatives,
    for every (rule, T, alpha or rho)."""
    nn = nearest_other(bank)
    pos_index, pos_dist, pos_second = two_nearest(positives, bank)
    neg_index, neg_dist, neg_second = two_nearest(negatives, bank)
    rows = []

    def record(rule: str, t: float, parameter: float | None, fires_pos: np.ndarray, fires_neg: np.ndarray) -> None:
        rows.append({"rule": rule, "threshold": float(t), "alpha": parameter,
                     "recall": float((fires_pos & (pos_index == right)).mean()), "false_fire": float(fires_neg.mean())})

    for t in THRESHOLDS:
        record("global", t, None, pos_dist < t, neg_dist < t)
        for alpha in ALPHAS:
            radius = np.minimum(t, alpha * nn)
            record("ratio", t, alpha, pos_dist < radius[pos_index], neg_dist < radius[neg_index])
        for rho in RHOS:
            record("margin", t, rho, (pos_dist < t) & (pos_dist < rho * pos_second), (neg_dist < t) & (neg_dist < rho * neg_second))
    return rows


def best(rows: list[dict], rule: str) -> dict:
    allowed = [r for r in rows if r["rule"] == rule and r["false_fire"] <= MAX_FALSE_FIRE]
    return max(allowed, key=lambda r: (r["recall"], r["threshold"])) if allowed else {}


def summary(rows: list[dict]) -> dict:
    return {"rows": rows, **{f"best_{rule}": best(rows, rule) for rule in ("global", "ratio", "margin")}}


def json_prompts(file: str, field: str) -> list[str]:
    from collision_study import DATA

    return [r[field] for r in json.loads((DATA / file).read_text())]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    largest = max((k for k in results if k.startswith("counterfact-") and k != "counterfact_growth"), key=lambda k: int(k.split("-")[1]))
    titles = {largest: f"{largest.split('-')[1]} CounterFact edits: rephrases vs locality prompts",
              "mixed": "zsRE + CounterFact bank: zsRE paraphrases vs CF locality"}
    for axis, name in zip(axes, [largest, "mixed"]):
        rows = results[name]["rows"]
        glob = [r for r in rows if r["rule"] == "global"]
        axis.plot([r["false_fire"] for r in glob], [r["recall"] for r in glob], "k.-", label="global T")
        for rule, values, name_ in (("ratio", ALPHAS[::2], "alpha"), ("margin", RHOS, "rho")):
            for value in values:
                pts = sorted((r["false_fire"], r["recall"]) for r in rows if r["rule"] == rule and r["alpha"] == value)
                axis.plot(*zip(*pts), ".-" if rule == "ratio" else "x--", alpha=0.7, label=f"{rule} {name_}={value}")
        axis.axvline(MAX_FALSE_FIRE, color="grey", ls=":")
        axis.set(xlabel="negatives that fire (1 - locality, routing level)",
                 ylabel="positives routed to their own edit", title=titles[name], xlim=(0, 0.06))
        axis.legend(fontsize=7)
    fig.suptitle(f"radius rules, model {results['model']}, keys: {Path(results['keys']).name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def pooled_keys(path: Path, layer: int) -> dict[str, np.ndarray]:
    """The study's key groups from a routing_study activation cache: normalised mean pools at
    `layer` of each dataset's edit, paraphrase and locality prompts (datasets and roles in the
    order routing_study stores them)."""
    stored = np.load(path, allow_pickle=False)
    layers = [int(x) for x in path.stem.rsplit("_L", 1)[1].split("-")]
    mean = list(stored["raw_pools"]).index("mean")
    pools = stored["pools"][:, layers.index(layer), mean].astype(np.float64)
    n = len(pools) // 6
    names = ["cf_prompt", "cf_rephrase", "cf_locality", "zsre_src", "zsre_rephrase", "zsre_loc"]
    return {name: pools[i * n:(i + 1) * n] / np.linalg.norm(pools[i * n:(i + 1) * n], axis=1, keepdims=True)
            for i, name in enumerate(names)}


def main() -> None:
    def pools_options(parser) -> None:
        parser.add_argument("--pools", type=Path, default=None, help="a routing_study activation cache to read keys from")
        parser.add_argument("--pools-layer", type=int, default=None, help="the layer of --pools to use")

    args = study_arguments(__doc__, pools_options)
    if args.pools is not None:
        keys = pooled_keys(args.pools, args.pools_layer)
        name = result_name("radius_study", args) + f"-pools-L{args.pools_layer}-n{len(keys['cf_prompt'])}"
        sizes = (100, 300, len(keys["cf_prompt"]))
    else:
        _, _, keys = study_keys(args.cache_dir, args.model, args.layer)
        keys["cf_rephrase"] = product_keys(json_prompts("counterfact-1k.json", "rephrase_prompt"), args.cache_dir, args.model,
                                           args.layer).astype(np.float64)
        name = result_name("radius_study", args)
        sizes = (100, 300, 1000)

    results: dict = {"protocol": __doc__, "max_false_fire": MAX_FALSE_FIRE, "keys": str(args.pools or "product keys"),
                     "model": args.model or "default"}
    for n in sizes:
        rows = sweep(keys["cf_prompt"][:n], keys["cf_rephrase"][:n], np.arange(n), keys["cf_locality"][:n])
        results[f"counterfact-{n}"] = summary(rows)
    mixed_bank = np.concatenate([keys["zsre_src"], keys["cf_prompt"]])
    rows = sweep(mixed_bank, keys["zsre_rephrase"], np.arange(len(keys["zsre_src"])), keys["cf_locality"])
    results["mixed"] = summary(rows)
    zsre_rows = sweep(keys["zsre_src"], keys["zsre_rephrase"], np.arange(len(keys["zsre_src"])), keys["zsre_loc"])
    results["zsre"] = summary(zsre_rows)
    # false fires of CounterFact locality prompts at the default T as the bank grows, per rule
    results["counterfact_growth"] = {
        name: {f"{rule}@{t}" + ("" if a is None else f",a={a}"): next(r["false_fire"] for r in res["rows"]
               if r["rule"] == rule and r["threshold"] == t and r["alpha"] == a)
               for rule, t, a in (("global", 0.04, None), ("global", 0.02, None), ("ratio", 0.04, 0.5), ("ratio", 0.04, 0.7),
                                  ("margin", 0.04, 0.7), ("margin", 0.04, 0.9))}
        for name, res in results.items() if name.startswith("counterfact-")}

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / f"{name}.png")
    for part in [f"counterfact-{n}" for n in sizes] + ["mixed", "zsre"]:
        print(part, {rule: results[part][f"best_{rule}"] for rule in ("global", "ratio", "margin")})
    print(json.dumps(results["counterfact_growth"], indent=1))


if __name__ == "__main__":
    main()
