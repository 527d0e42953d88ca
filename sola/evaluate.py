"""`sola eval`: sequential editing on a benchmark file, measured the way the field measures editors.

Protocol (docs/metrics.md): the first N records are edited one after another into a scratch
registry on the base model, through the same `Workspace.edit` path users run. Paraphrases
are never given as keys: they are the unseen generalisation probes.

- edit success: teacher-forced token accuracy of the target given the prompt, right after its edit
- retention: the same for every edit at the end of the stream (GRACE's "TRR"), and every k edits
- generalisation: token accuracy of the target given the paraphrase, in the edited model, whichever
  edit fires (the field's "rephrase acc"); also reported strictly (only when the paraphrase fires its
  own edit) and for the base model (the credit a target gets without any edit)
- locality: token agreement with the base model on the locality prompt + answer (also: share bit-identical)
- by generation: success, retention and generalisation also as the share of prompts whose greedy
  continuation of the target's length is exactly the target (not only teacher-forced accuracy)
- relation locality: other-relation prompts of each edited subject (sola/probes.py): share whose
  next-token argmax is the base model's, and how often they fire
- rollback fidelity: revoke a seeded random half; share whose prompt logits equal the base exactly
- restore: bring back a seeded fifth of the revoked edits; they must produce their targets again,
  the still-revoked ones must stay bit-identical to the base, the never-revoked ones unchanged
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import random
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sola.config import TrainConfig
from sola.data import EditRequest, read_benchmark
from registry.routing import join_target
from sola.layer import EditBank
from sola.probes import RelationProbe, relation_probes
from sola.routed import RoutedModel
from sola.workspace import EditOutcome, PlannedEdit, Workspace

Progress = Callable[[str, int, int], None]


@dataclass
class RecordResult:
    index: int
    edit: str
    subject: str | None
    success: float
    seconds: float
    steps: int
    neighbours: int
    subject_shared: bool = False
    converged: bool = True  # training met its early stop (else it ran out of steps)
    paraphrase_routed: bool = False
    paraphrase_fired: str | None = None
    generalization: float | None = None
    generalization_routed: float | None = None
    paraphrase_base: float | None = None
    locality: float = 1.0
    locality_identical: bool = True
    retention: float = 0.0
    revoked: bool = False
    rollback_exact: bool | None = None
    rerouted_to: str | None = None
    reroute_predicted: str | None = None
    retention_after_rollback: float | None = None
    restored: bool = False
    retention_after_restore: float | None = None
    still_revoked_exact: bool | None = None
    success_generated: bool = False
    retention_generated: bool = False
    generalization_generated: bool | None = None
    locality_relation: float | None = None
    relation_fired: float | None = None


@dataclass
class EvalResult:
    protocol: dict[str, Any]
    records: list[RecordResult]
    curve: list[dict[str, float]] = field(default_factory=list)

    def per_record(self) -> dict[str, list[float]]:
        """The per-record values behind each averaged metric (the unit the intervals resample)."""
        rs = self.records
        with_para = [r for r in rs if r.generalization is not None]
        return {
            "edit_success": [r.success for r in rs],
            "retention": [r.retention for r in rs],
            "generalization": [r.generalization for r in with_para],
            "generalization_routed": [r.generalization_routed or 0.0 for r in with_para],
            # Benchmarks restate one fact with different targets (zsRE: "Who is the architect of X?" and
            # "What architect designed X?" -> two different answers). No editor can satisfy both, so
            # generalisation is also reported over the records whose subject no other record shares.
            "generalization_unique_subject": [r.generalization for r in with_para if not r.subject_shared],
            "generalization_routed_unique_subject": [r.generalization_routed or 0.0 for r in with_para if not r.subject_shared],
            "locality": [r.locality for r in rs],
            "edit_success_generated": [float(r.success_generated) for r in rs],
            "retention_generated": [float(r.retention_generated) for r in rs],
            "generalization_generated": [float(bool(r.generalization_generated)) for r in with_para],
            "locality_relation": [r.locality_relation for r in rs if r.locality_relation is not None],
            "relation_probe_fires": [r.relation_fired for r in rs if r.relation_fired is not None],
            "rollback_fidelity": [1.0 if r.rollback_exact else 0.0 for r in rs if r.revoked],
        }

    def summary(self) -> dict[str, Any]:
        rs = self.records
        mean = lambda xs: float(sum(xs) / len(xs)) if xs else 0.0  # noqa: E731
        values = self.per_record()
        seconds = sorted(r.seconds for r in rs)
        revoked = [r for r in rs if r.revoked]
        kept = [r for r in rs if not r.revoked]
        with_para = [r for r in rs if r.generalization is not None]
        return {
            "n_edits": len(rs),
            "edit_success": mean(values["edit_success"]),
            "converged": mean([1.0 if r.converged else 0.0 for r in rs]),
            "retention": mean(values["retention"]),
            "generalization": mean(values["generalization"]),
            "generalization_routed": mean(values["generalization_routed"]),
            "generalization_base": mean([r.paraphrase_base or 0.0 for r in with_para]),
            "paraphrase_routing": mean([1.0 if r.paraphrase_routed else 0.0 for r in with_para]),
            "generalization_unique_subject": mean(values["generalization_unique_subject"]),
            "generalization_routed_unique_subject": mean(values["generalization_routed_unique_subject"]),
            "n_unique_subject": sum(1 for r in with_para if not r.subject_shared),
            "paraphrase_to_same_subject_edit": sum(1 for r in with_para if r.paraphrase_fired and not r.paraphrase_routed
                                                   and r.paraphrase_fired in same_subject_edits(rs, r)),
            "locality": mean(values["locality"]),
            "edit_success_generated": mean(values["edit_success_generated"]),
            "retention_generated": mean(values["retention_generated"]),
            "generalization_generated": mean(values["generalization_generated"]),
            # null, not 0, when no record names a subject: no probes were made
            "locality_relation": mean(values["locality_relation"]) if values["locality_relation"] else None,
            "relation_probe_fires": mean(values["relation_probe_fires"]) if values["relation_probe_fires"] else None,
            "n_relation_probes": sum(1 for _ in values["relation_probe_fires"]),
            "locality_identical": mean([1.0 if r.locality_identical else 0.0 for r in rs]),
            "rollback_fidelity": mean(values["rollback_fidelity"]) if revoked else 1.0,
            # Revoked prompts that no longer route anywhere must be exact; the rest fired a neighbouring edit.
            "rollback_unrouted_exact": mean([1.0 if r.rollback_exact else 0.0 for r in revoked if r.rerouted_to is None]) if revoked else 1.0,
            "rollback_rerouted": sum(1 for r in revoked if r.rerouted_to is not None),
            # `sola revoke` warns from the stored keys alone which edit still answers the prompt;
            # share of revoked prompts where that prediction matches what the model then does.
            "rollback_reroute_predicted": mean([1.0 if r.reroute_predicted == r.rerouted_to else 0.0 for r in revoked]) if revoked else 1.0,
            "retention_after_rollback": mean([r.retention_after_rollback or 0.0 for r in kept]) if kept else 1.0,
            "n_revoked": len(revoked),
            # Restore a seeded fifth of the revoked edits: they must work again, the rest stay revoked.
            "n_restored": sum(1 for r in revoked if r.restored),
            "restored_retention": mean([r.retention_after_restore or 0.0 for r in revoked if r.restored]) if any(r.restored for r in revoked) else 1.0,
            "still_revoked_unrouted_exact": mean([1.0 if r.still_revoked_exact else 0.0 for r in revoked if not r.restored and r.rerouted_to is None]) if revoked else 1.0,
            "retention_after_restore": mean([r.retention_after_restore or 0.0 for r in kept]) if kept else 1.0,
            # edits per second of the edit phase (keys, checks, training, commits; not the success
            # probes); with --batch > 1 per-edit seconds are amortised, so this is the one to compare
            "edits_per_second": round(len(rs) / self.protocol["editing_seconds"], 4) if self.protocol.get("editing_seconds") else 0.0,
            "seconds_per_edit": mean(seconds),
            "seconds_per_edit_median": statistics.median(seconds) if seconds else 0.0,
            "seconds_per_edit_p90": seconds[min(len(seconds) - 1, int(0.9 * len(seconds)))] if seconds else 0.0,
            "edits_with_neighbours": sum(1 for r in rs if r.neighbours),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "intervals": self.intervals(),
            "curve": self.curve,
            "protocol": self.protocol,
        }

    def intervals(self, replicates: int = 2000, seed: int = 0) -> dict[str, list[float]]:
        """95% bootstrap intervals of the per-record metrics: a stream of N edits is one sample of
        N facts, and a claim like "0.99 locality" should say how far another sample could move it."""
        return {name: bootstrap_interval(values, replicates, seed) for name, values in self.per_record().items() if values}


def bootstrap_interval(values: list[float], replicates: int = 2000, seed: int = 0) -> list[float]:
    """Percentile interval [2.5%, 97.5%] of the mean over records resampled with replacement."""
    sample = np.asarray(values, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(sample), size=(replicates, len(sample)))
    low, high = np.percentile(sample[draws].mean(axis=1), [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def same_subject_edits(records: list[RecordResult], record: RecordResult) -> set[str]:
    """Edits of the other records about the same subject (filled in by `run_eval`)."""
    return {r.edit for r in records if r.subject_shared and r is not record and r.subject == record.subject}


def token_accuracy(routed: RoutedModel, prompt: str, target: str) -> tuple[float, str | None]:
    logits, encoded, routing = routed.score(prompt, target)
    hits = (logits.argmax(-1) == encoded.target_ids).float().mean().item()
    return hits, routing.edits[0]


def generated_match(routed: RoutedModel, prompt: str, target: str) -> tuple[bool, str | None]:
    """Whether greedy generation of the target's length from the prompt gives exactly the target
    (whitespace at the ends aside), and which edit fired."""
    length = len(routed.encode(prompt, target).target_ids)
    [text], routing = routed.generate([prompt], max_new_tokens=length)
    return text.strip() == join_target(prompt, target).strip(), routing.edits[0]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_eval(
    data: Path,
    model_spec: str | None,
    routing: dict[str, Any],
    limit: int = 100,
    seed: int = 0,
    every: int = 0,
    training: dict[str, Any] | None = None,
    progress: Progress | None = None,
    scratch: Path | None = None,
    batch: int = 1,
    device: str = "cpu",
) -> EvalResult:
    """Edit the first `limit` records of `data` into a scratch registry and measure them.
    `routing` and `training` are the settings chosen; the rest are what `sola init` would record
    for the model and key function (a subject registry's stricter stop loss among them)."""
    import transformers

    kind, requests = read_benchmark(data, limit)
    subjects = collections.Counter(r.subject for r in requests if r.subject)
    notify = progress or (lambda stage, done, total: None)
    with tempfile.TemporaryDirectory(prefix="sola-eval-") as temporary:
        root = Path(scratch or temporary) / "registry"
        workspace = Workspace.init(root, model_spec, routing, "sola-eval", training, device=device)
        with workspace:
            train = TrainConfig.from_dict(workspace.registry.training)  # the caller's, over the key function's defaults
            routed = workspace.model()
            protocol = {
                "data": str(data), "data_sha256": _file_sha256(data), "format": kind, "n": len(requests),
                "base_model": workspace.registry.base_model, "routing": workspace.registry.routing,
                "training": train.to_dict(), "seed": seed, "retention_every": every,
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                "threads": torch.get_num_threads(), "batch": batch, "device": device,
            }
            probes = relation_probes(requests, seed=seed)
            protocol["relation_probes"] = {"per_edit": 2, "n": len(probes), "measure": "next-token argmax unchanged"}
            base = _base_references(routed, requests, probes, notify)
            records: list[RecordResult] = []
            curve: list[dict[str, float]] = []
            # Paraphrases are the unseen generalisation probes, never extra keys.
            planned = [PlannedEdit(dataclasses.replace(r, rephrases=()), "sola-eval", "sola eval", str(data)) for r in requests]
            started, cpu_started = time.perf_counter(), time.process_time()
            last_commit = [started]  # an edit's seconds: from the previous commit to its own (batched: amortised)
            probing = [0.0, 0.0]  # the success probes' share of the edit phase, wall and CPU (not part of editing)

            def measure_after_commit(index: int, outcome: EditOutcome) -> None:
                # right after its own commit, with every earlier edit committed: as when one at a time
                probe_started, probe_cpu = time.perf_counter(), time.process_time()
                seconds = probe_started - last_commit[0]
                request = requests[index]
                routed.set_bank(workspace.head_bank())
                success, _ = token_accuracy(routed, request.prompt, request.target)
                records.append(RecordResult(index, outcome.edit, request.subject, success, seconds, outcome.steps,
                                            len(outcome.neighbours), subject_shared=subjects[request.subject] > 1,
                                            converged=outcome.converged,
                                            success_generated=generated_match(routed, request.prompt, request.target)[0]))
                if every and (index + 1) % every == 0:
                    curve.append(_checkpoint(routed, requests, records, base))
                notify("editing", index + 1, len(requests))
                last_commit[0] = time.perf_counter()
                probing[0] += last_commit[0] - probe_started
                probing[1] += time.process_time() - probe_cpu

            workspace.edit_many(planned, force=True, train_config=train, batch=batch, on_commit=measure_after_commit)
            # the edit phase as `sola edit --file` spends it: keys, checks, training, commits
            protocol["editing_seconds"] = round(time.perf_counter() - started - probing[0], 3)
            # CPU time of this process over the same phase: on a machine shared with other work the
            # wall time depends on the load, the CPU time far less
            protocol["editing_cpu_seconds"] = round(time.process_time() - cpu_started - probing[1], 3)
            _final_metrics(routed, requests, records, base, notify)
            _rollback(workspace, routed, requests, records, base, seed, notify)
            _restore(workspace, routed, requests, records, base, seed, notify)
    return EvalResult(protocol, records, curve)



@dataclass
class _Base:
    locality: list[torch.Tensor | None]
    locality_logits: list[torch.Tensor | None]
    prompt_logits: list[torch.Tensor]
    paraphrase_accuracy: list[float | None]
    relation: dict[int, list[tuple[str, int]]] = field(default_factory=dict)  # record -> (probe, base next-token argmax)


def _base_references(routed: RoutedModel, requests: list[EditRequest], probes: list[RelationProbe], notify: Progress) -> _Base:
    """Base-model outputs before any edit: the reference for locality and rollback."""
    refs = _Base([], [], [], [])
    with routed.bank_override(EditBank.empty()):
        for done, probe in enumerate(probes, start=1):
            argmax = int(routed.prompt_logits(probe.prompt)[0].argmax())
            refs.relation.setdefault(probe.record, []).append((probe.prompt, argmax))
            notify("relation probes", done, len(probes))
        for done, request in enumerate(requests, start=1):
            if request.locality_prompt and request.locality_answer:
                logits = routed.score(request.locality_prompt, request.locality_answer)[0]
                refs.locality.append(logits.argmax(-1))
                refs.locality_logits.append(logits)
            else:
                refs.locality.append(None)
                refs.locality_logits.append(None)
            refs.prompt_logits.append(routed.prompt_logits(request.prompt)[0])
            # Teacher forcing credits a base model with the later tokens of a multi-token target
            # ("... Shipbuilding and" -> "Engineering"); this is how much generalisation is free.
            refs.paraphrase_accuracy.append(token_accuracy(routed, request.rephrases[0], request.target)[0]
                                            if request.rephrases else None)
            notify("base model", done, len(requests))
    return refs


def _measure(routed: RoutedModel, request: EditRequest, record: RecordResult, base: _Base) -> None:
    """Retention, generalisation and locality of one edit against the model as it is now."""
    record.retention, _ = token_accuracy(routed, request.prompt, request.target)
    record.retention_generated = generated_match(routed, request.prompt, request.target)[0]
    if request.rephrases:
        record.generalization_generated = generated_match(routed, request.rephrases[0], request.target)[0]
        accuracy, fired = token_accuracy(routed, request.rephrases[0], request.target)
        record.paraphrase_routed = fired == record.edit
        record.paraphrase_fired = fired
        record.generalization = accuracy
        record.generalization_routed = accuracy if record.paraphrase_routed else 0.0
        record.paraphrase_base = base.paraphrase_accuracy[record.index]
    if base.locality[record.index] is not None:
        logits, _, _ = routed.score(request.locality_prompt, request.locality_answer)
        record.locality = (logits.argmax(-1) == base.locality[record.index]).float().mean().item()
        record.locality_identical = bool(torch.equal(logits, base.locality_logits[record.index]))
    probes = base.relation.get(record.index, [])
    if probes:
        agreements, fired = [], []
        for prompt, argmax in probes:
            logits, routing = routed.prompt_logits(prompt)
            agreements.append(1.0 if int(logits.argmax()) == argmax else 0.0)
            fired.append(1.0 if routing.edits[0] is not None else 0.0)
        record.locality_relation = sum(agreements) / len(agreements)
        record.relation_fired = sum(fired) / len(fired)


def _checkpoint(routed: RoutedModel, requests: list[EditRequest], records: list[RecordResult], base: _Base) -> dict[str, float]:
    """Every metric over all edits so far, as the stream grows (the final pass overwrites them)."""
    for request, record in zip(requests, records):
        _measure(routed, request, record, base)
    values = EvalResult({}, records).per_record()
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else 0.0  # noqa: E731
    names = ("retention", "edit_success", "generalization", "generalization_routed", "locality")
    return {"edits": len(records), **{name: mean(values[name]) for name in names}}


def _final_metrics(routed: RoutedModel, requests: list[EditRequest], records: list[RecordResult], base: _Base, notify: Progress) -> None:
    for done, (request, record) in enumerate(zip(requests, records), start=1):
        _measure(routed, request, record, base)
        notify("measuring", done, len(requests))


def _rollback(workspace: Workspace, routed: RoutedModel, requests: list[EditRequest], records: list[RecordResult],
              base: _Base, seed: int, notify: Progress) -> None:
    """Revoke half the records' edits. A record that duplicated an earlier one shares its edit,
    so an edit is revoked once and every record answered by it counts as revoked."""
    chosen = sorted(random.Random(seed).sample(range(len(records)), len(records) // 2))
    edits = list(dict.fromkeys(records[index].edit for index in chosen))
    for done, edit in enumerate(edits, start=1):
        workspace.set_active(edit, False, "sola eval rollback", "sola-eval")
        notify("revoking", done, len(edits))
    revoked = set(edits)
    for record in records:
        record.revoked = record.edit in revoked
    routed.set_bank(workspace.head_bank())
    for done, (request, record) in enumerate(zip(requests, records), start=1):
        if record.revoked:
            logits, routing = routed.prompt_logits(request.prompt)
            record.rollback_exact = bool(torch.equal(logits, base.prompt_logits[record.index]))
            record.rerouted_to = routing.edits[0]
            record.reroute_predicted = next((r.edit for r in workspace.reroutes(record.edit) if r.input == request.prompt), None)
        else:
            record.retention_after_rollback, _ = token_accuracy(routed, request.prompt, request.target)
        notify("after rollback", done, len(records))


def _restore(workspace: Workspace, routed: RoutedModel, requests: list[EditRequest], records: list[RecordResult],
             base: _Base, seed: int, notify: Progress) -> None:
    """Restore commits are the other half of rollback: history says the fact is live again (an
    edit once, with every record it answers)."""
    revoked = list(dict.fromkeys(r.edit for r in records if r.revoked))
    count = max(len(revoked) // 5, 1) if len(revoked) >= 2 else 0  # 100 of 500; keep one revoked at least
    chosen = set(random.Random(seed + 1).sample(revoked, count))
    for done, edit in enumerate((e for e in revoked if e in chosen), start=1):  # in record order
        workspace.set_active(edit, True, "sola eval restore", "sola-eval")
        notify("restoring", done, len(chosen))
    for record in records:
        record.restored = record.revoked and record.edit in chosen
    routed.set_bank(workspace.head_bank())
    for done, (request, record) in enumerate(zip(requests, records), start=1):
        if record.revoked and not record.restored:
            logits, _ = routed.prompt_logits(request.prompt)
            record.still_revoked_exact = bool(torch.equal(logits, base.prompt_logits[record.index]))
        else:
            record.retention_after_restore, _ = token_accuracy(routed, request.prompt, request.target)
        notify("after restore", done, len(records))
