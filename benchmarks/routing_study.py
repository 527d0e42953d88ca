"""Routing study: which key function, layer and threshold should sola route with by default?

Protocol
--------
Each edit stores one routing key: the input of the edited module (`model.layers[L].mlp.up_proj`)
over the edit prompt, pooled to one vector and L2-normalised. A query prompt is pooled the
same way; it fires the nearest stored key's edit when the cosine distance (1 - cos) is
strictly below the threshold (as `sola.layer.RoutedLoRA.route` does). This is an upper bound
on routing only: the edit's LoRA must still produce the target once it fires.

Data: the first `--limit` records (default 300) of CounterFact (`prompt`, `rephrase_prompt`,
`locality_prompt`) and zsRE (`src`, `rephrase`, `loc`); the next `--validation` records
(default 100, i.e. 300..399) are a held-out check of the chosen threshold.
Prompts are tokenised exactly as `sola.routed.RoutedModel.encode` does
(`add_special_tokens=False`).

Key functions (all L2-normalised after pooling):
  last                the last prompt token (the SoLA paper's choice)
  mean                mean over all prompt tokens (= `sola.keys.pool_prompt(..., "mean")`)
  mean_skip1          mean over tokens 1.. (drops the first token's "attention sink" activations)
  mean_of_normalised  mean of per-token L2-normalised vectors
  mean_centred        mean minus the average raw mean vector of the stored keys (queries are
                      centred with the same vector)

Metrics per (dataset, key function, layer, threshold t), with all N edit prompts' keys stored:
  gen        share of paraphrases whose nearest key is their own record's and distance < t
  loc        share of locality prompts whose nearest key distance >= t (no edit fires)
  collision  share of records whose key has another record's key at distance < t
The grid is log-spaced over [0.001, 0.5]; a threshold reported as 0.5 means "at least 0.5".
For each config we report gen at the largest grid threshold with loc >= 0.99 (`--loc-target`).
"combined" puts both datasets' 2N keys in one bank and requires loc >= 0.99 on each dataset's
locality prompts at one threshold, because the product uses a single threshold.
"validation" stores the keys of records 0..limit+validation-1 and applies the threshold chosen
on the first `limit` records to the paraphrase/locality prompts of the held-out records only.

Choosing: gen @ loc>=0.99 hinges on the 3 closest of 300 locality prompts, so the choice uses a
bootstrap (`--bootstrap` replicates): query records are resampled, the bank kept, and the
threshold re-chosen in each replicate; the config with the highest expected combined mean gen
wins, except that an already implemented key function (`mean`, `last`) is kept unless a new one
beats it with a paired 95% CI excluding 0. The recommended threshold is the chosen grid value
rounded down to 2 significant figures, re-checked on the training and the held-out records.

Activations come from one forward per prompt with pre-hooks on every studied layer (the
forward stops after the highest one); the raw (un-normalised) pools are cached in
`--cache-dir` so re-running the analysis takes seconds.

`--model` studies another base model (a `sola init --model` spec, e.g. `gemma3`): prompts are
tokenised as the product does for that family (Gemma's <bos> first), the module is the family's
default (`sola.arch`), and results go to routing_study-<model>.json/png.

Reproduce:  .venv/bin/python benchmarks/routing_study.py [--model gemma3 --layers 2,4,6,8,10,12,14]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path("/work/shared/data")
DATASETS = {  # name -> (file, edit field, paraphrase field, locality field)
    "counterfact": ("counterfact-1k.json", "prompt", "rephrase_prompt", "locality_prompt"),
    "zsre": ("zsre-eval-1037.json", "src", "rephrase", "loc"),
}
ROLES = ("edit", "para", "loc")
RAW_POOLS = ("last", "mean", "mean_skip1", "mean_of_normalised")  # cached, un-normalised
KEY_FNS = ("last", "mean", "mean_skip1", "mean_of_normalised", "mean_centred")
IMPLEMENTED = ("mean", "last")  # key functions sola.keys.pool_prompt had when this study was written
SENSITIVITY_TARGETS = (0.95, 0.98, 0.99, 0.995)


# --- data --------------------------------------------------------------------------------
def load_prompts(count: int) -> dict[str, dict[str, list[str]]]:
    """{dataset: {role: [prompt] * count}} for the first `count` records of each dataset."""
    out = {}
    for name, (file, *fields) in DATASETS.items():
        records = json.loads((DATA / file).read_text())[:count]
        if len(records) < count:
            raise SystemExit(f"{file} has only {len(records)} records, {count} requested")
        out[name] = {role: [r[f] for r in records] for role, f in zip(ROLES, fields)}
    return out


# --- activations -------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by the hook on the highest studied layer: nothing above it is needed."""


def pool_raw(x: np.ndarray) -> np.ndarray:
    """Per-token inputs (T, d) -> (len(RAW_POOLS), d) un-normalised pooled vectors."""
    x = x.astype(np.float64)
    normed = x / np.linalg.norm(x, axis=1, keepdims=True)
    skip1 = x[1:] if len(x) > 1 else x
    return np.stack([x[-1], x.mean(0), skip1.mean(0), normed.mean(0)]).astype(np.float32)


def extract(prompts: list[str], layers: list[int], loaded: tuple, module: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Raw pools (n_prompts, n_layers, len(RAW_POOLS), d), token counts, and the model sha256."""
    import torch

    from sola.arch import decoder_blocks, prompt_prefix

    torch.set_num_threads(1)
    model, tok, ident = loaded
    blocks = decoder_blocks(model)
    prefix = prompt_prefix(model, tok)  # as sola.routed.RoutedModel.prompt_ids tokenises
    captured: dict[int, np.ndarray] = {}

    def make_hook(layer: int):
        def hook(module, args):
            captured[layer] = args[0][0].detach().to(torch.float32).numpy().copy()
            if layer == max(layers):
                raise _Stop

        return hook

    handles = [blocks[L].get_submodule(module).register_forward_pre_hook(make_hook(L)) for L in layers]
    pools, lengths = [], []
    start = time.time()
    try:
        with torch.no_grad():
            for i, prompt in enumerate(prompts):
                ids = prefix + tok(prompt, add_special_tokens=False)["input_ids"]
                captured.clear()
                try:
                    model(input_ids=torch.tensor([ids]), use_cache=False)
                except _Stop:
                    pass
                pools.append(np.stack([pool_raw(captured[L]) for L in layers]))
                lengths.append(len(ids))
                if (i + 1) % 200 == 0:
                    print(f"  {i + 1}/{len(prompts)} prompts, {time.time() - start:.0f}s", flush=True)
    finally:
        for h in handles:
            h.remove()
    check_against_product(model, tok, prompts[:3], layers[len(layers) // 2], np.stack(pools[:3]), layers, module)
    return np.stack(pools), np.array(lengths), ident.sha256


def check_against_product(model, tok, prompts, layer, pools, layers, module) -> None:
    """The hook's mean/last keys must equal what the product's RoutedLoRA computes."""
    import torch

    from sola.config import RoutingConfig
    from sola.keys import pool_prompt
    from sola.routed import RoutedModel

    routed = RoutedModel(model, tok, RoutingConfig(layer=layer, module=module))
    li = layers.index(layer)
    for p, prompt in enumerate(prompts):
        with torch.no_grad():
            _, module_input = routed.capture(routed.encode(prompt).input_ids)
        for fn in ("mean", "last"):
            product = pool_prompt(module_input, None, fn)[0].numpy()
            ours = pools[p, li, RAW_POOLS.index(fn)]
            if not np.allclose(product, ours / np.linalg.norm(ours), atol=1e-5):
                raise AssertionError(f"{fn} key differs from sola.keys.pool_prompt for {prompt!r}")
    print(f"  keys match sola.keys.pool_prompt at layer {layer} (mean, last)")


def cached_pools(prompts: dict, layers: list[int], cache_dir: Path, loaded: tuple, spec: str | None, module: str) -> dict:
    """{dataset: {role: (n, n_layers, len(RAW_POOLS), d)}}, extracting only on a cache miss."""
    flat = [p for ds in prompts.values() for role in ROLES for p in ds[role]]
    n = len(next(iter(prompts.values()))["edit"])
    model_tag = "" if spec is None else f"{spec}_"  # the default model's caches keep their old names
    path = cache_dir / f"pools_{model_tag}n{n}_L{'-'.join(map(str, layers))}.npz"
    if path.is_file():
        data = np.load(path, allow_pickle=False)
        if list(data["prompts"]) == flat and list(data["raw_pools"]) == list(RAW_POOLS):
            print(f"using cached activations {path}")
            arr, sha = data["pools"], str(data["model_sha256"])
        else:
            path.unlink()
            return cached_pools(prompts, layers, cache_dir, loaded, spec, module)
    else:
        print(f"extracting {len(flat)} prompts at layers {layers} (1 thread)")
        arr, lengths, sha = extract(flat, layers, loaded, module)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(path, pools=arr, lengths=lengths, prompts=np.array(flat), raw_pools=np.array(RAW_POOLS), model_sha256=sha)
    out, i = {"model_sha256": sha}, 0
    for name, ds in prompts.items():
        out[name] = {}
        for role in ROLES:
            out[name][role] = arr[i : i + len(ds[role])]
            i += len(ds[role])
    return out


# --- keys and distances ------------------------------------------------------------------
def normalise(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_keys(fn: str, bank_raw: np.ndarray, query_raws: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Normalised bank keys and queries for key function `fn` from raw pools (n, len(RAW_POOLS), d)."""
    if fn == "mean_centred":
        centre = bank_raw[:, RAW_POOLS.index("mean")].astype(np.float64).mean(0)
        pick = lambda raw: raw[:, RAW_POOLS.index("mean")] - centre  # noqa: E731
    else:
        pick = lambda raw: raw[:, RAW_POOLS.index(fn)]  # noqa: E731
    return normalise(pick(bank_raw)), [normalise(pick(q)) for q in query_raws]


def nearest(queries: np.ndarray, keys: np.ndarray, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Index of and cosine distance to the nearest key for each query."""
    sims = queries @ keys.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    idx = sims.argmax(1)
    return idx, np.maximum(0.0, 1.0 - sims[np.arange(len(queries)), idx])


def largest_ok(grid: np.ndarray, ok: np.ndarray) -> int | None:
    """Index of the largest grid threshold whose constraint holds (None if none does)."""
    good = np.flatnonzero(ok)
    return int(good[-1]) if len(good) else None


# --- evaluation --------------------------------------------------------------------------
def route_stats(bank: np.ndarray, para: np.ndarray, loc: np.ndarray, own: np.ndarray) -> dict:
    """Nearest-key facts from which every threshold's metrics follow."""
    p_idx, p_dist = nearest(para, bank)
    _, l_dist = nearest(loc, bank)
    _, c_dist = nearest(bank, bank, exclude_self=True)  # collisions of these records' own keys
    return {"para_own": p_idx == own, "para_dist": p_dist, "loc_dist": l_dist, "coll_dist": c_dist[own]}


def outcomes(stats: dict, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Per-record success at each threshold: (len(thresholds), records) booleans."""
    t = np.asarray(thresholds)[:, None]
    return {
        "gen": (stats["para_dist"][None] < t) & stats["para_own"][None],
        "loc": stats["loc_dist"][None] >= t,
        "collision": stats["coll_dist"][None] < t,
    }


def curves(out: dict[str, np.ndarray], rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Shares over records (optionally a resampled set of record `rows`) at each threshold."""
    return {k: (v if rows is None else v[:, rows]).mean(1) for k, v in out.items()}


def at_threshold(c: dict, i: int | None, grid: np.ndarray) -> dict:
    if i is None:
        return {"threshold": None, "gen": 0.0, "loc": None, "collision": None}
    return {"threshold": float(grid[i]), "gen": float(c["gen"][i]), "loc": float(c["loc"][i]), "collision": float(c["collision"][i])}


def per_dataset(pools: dict, names: list[str], fn: str, li: int, n: int, grid: np.ndarray, target: float) -> dict:
    """Each dataset alone: a bank of its first n edit prompts, its own threshold."""
    out = {}
    for name in names:
        raw = {r: pools[name][r][:n, li] for r in ROLES}
        bank, (para, loc) = make_keys(fn, raw["edit"], [raw["para"], raw["loc"]])
        stats = route_stats(bank, para, loc, np.arange(n))
        c = curves(outcomes(stats, grid))
        out[name] = {
            **at_threshold(c, largest_ok(grid, c["loc"] >= target), grid),
            "nearest_is_own": float(stats["para_own"].mean()),  # gen ceiling at any threshold
            "curve": {k: [round(float(v), 4) for v in vals] for k, vals in c.items()},
        }
    return out


def combined_outcomes(pools: dict, names: list[str], fn: str, li: int, lo: int, hi: int, thresholds: np.ndarray) -> dict:
    """One bank holding the edit keys of records [0, hi) of every dataset; outcomes of records [lo, hi)."""
    bank_raw = np.concatenate([pools[nm]["edit"][:hi, li] for nm in names])
    queries = [pools[nm][r][lo:hi, li] for nm in names for r in ("para", "loc")]
    bank, qs = make_keys(fn, bank_raw, queries)
    return {nm: outcomes(route_stats(bank, qs[2 * d], qs[2 * d + 1], d * hi + np.arange(lo, hi)), thresholds)
            for d, nm in enumerate(names)}


def choose(per: dict, grid: np.ndarray, target: float, rows: dict | None = None) -> tuple[int | None, float]:
    """Largest grid index keeping loc >= target on every dataset, and the mean gen there."""
    cs = {nm: curves(o, None if rows is None else rows[nm]) for nm, o in per.items()}
    i = largest_ok(grid, np.all([c["loc"] >= target for c in cs.values()], axis=0))
    return i, (0.0 if i is None else float(np.mean([c["gen"][i] for c in cs.values()])))


def summarise(per: dict, grid: np.ndarray, i: int | None) -> dict:
    """Metrics of a combined bank at grid index i, plus the whole trade-off curve."""
    cs = {nm: curves(o) for nm, o in per.items()}
    res = {nm: at_threshold(c, i, grid) for nm, c in cs.items()}
    res["threshold"] = None if i is None else float(grid[i])
    res["threshold_index"] = i
    res["mean_gen"] = float(np.mean([res[nm]["gen"] for nm in cs]))
    res["curve_mean_gen"] = [round(float(v), 4) for v in np.mean([c["gen"] for c in cs.values()], axis=0)]
    res["curve_min_loc"] = [round(float(v), 4) for v in np.min([c["loc"] for c in cs.values()], axis=0)]
    return res


def bootstrap(per_by_config: dict, grid: np.ndarray, target: float, n: int, reps: int, seed: int = 0) -> dict:
    """Resample query records (paraphrase + locality pairs) with replacement, bank fixed; re-choose
    the threshold in every replicate. Returns per-config CI of mean gen and P(config is best)."""
    rng = np.random.default_rng(seed)
    configs = list(per_by_config)
    names = list(next(iter(per_by_config.values())))
    scores = np.zeros((reps, len(configs)))
    for b in range(reps):
        rows = {nm: rng.integers(0, n, n) for nm in names}
        scores[b] = [choose(per_by_config[c], grid, target, rows)[1] for c in configs]
    top = scores.max(1, keepdims=True)
    return {"scores": scores, "configs": configs,
            "summary": {c: {"mean": round(float(scores[:, k].mean()), 4),
                            "ci95": [round(float(q), 4) for q in np.quantile(scores[:, k], [0.025, 0.975])],
                            "p_best_or_tied": round(float((scores[:, k] >= top[:, 0] - 1e-12).mean()), 3)}
                        for k, c in enumerate(configs)}}


def floor_sig(x: float, digits: int = 2) -> float:
    """Round down to `digits` significant figures (a product-friendly threshold never looser than chosen)."""
    scale = 10 ** (digits - 1 - math.floor(math.log10(x)))
    return math.floor(x * scale + 1e-9) / scale


# --- report ------------------------------------------------------------------------------
def table(results: dict, layers: list[int], names: list[str]) -> str:
    lines = []
    for title, get in [(nm, lambda r, nm=nm: r["per_dataset"][nm]) for nm in names] + [("combined (one bank, one threshold; mean gen of both)", lambda r: r["combined"])]:
        lines.append(f"\n{title}: gen @ loc>=target  [threshold]")
        lines.append(f"{'key fn':<20}" + "".join(f"{'L' + str(L):>16}" for L in layers))
        for fn in KEY_FNS:
            cells = []
            for L in layers:
                r = get(results["configs"][fn][str(L)])
                g = r.get("mean_gen", r.get("gen"))
                t = r["threshold"]
                cells.append(f"{g:.3f} [{t:.3g}]" if t is not None else "   -   ")
            lines.append(f"{fn:<20}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def plot(results: dict, layers: list[int], names: list[str], grid: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    panels = [(nm, lambda r, nm=nm: r["per_dataset"][nm]["gen"]) for nm in names]
    panels.append(("combined bank, one threshold: mean gen", lambda r: r["combined"]["mean_gen"]))
    for ax, (title, get) in zip(axes.flat, panels):
        for fn in KEY_FNS:
            ax.plot(layers, [get(results["configs"][fn][str(L)]) for L in layers], marker="o", label=fn)
        ax.set(title=f"{title} (gen @ loc>={results['loc_target']})", xlabel="layer", ylabel="paraphrase generalisation", xticks=layers, ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    rec = results["recommendation"]
    fn = rec["key_function"]
    ax = axes.flat[3]
    for L in layers:
        c = results["configs"][fn][str(L)]["combined"]
        ax.plot(1 - np.array(c["curve_min_loc"]) + 1e-3, c["curve_mean_gen"], label=f"L{L}", lw=2.5 if L == rec["layer"] else 1.2)
    ax.axvline(1 - results["loc_target"] + 1e-3, color="k", ls="--", lw=0.8)
    ax.set(xscale="log", xlim=(1e-3, 0.5), xlabel="false-fire rate + 0.001 (1 - worst locality of the two datasets)",
           ylabel="mean paraphrase generalisation", title=f"key '{fn}', one bank: trade-off as the threshold grows", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"SoLA routing keys at {results['module']} input, {results['model']}, {results['limit']} records/dataset; "
                 f"recommended: {fn} @ L{rec['layer']}, threshold {rec['threshold']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def evaluate_config(pools: dict, names: list[str], fn: str, li: int, n: int, total: int, grid: np.ndarray, args) -> tuple[dict, dict]:
    """All results for one (key function, layer), and its combined per-record outcomes for the bootstrap."""
    per = combined_outcomes(pools, names, fn, li, 0, n, grid)
    i, _ = choose(per, grid, args.loc_target)
    r = {"per_dataset": per_dataset(pools, names, fn, li, n, grid, args.loc_target), "combined": summarise(per, grid, i)}
    r["combined"]["gen_at_other_loc_targets"] = {
        str(t): dict(zip(("threshold", "mean_gen"), (lambda j, g: (None if j is None else float(grid[j]), round(g, 4)))(*choose(per, grid, t))))
        for t in SENSITIVITY_TARGETS}
    if total > n:
        r["validation"] = summarise(combined_outcomes(pools, names, fn, li, n, total, grid), grid, i)
    return r, per


def at_fixed(pools: dict, names: list[str], fn: str, li: int, lo: int, hi: int, threshold: float) -> dict:
    """Combined-bank metrics of one config at one given threshold (e.g. the current product default)."""
    grid = np.array([threshold])
    res = summarise(combined_outcomes(pools, names, fn, li, lo, hi, grid), grid, 0)
    return {k: v for k, v in res.items() if not k.startswith("curve")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=300, help="records per dataset used to choose (default 300)")
    ap.add_argument("--validation", type=int, default=100, help="further held-out records per dataset (default 100; 0 = none)")
    ap.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8, 12, 16, 20, 24], help="comma-separated")
    ap.add_argument("--loc-target", type=float, default=0.99)
    ap.add_argument("--grid-points", type=int, default=60)
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (0 = skip)")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/sola_routing_study"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--model", default=None, help="base model spec as for `sola init --model` (default: the bundled SmolLM2)")
    args = ap.parse_args()

    from sola.arch import architecture_of
    from sola.config import RoutingConfig
    from sola.modelio import load_base

    loaded = load_base(args.model)  # a few seconds once converted; its family sets the module and default
    family = architecture_of(loaded[0])
    module = family.default_module
    model_name = loaded[2].name
    stem = "routing_study" if args.model is None else f"routing_study-{model_name}"

    started = time.time()
    n, total = args.limit, args.limit + args.validation
    names = list(DATASETS)
    pools = cached_pools(load_prompts(total), args.layers, args.cache_dir, loaded, args.model, module)
    grid = np.geomspace(0.001, 0.5, args.grid_points)

    configs: dict = {fn: {} for fn in KEY_FNS}
    per_by_config: dict = {}
    for fn in KEY_FNS:
        for li, L in enumerate(args.layers):
            configs[fn][str(L)], per_by_config[f"{fn}@L{L}"] = evaluate_config(pools, names, fn, li, n, total, grid, args)

    boot = None
    if args.bootstrap:
        print(f"bootstrap: {args.bootstrap} replicates over {len(per_by_config)} configs")
        boot = bootstrap(per_by_config, grid, args.loc_target, n, args.bootstrap)
        rule = ("max bootstrap-expected mean paraphrase generalisation (CounterFact and zsRE in one bank) at the largest "
                "grid threshold keeping locality >= loc_target on each dataset, the threshold re-chosen per replicate; "
                f"an already implemented key function {IMPLEMENTED} is preferred unless the winner beats its best "
                "config with a paired bootstrap 95% CI excluding 0")
        score = lambda fn, L: boot["summary"][f"{fn}@L{L}"]["mean"]  # noqa: E731
    else:
        rule = "max mean paraphrase generalisation (both datasets, one bank) at the largest grid threshold keeping locality >= loc_target on each"
        score = lambda fn, L: configs[fn][str(L)]["combined"]["mean_gen"]  # noqa: E731
    ranked = sorted(((fn, L) for fn in KEY_FNS for L in args.layers), key=lambda k: -score(*k))
    best_fn, best_L = ranked[0]
    if boot is not None and best_fn not in IMPLEMENTED:
        alt_fn, alt_L = next(k for k in ranked if k[0] in IMPLEMENTED)
        d = boot["scores"][:, boot["configs"].index(f"{best_fn}@L{best_L}")] - boot["scores"][:, boot["configs"].index(f"{alt_fn}@L{alt_L}")]
        if np.quantile(d, 0.025) <= 0:
            print(f"{best_fn}@L{best_L} is not significantly better than {alt_fn}@L{alt_L}: keeping the implemented key function")
            best_fn, best_L = alt_fn, alt_L
    best = configs[best_fn][str(best_L)]
    if boot is not None:
        k_best = boot["configs"].index(f"{best_fn}@L{best_L}")
        for k, c in enumerate(boot["configs"]):
            d = boot["scores"][:, k_best] - boot["scores"][:, k]
            boot["summary"][c]["recommended_minus_this_ci95"] = [round(float(q), 4) for q in np.quantile(d, [0.025, 0.975])]

    chosen_t = best["combined"]["threshold"]
    product_t = floor_sig(chosen_t) if chosen_t else None
    default = RoutingConfig.from_dict(dict(family.routing_defaults))  # this family's current default
    reference = {}
    if product_t:
        li = args.layers.index(best_L)
        reference[f"recommended {best_fn}@L{best_L}, t={product_t}"] = at_fixed(pools, names, best_fn, li, 0, n, product_t)
        if total > n:
            reference[f"recommended {best_fn}@L{best_L}, t={product_t}, validation"] = at_fixed(pools, names, best_fn, li, n, total, product_t)
    if default.layer in args.layers:
        li = args.layers.index(default.layer)
        reference[f"current default {default.key_function}@L{default.layer}, t={default.threshold}"] = at_fixed(pools, names, default.key_function, li, 0, n, default.threshold)

    results = {
        "protocol": __doc__,
        "model": model_name,
        "model_sha256": pools["model_sha256"],
        "module": module,
        "limit": n,
        "validation_records": [n, total],
        "layers": args.layers,
        "key_functions": list(KEY_FNS),
        "loc_target": args.loc_target,
        "grid": [float(g) for g in grid],
        "recommendation": {
            "key_function": best_fn,
            "layer": best_L,
            "threshold": product_t,
            "threshold_grid": chosen_t,
            "rule": rule,
            "combined": {k: v for k, v in best["combined"].items() if not k.startswith("curve")},
            "validation": {k: v for k, v in best.get("validation", {}).items() if not k.startswith("curve")},
        },
        "reference_points": reference,
        "bootstrap": None if boot is None else {"replicates": args.bootstrap, "method": bootstrap.__doc__, "configs": boot["summary"]},
        "configs": configs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.layers, names, grid, args.out / f"{stem}.png")
    results["runtime_seconds"] = round(time.time() - started, 1)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1))

    print(table(results, args.layers, names))
    if boot is not None:
        print("\nbootstrap of combined mean gen (threshold re-chosen per replicate), top configs:")
        for c, v in sorted(boot["summary"].items(), key=lambda kv: -kv[1]["mean"])[:10]:
            print(f"  {c:<24} mean {v['mean']:.3f} ci95 {v['ci95']}  P(best or tied) {v['p_best_or_tied']:.3f}  "
                  f"recommended-minus-this ci95 {v['recommended_minus_this_ci95']}")
    rec = results["recommendation"]
    print(f"\nrecommended: key_function={rec['key_function']} layer={rec['layer']} threshold={rec['threshold']} (grid {rec['threshold_grid']:.4g})")
    print("  combined:", json.dumps(rec["combined"]))
    if rec["validation"]:
        print(f"  validation (records {n}..{total - 1}, bank of {total}/dataset):", json.dumps(rec["validation"]))
    for name, r in reference.items():
        print(f"  {name}:", json.dumps(r))
    print(f"wrote {args.out / (stem + '.json')} and {stem}.png in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
