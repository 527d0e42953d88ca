"""Plot a subject-key routing study's grid: paraphrase reach against the prompts that must not fire.

    .venv/bin/python benchmarks/plot_routing_grid.py benchmarks/results/subject_keys_1000_mixed_ratios.json --bank mixed

One line per radius ratio over the thresholds: recall (paraphrases that fire their own edit)
against locality_fire (the records' locality prompts that fire any edit; left panel) and against
relation_fire (other-relation probes of edited subjects; right panel). Writes <result>.png
beside the JSON, or --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path)
    parser.add_argument("--bank", default="mixed")
    parser.add_argument("--key-function", default="subject")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    study = json.loads(args.result.read_text())[args.key_function]["banks"][args.bank]
    grid = study["grid"]
    ratios = sorted({g["radius_ratio"] for g in grid})
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ratio in ratios:
        points = sorted((g for g in grid if g["radius_ratio"] == ratio), key=lambda g: g["threshold"])
        recall = [g["recall"] for g in points]
        left.plot([g["locality_fire"] for g in points], recall, marker="o", markersize=3, label=f"ratio {ratio:g}")
        right.plot([g["relation_fire"] for g in points], recall, marker="o", markersize=3, label=f"ratio {ratio:g}")
        for g in points if ratio in (0.5, 1.0) else []:  # the earlier default and today's
            if g["threshold"] in (0.14, 0.2):
                left.annotate(f"{g['threshold']:g}", (g["locality_fire"], g["recall"]), fontsize=7,
                              textcoords="offset points", xytext=(3, -8))
    left.axvline(0.01, color="grey", linestyle=":", linewidth=1)
    left.set_xlabel("locality prompts that fire an edit")
    right.set_xlabel("other-relation probes that fire an edit")
    left.set_ylabel("paraphrases that fire their own edit")
    left.set_title(f"{args.bank}, {study['n_edits']} keys: reach against unrelated locality", fontsize=10)
    right.set_title("reach against relation specificity", fontsize=10)
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    out = args.out or args.result.with_suffix(".png")
    figure.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
