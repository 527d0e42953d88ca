"""`sola rebase`: every edit of a revision re-trained on a new base model, into a new registry.

A thin click layer over `sola.rebase.rebase`; registered on the `sola` group by `sola.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from registry.model import RegistryError
from sola.cli import (MAX_LAYER, MAX_RADIUS_RATIO, FiniteFloat, StageProgress, batch_option, device_option, emit, failures,
                      json_option, main, registry_path, training_options)

# carried over from the origin's routing: what does not depend on the model's geometry (the layer,
# module, threshold and radius ratio are chosen for the new model as `sola init` chooses them,
# from its family's routing study, unless given)
CARRIED_ROUTING = ("rank", "alpha", "key_function", "revoke_mode", "duplicate_distance", "name_ends")


@main.command()
@click.option("--onto", "onto", required=True, help="The new base model, as `sola init --model` takes it.")
@click.option("--into", "into", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of the registry to create on the new model (or to resume an interrupted rebase in).")
@click.option("--from", "revision", default=None, help="Revision of this registry whose edits are rebased (default main).")
@click.option("--layer", type=click.IntRange(0, MAX_LAYER), default=None, help="Edited block on the new model (default: as `init` picks).")
@click.option("--module", default=None, help="Edited projection on the new model (default: the family's).")
@click.option("--threshold", type=FiniteFloat(0.0, 2.0, low_open=True), default=None, help="Routing threshold on the new model (default: as `init`).")
@click.option("--radius-ratio", type=FiniteFloat(0.0, MAX_RADIUS_RATIO), default=None, help="Radius ratio on the new model (default: as `init`).")
@training_options
@batch_option
@device_option
@click.option("--eval-data", "eval_data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CounterFact/zsRE/JSONL records matched to the edits by prompt: unseen paraphrases and locality prompts for the eval.")
@click.option("--no-eval", "no_eval", is_flag=True, help="Skip the evaluation of the rebased set beside the original.")
@click.option("--author", default=None, help="Who rebases (default: $SOLA_AUTHOR or the login name); each edit keeps its own author.")
@json_option
@click.pass_context
def rebase(ctx: click.Context, onto: str, into: Path, revision: str | None, layer: int | None, module: str | None,
           threshold: float | None, radius_ratio: float | None, training: dict[str, Any], batch: int, device: str,
           eval_data: Path | None, no_eval: bool, author: str | None, as_json: bool) -> None:
    """Re-train every edit of REV (live ones and tombstones) on a new base model, into a new registry with lineage."""
    from sola.config import RoutingConfig, TrainConfig, default_author, resolve_device
    from sola.data import check_notes
    from sola.rebase import rebase as run_rebase
    from sola.cli import open_registry

    with failures():
        check_notes(author, None)
        origin_root = registry_path(ctx)
        if into.resolve() == origin_root.resolve():
            raise RegistryError("--into names this registry: rebase into a new directory")
        with open_registry(ctx) as registry:
            registry.resolve(revision)  # an unknown revision is refused before any model loads
            recorded = RoutingConfig.from_record(registry.routing).to_dict()
            train = TrainConfig.resolve(registry.training, **training)
        routing: dict[str, Any] = {name: recorded[name] for name in CARRIED_ROUTING}
        routing.update({k: v for k, v in {"layer": layer, "module": module, "threshold": threshold,
                                          "radius_ratio": radius_ratio}.items() if v is not None})
        RoutingConfig.from_dict(routing)
        with StageProgress() as progress:
            report = run_rebase(origin_root, onto, into, revision, author or default_author(), routing, train, batch,
                                resolve_device(device), eval_data, not no_eval, progress)
        document = report.to_dict()
    emit(as_json, document, lambda: click.echo(_text(document)))


def _text(document: dict[str, Any]) -> str:
    lines = [f"rebased {document['count']} edits of {document['origin']['path']} ({document['origin']['base_model']['name']}) "
             f"onto {document['into']['base_model']['name']} in {document['into']['path']}: {document['trained']} trained, "
             f"{document['resumed']} done before (resumed), {document['converged']} converged"]
    failures = document["failures"]
    lines.append(f"{len(failures)} failure(s)" + (":" if failures else ""))
    for item in failures:
        why = f"duplicate of {item['duplicate_of'][:12]} on the new model" if item["duplicate_of"] else \
            f"did not converge ({item['steps']} steps, loss {item['loss']})"
        lines.append(f"  {item['origin'][:12]} -> {(item['edit'] or '-')[:12]}  [{item['state']}] {why}")
    evaluation = document.get("evaluation")
    if evaluation:
        lines.append(f"{'metric':>20}  {'original':>9}  {'rebased':>9}  n")
        counts = {"edit_success": "n_live", "paraphrase_stored": "n_paraphrase_stored", "paraphrase_unseen": "n_paraphrase_unseen",
                  "locality": "n_locality", "revoked_exact": "n_revoked"}
        for name, count in counts.items():
            a, b = evaluation["original"][name], evaluation["rebased"][name]
            lines.append(f"{name:>20}  {'-' if a is None else f'{a:.3f}':>9}  {'-' if b is None else f'{b:.3f}':>9}  "
                         f"{evaluation['rebased'][count]}")
    return "\n".join(lines)
