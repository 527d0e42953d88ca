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

Reproduce:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/radius_study.py [--model gemma3 [--layer L]]   (keys cached with collision_study)
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


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    titles = {"counterfact-1000": "1000 CounterFact edits: rephrases vs locality prompts",
              "mixed": "zsRE + CounterFact bank: zsRE paraphrases vs CF locality"}
    for axis, name in zip(axes, ["counterfact-1000", "mixed"]):
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    args = study_arguments(__doc__)

    zsre, counterfact, keys = study_keys(args.cache_dir, args.model, args.layer)
    keys["cf_rephrase"] = product_keys([r["rephrase_prompt"] for r in counterfact], args.cache_dir, args.model, args.layer).astype(np.float64)
    name = result_name("radius_study", args)

    results: dict = {"protocol": __doc__, "max_false_fire": MAX_FALSE_FIRE}
    for n in (100, 300, 1000):
        rows = sweep(keys["cf_prompt"][:n], keys["cf_rephrase"][:n], np.arange(n), keys["cf_locality"][:n])
        results[f"counterfact-{n}"] = summary(rows)
    mixed_bank = np.concatenate([keys["zsre_src"], keys["cf_prompt"]])
    rows = sweep(mixed_bank, keys["zsre_rephrase"], np.arange(len(zsre)), keys["cf_locality"])
    results["mixed"] = summary(rows)
    zsre_rows = sweep(keys["zsre_src"], keys["zsre_rephrase"], np.arange(len(zsre)), keys["zsre_loc"])
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
    for name in ("counterfact-100", "counterfact-300", "counterfact-1000", "mixed", "zsre"):
        print(name, {rule: results[name][f"best_{rule}"] for rule in ("global", "ratio", "margin")})
    print(json.dumps(results["counterfact_growth"], indent=1))


if __name__ == "__main__":
    main()
