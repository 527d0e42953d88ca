"""PNG plots of evaluation runs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sola.evaluate import EvalResult  # noqa: E402


def plot_eval(result: EvalResult, path: Path) -> None:
    """Per-edit seconds and success over the stream, plus retention checkpoints if measured."""
    records = result.records
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r.index + 1 for r in records]
    left.plot(xs, [r.seconds for r in records], ".", markersize=3, label="seconds per edit")
    left.set_xlabel("edit #")
    left.set_ylabel("seconds")
    left.set_title("cost per edit")
    right.plot(xs, [r.success for r in records], ".", markersize=3, label="edit success (right after)")
    right.plot(xs, [r.retention for r in records], "x", markersize=3, label="retention (end of stream)")
    if result.curve:
        edits = [c["edits"] for c in result.curve]
        right.plot(edits, [c["retention"] for c in result.curve], "-o", label="retention of all past edits")
        for metric in ("generalization", "generalization_routed", "locality"):
            if all(metric in c for c in result.curve):
                right.plot(edits, [c[metric] for c in result.curve], "-s", markersize=4, label=f"{metric} of all past edits")
    base = [r.paraphrase_base for r in records if r.paraphrase_base is not None]
    if base:  # what teacher forcing credits the unedited model with on the same paraphrases
        right.axhline(sum(base) / len(base), color="grey", ls=":", label="base model on the paraphrases")
    right.set_ylim(-0.05, 1.05)
    right.set_xlabel("edit #")
    routing = result.protocol["routing"]
    ratio = f", radius ratio {routing['radius_ratio']}" if routing.get("radius_ratio") else ""
    right.set_title(f"{result.protocol['format']} ({len(records)} edits, threshold {routing['threshold']}{ratio})")
    right.legend(loc="best", fontsize=7)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
