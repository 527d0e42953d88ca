"""`sola rebase`: carry a registry's knowledge onto a new base model, with lineage.

Every edit of a revision (its live edits and its tombstones) is re-trained on the new base
model, its keys computed by the new model, into a **new registry** on that model: a registry
is bound to one base model (its sha256 is in every tree id, its keys have that model's width),
so the origin keeps its whole history untouched and verifiable, and the new registry is an
ordinary one that every command reads. Each new edit records its lineage in its provenance
(`derived_from`: origin registry, revision and edit; `rebase`: who rebased, when, onto what) and
keeps the original author, reason and source; its commit (`op` `rebase`) is made by the rebaser.
A tombstone is re-trained too (so a later restore works) and revoked again at once, with the
origin's revocation reason, so a revoked fact stays revoked on the new model.

Edits are committed in the order they were created in the origin, trained in batches
(`Workspace.edit_many`), one commit each; a rerun with the same `--into` resumes: an origin
edit that already has a derived edit there is not trained again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from registry.model import ACTIVE, TOMBSTONE, Commit, iso, utcnow
from registry.storage import registry_exists
from registry.store import Registry, RegistryError
from sola.config import TrainConfig
from sola.data import EditRequest, read_benchmark
from sola.layer import EditBank
from sola.routed import RoutedModel
from sola.workspace import EditOutcome, PlannedEdit, Workspace

# (stage, done, total): "rebasing" counts origin edits done (committed or found duplicate)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class OriginEdit:
    """One edit of the origin revision: its id, state there and provenance."""

    edit: str
    state: str  # active | tombstone
    provenance: dict[str, Any]
    revoked_by: dict[str, Any] | None = None  # the commit that revoked it (author, time, reason)

    @property
    def request(self) -> EditRequest:
        p = self.provenance
        return EditRequest(p["prompt"], p["target"], tuple(p.get("rephrases") or ()), p.get("subject"),
                           subject_inferred=bool(p.get("subject_inferred")))


@dataclass
class EditReport:
    origin: str
    state: str
    edit: str | None = None
    converged: bool | None = None
    steps: int | None = None
    loss: float | None = None
    duplicate_of: str | None = None  # the new edit that already holds this fact on the new model
    resumed: bool = False  # done by an earlier, interrupted run: not trained again

    @property
    def failed(self) -> bool:
        return self.duplicate_of is not None or self.converged is False

    def to_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "state": self.state, "edit": self.edit, "converged": self.converged, "steps": self.steps,
                "loss": None if self.loss is None else round(self.loss, 6), "duplicate_of": self.duplicate_of,
                "resumed": self.resumed}


@dataclass
class RebaseReport:
    origin: dict[str, Any]
    into: dict[str, Any]
    edits: list[EditReport] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        trained = [e for e in self.edits if not e.resumed and e.duplicate_of is None]
        return {
            "origin": self.origin,
            "into": self.into,
            "count": len(self.edits),
            "trained": len(trained),
            "resumed": sum(e.resumed for e in self.edits),
            "converged": sum(1 for e in self.edits if e.converged),
            "failures": [e.to_dict() for e in self.edits if e.failed],
            "edits": [e.to_dict() for e in self.edits],
            "evaluation": self.evaluation,
        }


def origin_edits(registry: Registry, commit: Commit) -> list[OriginEdit]:
    """The revision's edits (active and tombstoned), oldest first (creation time, then id), each
    tombstone with the latest commit that revoked it."""
    members = registry.members(commit)
    edits = []
    for edit_id, state in members.items():
        revoked_by = None
        if state == TOMBSTONE:
            revokes = [h for h in registry.edit_history(edit_id) if h["state"] == TOMBSTONE]
            revoked_by = revokes[-1] if revokes else None
        edits.append(OriginEdit(edit_id, state, registry.provenance(edit_id), revoked_by))
    return sorted(edits, key=lambda e: (e.provenance.get("created_at", ""), e.edit))


def derived_edits(registry: Registry, origin_registry: str, origin_commit: str) -> dict[str, str]:
    """{origin edit: derived edit} for the edits of `registry` derived from `origin_registry` at
    `origin_commit`. A registry holding any other edit is not the rebase to resume (RegistryError):
    one made directly, from another registry, or from another revision (the origin branch moved
    since the interrupted run: its edits and revocations may differ)."""
    found = {}
    for edit_id in sorted({edit for _, edit in registry.catalog.key_owners(0)}):  # every edit has a key
        lineage = registry.provenance(edit_id).get("derived_from") or {}
        if lineage.get("registry") != origin_registry:
            raise RegistryError(f"{registry.root} holds edit {edit_id[:12]}, which is not derived from this registry: "
                                f"rebase into a new directory")
        if lineage.get("commit") != origin_commit:
            raise RegistryError(f"{registry.root} is a rebase of commit {str(lineage.get('commit'))[:12]}, not of "
                                f"{origin_commit[:12]}: resume it with --from {str(lineage.get('commit'))[:12]}, "
                                f"or rebase into a new directory")
        found[lineage["edit"]] = edit_id
    return found


def _target(into: Path, onto: str | None, routing: dict[str, Any], author: str, training: TrainConfig,
            device: str) -> tuple[Workspace, bool]:
    """The registry to rebase into: new (made on the new model), or the one an interrupted rebase
    left (its base model must be `onto`'s)."""
    if not registry_exists(into):
        return Workspace.init(into, onto, routing, author, training.to_dict(), device=device), False
    workspace = Workspace.open(into, writable=True, device=device)
    from sola.modelio import identify

    recorded = workspace.base_model
    wanted, _ = identify(onto)
    if wanted.sha256 != recorded["sha256"]:
        raise RegistryError(f"{into} is a registry on {recorded['name']} ({recorded['sha256'][:12]}), not on {wanted.name} "
                            f"({wanted.sha256[:12]}): rebase into a new directory")
    return workspace, True


def rebase(origin_root: Path, onto: str | None, into: Path, revision: str | None = None, author: str = "sola",
           routing: dict[str, Any] | None = None, training: TrainConfig | None = None, batch: int = 16,
           device: str = "cpu", eval_data: Path | None = None, evaluate: bool = True,
           progress: Progress | None = None) -> RebaseReport:
    """Re-train every edit of `revision` of the registry at `origin_root` on the model `onto`,
    into the registry at `into` (created, or resumed). Returns the per-edit report and, with
    `evaluate`, the rebased set's metrics beside the original's."""
    notify = progress or (lambda stage, done, total: None)
    origin = Workspace.open(origin_root)
    commit = origin.registry.resolve(revision)
    origin_id = origin.registry.catalog.registry_id()
    plan = origin_edits(origin.registry, commit)
    train = training or TrainConfig.from_dict(origin.training)
    origin_info = {"registry": origin_id, "path": str(Path(origin_root).resolve()), "commit": commit.commit_id,
                   "base_model": origin.base_model, "active": sum(e.state == ACTIVE for e in plan),
                   "tombstones": sum(e.state == TOMBSTONE for e in plan)}
    origin.release()
    workspace, resumed = _target(Path(into), onto, dict(routing or {}), author, train, device)
    with workspace:
        done = derived_edits(workspace.registry, origin_id, commit.commit_id) if resumed else {}
        report = RebaseReport(origin_info, {"path": str(Path(into).resolve()), "base_model": workspace.base_model,
                                            "routing": workspace.registry.routing, "resumed": resumed})
        reports = {e.edit: EditReport(e.edit, e.state) for e in plan}
        for item in plan:  # done before: not trained again; a tombstone whose revoke was cut off gets it now
            if item.edit in done:
                entry = reports[item.edit]
                entry.edit, entry.resumed = done[item.edit], True
                result = workspace.registry.provenance(entry.edit).get("result", {})
                entry.converged, entry.steps, entry.loss = result.get("converged"), result.get("steps"), result.get("loss")
                if item.state == TOMBSTONE and workspace.registry.is_active(entry.edit):
                    _revoke(workspace, entry.edit, item, author)
        pending = [e for e in plan if e.edit not in done]
        moment = iso(utcnow())
        planned = [_planned(item, origin_info, author, moment, workspace.base_model) for item in pending]
        finished = [len(plan) - len(pending)]
        notify("rebasing", finished[0], len(plan))

        def committed(position: int, outcome: EditOutcome) -> None:
            item, entry = pending[position], reports[pending[position].edit]
            if outcome.duplicate:
                entry.duplicate_of = outcome.edit
            else:
                entry.edit, entry.converged, entry.steps, entry.loss = outcome.edit, outcome.converged, outcome.steps, outcome.loss
                if item.state == TOMBSTONE:
                    _revoke(workspace, outcome.edit, item, author)
            finished[0] += 1
            notify("rebasing", finished[0], len(plan))

        # force: every origin edit is kept, even where the new model's keys of two facts collide
        # (they are then listed as neighbours); an identical fact is reported as a duplicate
        workspace.edit_many(planned, force=True, train_config=train, batch=batch, on_commit=committed)
        report.edits = [reports[e.edit] for e in plan]
        if evaluate:
            report.evaluation = evaluate_rebase(Path(origin_root), commit, workspace, plan, report.edits, eval_data,
                                                device, notify)
    return report


def _planned(item: OriginEdit, origin: dict[str, Any], author: str, moment: str, onto: dict[str, Any]) -> PlannedEdit:
    p = item.provenance
    lineage = {
        "derived_from": {"registry": origin["registry"], "path": origin["path"], "commit": origin["commit"], "edit": item.edit,
                         "base_model": p.get("base_model", origin["base_model"]), "created_at": p.get("created_at"),
                         "state": item.state},
        "rebase": {"author": author, "at": moment, "onto": onto},
    }
    return PlannedEdit(item.request, p.get("author") or author, p.get("reason"), p.get("source"), provenance=lineage,
                       committer=author, op="rebase",
                       message=f"rebase {item.edit[:12]}: {p['prompt']!r} -> {p['target']!r}")


def _revoke(workspace: Workspace, edit_id: str, item: OriginEdit, author: str) -> None:
    revoked = item.revoked_by or {}
    reason = f"revoked in the origin ({(revoked.get('commit') or '?')[:12]}): {revoked.get('reason') or 'no reason given'}"
    workspace.set_active(edit_id, False, reason[:2000], author)


# --- evaluation: the rebased set beside the original --------------------------------------------
def _accuracy(routed: RoutedModel, prompt: str, target: str, bank: EditBank) -> tuple[float, str | None]:
    logits, encoded, routing = routed.score(prompt, target, bank)
    return float((logits.argmax(-1) == encoded.target_ids).float().mean()), routing.edits[0]


def _side(routed: RoutedModel, bank: EditBank, items: list[tuple[str, EditRequest, EditRequest | None, str]]) -> dict[str, Any]:
    """Metrics of one registry side: (its edit id, the stored request, the matching eval record,
    state) per fact. Success and paraphrase: token accuracy of the target; locality: argmax
    agreement with the same model unedited; revoked: the prompt's logits equal the base's."""
    empty = EditBank.empty()
    success, paraphrase, unseen, locality, revoked = [], [], [], [], []
    for edit_id, request, record, state in items:
        if state == TOMBSTONE:
            edited = routed.prompt_logits(request.prompt, bank)[0]
            revoked.append(1.0 if torch.equal(edited, routed.prompt_logits(request.prompt, empty)[0]) else 0.0)
            continue
        success.append(_accuracy(routed, request.prompt, request.target, bank)[0])
        paraphrase += [_accuracy(routed, text, request.target, bank)[0] for text in request.rephrases]
        if record is not None and record.rephrases:
            unseen.append(_accuracy(routed, record.rephrases[0], request.target, bank)[0])
        if record is not None and record.locality_prompt and record.locality_answer:
            edited = routed.score(record.locality_prompt, record.locality_answer, bank)[0].argmax(-1)
            base = routed.score(record.locality_prompt, record.locality_answer, empty)[0].argmax(-1)
            locality.append(float((edited == base).float().mean()))
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {"edit_success": mean(success), "n_live": len(success), "paraphrase_stored": mean(paraphrase), "n_paraphrase_stored": len(paraphrase),
            "paraphrase_unseen": mean(unseen), "n_paraphrase_unseen": len(unseen), "locality": mean(locality), "n_locality": len(locality),
            "revoked_exact": mean(revoked), "n_revoked": len(revoked)}


def evaluate_rebase(origin_root: Path, commit: Commit, workspace: Workspace, plan: list[OriginEdit], reports: list[EditReport],
                    eval_data: Path | None, device: str, notify: Progress) -> dict[str, Any]:
    """The same facts measured on the original (origin model, origin revision) and on the rebased
    registry (new model, its head); `eval_data` (CounterFact, zsRE or JSONL) supplies unseen
    paraphrases and locality prompts, matched to the edits by prompt."""
    records: dict[str, EditRequest] = {}
    if eval_data is not None:
        records = {r.prompt: r for r in read_benchmark(eval_data)[1]}
    new_by_origin = {r.origin: r.edit for r in reports if r.edit is not None}
    notify("evaluating", 0, 2)
    origin = Workspace.open(origin_root, device=device)
    with origin:
        bank = origin.bank(commit)
        origin.release()
        routed = origin.model()
        original = _side(routed, bank, [(e.edit, e.request, records.get(e.request.prompt), e.state) for e in plan])
    del routed, origin  # the origin model is not needed any more
    notify("evaluating", 1, 2)
    head = workspace.registry.head()
    bank = workspace.bank(head)
    workspace.release()
    routed = workspace.model()
    kept = [e for e in plan if e.edit in new_by_origin]
    rebased = _side(routed, bank, [(new_by_origin[e.edit], e.request, records.get(e.request.prompt), e.state) for e in kept])
    notify("evaluating", 2, 2)
    return {"original": original, "rebased": rebased, "eval_data": None if eval_data is None else str(eval_data),
            "not_rebased": len(plan) - len(kept)}
