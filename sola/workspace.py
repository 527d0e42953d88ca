"""The Python API: a registry wired to its base model.

This is the one place where the method (`sola.*`) meets the store (`registry`): it turns a
revision's active edits into an `EditBank` for the routed layer, and a trained edit into the
objects and commit the registry records. The CLI is a thin layer over this class.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from registry.keyindex import FaissKeySearch
from registry.model import MAIN
from registry.routing import nearest_active, same_answer
from registry.storage import Storage, registry_exists
from registry.store import Commit, Registry, RegistryError, iso, utcnow
from sola.arch import architecture_of, context_length as model_context, decoder_blocks, routing_defaults
from sola.config import RoutingConfig, TrainConfig, default_author
from sola.data import EditRequest, RequestError, check_notes, check_text
from sola.layer import EditBank, Routing
from sola.modelio import ModelError, load_base, load_for_inference
from sola.routed import RoutedModel, SubjectInsideName, subject_start_token
from sola.snapshots import snapshot_bank
from sola.subjects import infer_subject
from sola.batch_train import EditJob, train_edits
from sola.train import TrainedEdit, rephrase_key, routing_key, train_edit


class EditConflict(RegistryError):
    """The new edit's key is (nearly) identical to an active edit with a different target."""


def context_length(routed: RoutedModel) -> int:
    """Tokens the base model attends over (its position limit), as the server bounds requests."""
    return model_context(routed.model)


def check_tokens(routed: RoutedModel, text: str, what: str, extra: int = 0, target: str | None = None) -> None:
    """Refuse a prompt (with its target, or `extra` tokens to generate) longer than the context."""
    tokens = int(routed.encode(text, target).input_ids.shape[1])
    limit = context_length(routed)
    if tokens + extra > limit:
        wanted = f"{tokens} tokens" + (f" plus {extra} new tokens" if extra else "")
        raise RequestError(f"{what} of {wanted} is over the model's context of {limit} tokens")


def _check_module(base: Any, config: RoutingConfig) -> None:
    """A clear refusal for a `--layer`/`--module` the model does not have, naming what it has."""
    blocks = decoder_blocks(base)
    if not 0 <= config.layer < len(blocks):
        raise ModelError(f"--layer {config.layer} is out of range: the model has {len(blocks)} blocks (0..{len(blocks) - 1})")
    block = blocks[config.layer]
    try:
        block.get_submodule(config.module)
    except AttributeError:
        names = [name for name, module in block.named_modules() if name and not list(module.children())]
        raise ModelError(f"block {config.layer} has no module {config.module[:80]!r}; it has {', '.join(names[:12])}") from None


def _finite(trained: Any) -> bool:
    return math.isfinite(trained.loss) and all(bool(torch.isfinite(t).all()) for t in (trained.lora_a, trained.lora_b, trained.keys))


@dataclass
class Neighbour:
    edit: str
    distance: float
    prompt: str
    target: str

    def to_dict(self) -> dict[str, Any]:
        return {"edit": self.edit, "distance": round(self.distance, 6), "prompt": self.prompt, "target": self.target}


@dataclass
class Reroute:
    """One input of an edit (its prompt or a rephrase) that another active edit answers."""

    input: str
    edit: str
    distance: float
    radius: float
    prompt: str
    target: str

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "edit": self.edit, "distance": round(self.distance, 6), "radius": round(self.radius, 6),
                "prompt": self.prompt, "target": self.target}


@dataclass
class EditOutcome:
    edit: str
    commit: str | None
    duplicate: bool = False
    superseded: list[str] = field(default_factory=list)
    neighbours: list[Neighbour] = field(default_factory=list)
    steps: int = 0
    loss: float = 0.0
    converged: bool = True
    seconds: float = 0.0
    subject: str | None = None  # what the edit is keyed on in a subject-keyed registry
    subject_inferred: bool = False  # found in the prompt (sola.subjects) rather than given
    keyed_on_last_tokens: bool = False  # a subject-keyed registry found no subject: keyed on the prompt's end

    def to_dict(self) -> dict[str, Any]:
        return {
            "edit": self.edit,
            "commit": self.commit,
            "subject": self.subject,
            "subject_inferred": self.subject_inferred,
            "keyed_on_last_tokens": self.keyed_on_last_tokens,
            "duplicate": self.duplicate,
            "superseded": self.superseded,
            "neighbours": [n.to_dict() for n in self.neighbours],
            "steps": self.steps,
            "loss": round(self.loss, 6),
            "converged": self.converged,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class PlannedEdit:
    """One edit to make and what is recorded with it: the request, who asked and why, the edits
    it replaces, and extra provenance fields (a rebased edit's lineage). `committer` is who
    makes the commit when it is not the edit's author (a rebase keeps the original author)."""

    request: EditRequest
    author: str
    reason: str | None = None
    source: str | None = None
    supersede: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    committer: str | None = None
    message: str | None = None
    op: str | None = None  # the commit's op (default add, or supersede)


# called after each edit of a batch is committed (or found a duplicate): (its position, outcome)
OnCommit = Callable[[int, "EditOutcome"], None]


@dataclass
class Generation:
    prompt: str
    text: str
    edit: str | None
    distance: float
    nearest: str | None
    radius: float
    commit: str

    @classmethod
    def batch(cls, prompts: list[str], texts: list[str], routing: Routing, commit: str) -> list["Generation"]:
        return [cls(p, t, e, d, n, r, commit)
                for p, t, e, d, n, r in zip(prompts, texts, routing.edits, routing.distances, routing.nearest, routing.radii)]

    @property
    def held_by_tombstone(self) -> bool:
        """The nearest key lay within its radius yet nothing fired: under the routing rule only a
        revoked edit's tombstone does that, so the base model answered on its behalf."""
        return self.edit is None and self.nearest is not None and self.distance < self.radius

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "text": self.text,
            "edit": self.edit,
            "distance": None if self.distance == float("inf") else round(self.distance, 6),
            "nearest_edit": self.nearest,
            "radius": None if self.nearest is None else round(self.radius, 6),
            "commit": self.commit,
        }


class Workspace:
    """A registry plus (lazily) its base model with the routed layer attached.

    The workspace holds the catalog only for short transactions, so other processes can read
    and write the same registry meanwhile: reads open it read-only on first use and `release()`
    closes it before anything slow (loading the model, training, generating); each write opens it
    for writing in `writing()` just for the commit, after checking the branch again under the lock."""

    def __init__(self, root: Path, registry: Registry | None = None, writable: bool = False,
                 wait_seconds: float = 30.0, device: str = "cpu") -> None:
        self.root = Path(root)
        self.device = device  # where the model runs once loaded ("cpu" or "cuda")
        self.writable = writable
        self.wait_seconds = wait_seconds
        self._registry = registry
        self.routing = RoutingConfig.from_record(self.registry.routing)
        self.base_model = dict(self.registry.base_model)
        self.training = dict(self.registry.training)
        self._routed: RoutedModel | None = None  # the transformers model: trains edits
        self._serving: RoutedModel | None = None  # loaded for inference only (the core's, for a Llama)
        # per branch: (head commit id, index of its active and tombstoned keys, key id -> edit, tombstoned edits)
        self._head_index: dict[str, tuple[str, FaissKeySearch, dict[int, str], frozenset[str]]] = {}
        self._answer_cache: dict[str, tuple[str, str]] = {}

    # --- lifecycle ----------------------------------------------------------------------------
    @classmethod
    def init(cls, root: Path, model: str | None, routing: dict[str, Any], author: str,
             training: dict[str, Any] | None = None, device: str = "cpu", storage: Storage = Storage()) -> "Workspace":
        """Create a registry for a base model; loading it once also warms the conversion cache.
        `routing` and `training` hold the settings the caller chose; the rest take the model
        family's defaults for the key function (sola.arch.routing_defaults,
        TrainConfig.defaults_for), and all of them are recorded. The settings, the target
        directory and the storage URLs are checked before the model loads."""
        if registry_exists(root):
            raise RegistryError(f"a registry already exists at {root}")
        storage.check()
        settings = dict(routing)
        settings.setdefault("alpha", float(settings.get("rank", RoutingConfig.rank)))  # scale alpha/rank = 1
        RoutingConfig.from_dict(settings)  # ranges and types, before the model loads
        TrainConfig.resolve({}, **(training or {}))
        if settings.get("name_ends") and settings.get("key_function", "subject") != "subject":
            raise RequestError(f"name ends apply to subject keys only, not to key function {settings['key_function']!r}")
        base, tokenizer, identity = load_base(model)
        base = base.to(device)
        # the family's studied defaults for the key function given, or for its default one (sola.arch)
        for name, value in routing_defaults(base, settings.get("key_function")).items():
            settings.setdefault(name, value)
        key_function = settings["key_function"]
        if key_function != "subject":  # a name-ends record would say something the routing does not do
            if settings.get("name_ends"):
                raise RequestError(f"name ends apply to subject keys only; this model's default key function is "
                                   f"{key_function!r} (add --key-function subject)")
            settings["name_ends"] = False
        if key_function == "subject":  # recorded explicitly
            # unset (or carried over as unset from a mean-keyed registry): resolved and recorded now
            if not settings.get("key_layers"):
                settings["key_layers"] = list(RoutingConfig.from_dict(settings).subject_layers)
            if settings.get("start_token", -1) == -1:  # a family with a fixed prefix (Gemma's <bos>) needs none
                settings["start_token"] = subject_start_token(base, tokenizer)
        config = RoutingConfig.from_dict(settings)
        _check_module(base, config)
        try:
            routed = RoutedModel(base, tokenizer, config)  # validates layer/module against the real model
        except TypeError as error:  # a module sola cannot edit (an activation, a norm)
            raise ModelError(f"--module {config.module}: {error}") from None
        family = architecture_of(base)
        routing_record = dict(config.to_dict(), key_dim=routed.key_dim, block_path=family.block_path, family=family.name)
        train = TrainConfig.resolve(TrainConfig.defaults_for(key_function), **(training or {}))
        registry = Registry.create(root, identity.to_dict(), routing_record, author, train.to_dict(), storage)
        workspace = cls(root, registry, writable=True, device=device)
        workspace._routed = routed
        return workspace

    @classmethod
    def open(cls, root: Path, writable: bool = False, wait_seconds: float = 30.0, device: str = "cpu") -> "Workspace":
        return cls(root, Registry.open(root, writable=False, wait_seconds=wait_seconds), writable, wait_seconds, device)

    @property
    def registry(self) -> Registry:
        """The catalog for reading (opened on first use, read-only, until `release`)."""
        if self._registry is None:
            self._registry = Registry.open(self.root, writable=False, wait_seconds=self.wait_seconds)
        return self._registry

    def release(self) -> None:
        """Close the catalog so that writers (and, for a writer, readers) are not held up."""
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    @contextmanager
    def writing(self) -> Iterator[Registry]:
        """The catalog opened for writing, for one commit; closed again afterwards."""
        if not self.writable:
            raise RegistryError("registry opened read-only")
        self.release()
        self._registry = Registry.open(self.root, writable=True, wait_seconds=self.wait_seconds)
        try:
            yield self._registry
        finally:
            self.release()

    def close(self) -> None:
        self.release()

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def model(self) -> RoutedModel:
        """The base model with the routed layer, checked against the recorded identity."""
        if self._routed is None:
            recorded = self.base_model
            base, tokenizer, _ = load_base(recorded["spec"], expected_sha256=recorded["sha256"])
            self._routed = RoutedModel(base.to(self.device), tokenizer, self.routing)
            self._serving = None  # from now on inference uses this model too
        return self._routed

    def serving_model(self) -> RoutedModel:
        """The routed model for read-only inference: the one already loaded, else one loaded by
        `load_for_inference` (the Llama family without transformers, which is most of a cold
        `sola generate`); same identity check as `model()`. Training always uses `model()`."""
        if self._routed is not None:
            return self._routed
        if self._serving is None:
            recorded = self.base_model
            base, tokenizer, _ = load_for_inference(recorded["spec"], expected_sha256=recorded["sha256"])
            self._serving = RoutedModel(base.to(self.device), tokenizer, self.routing)
        return self._serving

    # --- snapshots -------------------------------------------------------------------------------
    def _fetch_lora(self, edit_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = self.registry.edit_lora(edit_id)
        return torch.from_numpy(tensors["lora_A"].copy()), torch.from_numpy(tensors["lora_B"].copy())

    def bank(self, commit: Commit) -> EditBank:
        """The snapshot bank of a commit: reads only objects once built (sola/snapshots.py)."""
        return snapshot_bank(self.registry, commit)

    def head_bank(self, branch: str = MAIN) -> EditBank:
        """The bank of a branch head, from a copy of the incrementally maintained in-memory index
        (the bank must not change under its holder when later edits extend the head index)."""
        search, key_edit, revoked = self._head_search(branch)
        return EditBank(search.copy(), dict(key_edit), self._fetch_lora, revoked, self._answers(set(key_edit.values()) - revoked))

    def _answers(self, edit_ids: set[str]) -> dict[str, tuple[str, str]]:
        """(prompt, target) of edits, read once per edit (edits never change)."""
        missing = [e for e in edit_ids if e not in self._answer_cache]
        if missing:
            rows = self.registry.catalog.edit_rows(missing)
            self._answer_cache.update({e: (row["prompt"], row["target"]) for e, row in rows.items()})
        return {e: self._answer_cache[e] for e in edit_ids if e in self._answer_cache}

    def routed_at(self, revision: str | None = None, at: str | None = None) -> tuple[RoutedModel, Commit]:
        """The model routed as at a revision, for inference (`serving_model`); the catalog is
        released before the model loads."""
        commit = self.registry.resolve(revision, at)
        bank = self.bank(commit)
        self.release()
        routed = self.serving_model()
        routed.set_bank(bank)
        return routed, commit

    def generate(
        self, prompts: list[str], revision: str | None = None, at: str | None = None, max_new_tokens: int = 16
    ) -> list[Generation]:
        for prompt in prompts:
            check_text("prompt", prompt)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise RequestError("max_new_tokens must be a positive integer")
        routed, commit = self.routed_at(revision, at)
        for prompt in prompts:
            check_tokens(routed, prompt, "prompt", extra=max_new_tokens)
        texts, routing = routed.generate(prompts, max_new_tokens=max_new_tokens)
        return Generation.batch(prompts, texts, routing, commit.commit_id)

    # --- editing ---------------------------------------------------------------------------------
    def _head_search(self, branch: str = MAIN) -> tuple[FaissKeySearch, dict[int, str], frozenset[str]]:
        """The routing index of a branch head (active keys and tombstones) and its tombstoned edits."""
        head = self.registry.branch_head(branch)
        cached = self._head_index.get(branch)
        if cached is None or cached[0] != head.commit_id:
            search, key_edit = self.registry.key_search(head, tombstones=True)
            cached = (head.commit_id, search, key_edit, frozenset(self.registry.tombstoned_edit_ids(head)))
            self._head_index[branch] = cached
        return cached[1], cached[2], cached[3]

    def reroutes(self, edit: str, branch: str = MAIN) -> list[Reroute]:
        """The edit's inputs that another active edit at the branch head answers.

        After a revoke, an input of the edit either routes nowhere (the base model's exact
        output) or lands within the radius of another active edit, e.g. a restatement of the
        same fact, which then answers it. With tombstones (`revoke_mode` "tombstone") the
        revoked keys still win their own inputs, so only an active key at the same distance
        can. The stored keys are the queries those inputs make, so this needs no model: the
        routing rule is applied to them directly."""
        edit_id = self.registry.resolve_edit(edit)
        return [Reroute(**r) for r in self.registry.reroutes(edit_id, self.registry.branch_head(branch))]

    def neighbours(self, key: torch.Tensor, radius: float, k: int = 16, branch: str = MAIN) -> list[Neighbour]:
        """Active edits of a branch head whose nearest key lies within `radius` (cosine distance),
        closest first (registry.routing.nearest_active: tombstones are skipped)."""
        search, key_edit, revoked = self._head_search(branch)
        found = nearest_active(search, key_edit, revoked, key.numpy(), radius, k)
        rows = self.registry.catalog.edit_rows(e for e, _ in found)
        return [Neighbour(e, d, rows[e]["prompt"], rows[e]["target"]) for e, d in found]

    def edit(
        self,
        request: EditRequest,
        author: str | None = None,
        reason: str | None = None,
        source: str | None = None,
        supersede: list[str] | None = None,
        force: bool = False,
        train_config: TrainConfig = TrainConfig(),
        branch: str = MAIN,
    ) -> EditOutcome:
        """Train and record one edit on a branch, after checking it against its active edits' keys.

        Training runs with the catalog closed; the commit then checks the branch under the write
        lock and, if another writer moved it meanwhile, checks the edit against the new head."""
        if not self.writable:
            raise RegistryError("registry opened read-only")
        head = self.registry.check_direct_write(branch)
        request = self.with_subject(request.validated())
        author = author or default_author()
        check_notes(author, reason, source)
        supersede_ids = self._supersedable(supersede or [], head, branch)
        seen_head = head.commit_id
        if self._routed is None:
            self.release()  # loading the model takes seconds: no one waits on the catalog meanwhile
        routed = self.model()
        self._check_request_tokens(routed, request)
        key = routing_key(routed, request.prompt, request.subject)
        close, duplicate = self._admit(key, request, supersede_ids, force, branch)
        if duplicate is not None:
            return duplicate
        self.release()
        trained = train_edit(routed, request.prompt, request.target, list(request.rephrases), train_config,
                             subject=request.subject, prompt_key=key)
        planned = PlannedEdit(request, author, reason, source, supersede_ids)
        outcome = self._record(planned, trained, key, close, force, train_config, branch,
                               recheck_unless=seen_head)
        return outcome

    def _record(self, planned: "PlannedEdit", trained: TrainedEdit, key: torch.Tensor, close: list[Neighbour],
                force: bool, train_config: TrainConfig, branch: str, recheck_unless: str | None = None) -> EditOutcome:
        """Commit one trained edit on `branch`, under the write lock.

        The collision rule is applied again against the head as it is under the lock unless the
        head is still `recheck_unless` (the one the edit was admitted against): another writer, or
        an earlier edit of the same batch, may have committed a duplicate or a contradiction."""
        if not _finite(trained):
            raise RegistryError(f"training diverged (loss {trained.loss} at lr {train_config.lr:g}); nothing was committed: "
                                f"try a smaller --lr")
        request, supersede_ids = planned.request, planned.supersede
        provenance = {
            "format": "sola.edit/1",
            "prompt": request.prompt,
            "target": request.target,
            "rephrases": list(request.rephrases),
            "subject": request.subject,
            "subject_inferred": request.subject_inferred,
            "author": planned.author,
            "reason": planned.reason,
            "source": planned.source,
            "created_at": iso(utcnow()),
            "base_model": self.base_model,
            "routing": self.routing.to_dict(),
            "training": train_config.to_dict(),
            "result": {"steps": trained.steps, "loss": trained.loss, "converged": trained.converged, "seconds": round(trained.seconds, 4)},
            **planned.provenance,
        }
        tensors = {"lora_A": trained.lora_a.numpy(), "lora_B": trained.lora_b.numpy(), "keys": trained.keys.numpy()}
        message = planned.message or f"add {request.prompt!r} -> {request.target!r}"
        with self.writing() as registry:
            if registry.check_direct_write(branch).commit_id != recheck_unless:
                close, duplicate = self._admit(key, request, supersede_ids, force, branch)
                if duplicate is not None:
                    return duplicate
            edit_id, commit = registry.store_edit(
                tensors, provenance, [request.prompt, *request.rephrases], planned.author, message,
                supersede_ids, branch, committer=planned.committer, op=planned.op
            )
            self._advance_head_index(branch, commit, edit_id, supersede_ids)
        neighbours = [n for n in close if n.edit not in supersede_ids]
        return EditOutcome(
            edit=edit_id,
            commit=commit.commit_id,
            superseded=supersede_ids,
            neighbours=neighbours,
            steps=trained.steps,
            loss=trained.loss,
            converged=trained.converged,
            seconds=trained.seconds,
            subject=request.subject,
            subject_inferred=request.subject_inferred,
            keyed_on_last_tokens=self.routing.key_function == "subject" and not request.names_subject,
        )

    def edit_many(
        self,
        planned: list[PlannedEdit],
        force: bool = False,
        train_config: TrainConfig = TrainConfig(),
        branch: str = MAIN,
        batch: int = 1,
        on_commit: OnCommit | None = None,
        on_trained: Callable[[int], None] | None = None,
    ) -> list[EditOutcome]:
        """Make many edits, one commit each and in order, training up to `batch` at once.

        The outcome is the one `edit` gives one after another: every check (validation,
        supersede, token limits, the collision rule) runs for every edit before anything is
        trained, so a refusal leaves nothing committed. An edit is checked against the branch
        head *and the earlier edits of the same list*, as if those were already committed (they
        will be, before it): a duplicate of an earlier edit is not trained and is reported as a
        duplicate of it, a contradiction of one is refused unless `force`. Each commit then
        applies the rule again against the real head, under the lock, so a concurrent writer's
        commit is seen as `edit` would see it. Training failures (a diverged loss) stop at that
        edit: the edits before it stay committed, as in a sequential run."""
        if not self.writable:
            raise RegistryError("registry opened read-only")
        head = self.registry.check_direct_write(branch)
        numbered = len(planned) > 1
        items: list[PlannedEdit] = []
        for line, item in enumerate(planned, start=1):
            try:
                request = item.request.validated()
                if "derived_from" not in item.provenance:  # a rebased edit is re-keyed the way it was made
                    request = self.with_subject(request)
                check_notes(item.author, item.reason, item.source)
                supersede = self._supersedable(item.supersede, head, branch)
            except (RequestError, RegistryError) as error:
                raise type(error)(f"request {line}: {error}" if numbered else str(error)) from None
            items.append(dataclasses.replace(item, request=request, supersede=supersede))
        self.release()
        routed = self.model()
        for line, item in enumerate(items, start=1):
            try:
                self._check_request_tokens(routed, item.request)
            except RequestError as error:
                raise RequestError(f"request {line}: {error}; nothing was edited" if numbered else str(error)) from None
        keys = [routing_key(routed, item.request.prompt, item.request.subject) for item in items]
        duplicates = self._plan_duplicates(routed, items, keys, force, branch)
        self.release()
        # made alone at their turn: the planned duplicates (confirmed, or trained after all, against
        # the real head), and with batch 1 (or a single edit) every edit, exactly as `edit` makes it
        alone = duplicates if batch > 1 and len(items) > 1 else set(range(len(items)))
        jobs = [EditJob(item.request.prompt, item.request.target, tuple(item.request.rephrases), item.request.subject, key)
                for item, key in zip(items, keys)]
        to_train = [i for i in range(len(items)) if i not in alone]
        results: dict[int, TrainedEdit] = {}
        outcomes: list[EditOutcome] = []
        trained_stream = train_edits(routed, [jobs[i] for i in to_train], train_config, batch)
        for position in range(len(items)):
            item = items[position]
            if position in alone:
                outcome = self._edit_planned(item, force, train_config, branch)
                if on_trained is not None:
                    on_trained(position)
            else:
                while position not in results:
                    finished, trained = next(trained_stream)
                    results[to_train[finished]] = trained
                    if on_trained is not None:
                        on_trained(to_train[finished])
                trained = results.pop(position)
                outcome = self._record(item, trained, keys[position], [], force, train_config, branch)
            outcomes.append(outcome)
            if on_commit is not None:
                on_commit(position, outcome)
        return outcomes

    def _edit_planned(self, item: PlannedEdit, force: bool, train_config: TrainConfig, branch: str) -> EditOutcome:
        """One planned edit made alone: admitted against the head, trained, committed."""
        routed = self.model()
        key = routing_key(routed, item.request.prompt, item.request.subject)
        close, duplicate = self._admit(key, item.request, item.supersede, force, branch)
        if duplicate is not None:
            return duplicate
        head = self.registry.branch_head(branch).commit_id
        self.release()
        request = item.request
        trained = train_edit(routed, request.prompt, request.target, list(request.rephrases), train_config,
                             subject=request.subject, prompt_key=key)
        return self._record(item, trained, key, close, force, train_config, branch, recheck_unless=head)

    def _plan_duplicates(self, routed: RoutedModel, items: list[PlannedEdit], keys: list[torch.Tensor],
                         force: bool, branch: str) -> set[int]:
        """The positions that the collision rule will find duplicates when their turn to commit
        comes, checked against the head plus the earlier edits of the list that will commit (their
        prompt and rephrase keys, as stored); a contradiction raises EditConflict before training."""
        dim = keys[0].shape[-1] if keys else 1
        earlier = np.zeros((0, dim), np.float32)
        owner: list[int] = []  # earlier row -> position
        duplicates: set[int] = set()
        radius = self.routing.threshold
        for position, (item, key) in enumerate(zip(items, keys)):
            candidates = [(n.distance, n.prompt, n.target, n.edit) for n in self.neighbours(key, radius, branch=branch)]
            if owner:
                distances = 1.0 - earlier @ key.numpy()
                nearest: dict[int, float] = {}
                for row, distance in enumerate(distances.tolist()):
                    if distance < radius:
                        nearest[owner[row]] = min(distance, nearest.get(owner[row], 2.0))
                candidates += [(d, items[p].request.prompt, items[p].request.target, f"request {p + 1}") for p, d in nearest.items()]
            for distance, prompt, target, edit in sorted(candidates, key=lambda c: c[0]):
                if distance >= self.routing.duplicate_distance or edit in item.supersede:
                    continue
                if same_answer(prompt, target, item.request.prompt, item.request.target):
                    duplicates.add(position)
                    break
                if not force:
                    raise EditConflict(f"request {position + 1} contradicts {'active edit ' + edit[:12] if not edit.startswith('request') else edit} "
                                       f"({prompt!r} -> {target!r}) at distance {distance:.4f}; nothing was edited")
            if position in duplicates:
                continue
            stored = [key.numpy()] + [rephrase_key(routed, text, item.request.subject).numpy() for text in item.request.rephrases]
            earlier = np.concatenate([earlier, np.stack(stored).astype(np.float32)])
            owner += [position] * len(stored)
        return duplicates

    def _supersedable(self, supersede: list[str], head: Commit, branch: str) -> list[str]:
        """The ids of the edits a new edit replaces; each must be active on the branch (checked
        before anything is trained; the commit checks again under the lock)."""
        ids = [self.registry.resolve_edit(e) for e in supersede]
        for edit_id in ids:
            if not self.registry.is_active(edit_id, head):
                was_on = self.registry.is_tombstoned(edit_id, head) or self.registry._was_on(edit_id, head)
                raise RegistryError(f"cannot supersede {edit_id[:12]}: it is {'revoked' if was_on else 'not'} on {branch} "
                                    f"(only an active edit can be replaced)")
        return ids

    def with_subject(self, request: EditRequest) -> EditRequest:
        """The request a subject-keyed registry trains: with its own subject, or else the one
        sola.subjects infers from its prompt (recorded as inferred with the edit); unchanged when
        the registry keys on something else or the prompt has no word to key on (then the key
        is read from its last tokens, sola.keys.subject_span). Model-free, so the CLI's
        preflight and the edit agree on it."""
        if self.routing.key_function != "subject" or request.names_subject:
            return request
        inferred = infer_subject(request.prompt)
        if inferred is None:
            return request
        return dataclasses.replace(request, subject=inferred, subject_inferred=True)

    @staticmethod
    def _check_request_tokens(routed: RoutedModel, request: EditRequest) -> None:
        """Everything about a request that needs the tokenizer, before any training. A subject
        key is read from the edit's subject, in its prompt and in every rephrase: a rephrase that
        does not name it would be keyed on other words, so such a request is refused. A request
        with no subject at all (none given, none inferable) is keyed on its prompt's last tokens."""
        check_tokens(routed, request.prompt, "prompt with its target", target=request.target)
        subject_keyed = routed.config.key_function == "subject" and request.names_subject
        if subject_keyed:
            try:
                routed.subject_span(request.prompt, request.subject)
            except ValueError as error:
                raise RequestError(f"{error}: a subject key is read from the subject's tokens") from None
        for number, text in enumerate(request.rephrases, start=1):
            check_tokens(routed, text, "rephrase prompt")
            if subject_keyed:
                try:
                    routed.subject_span(text, request.subject)
                except SubjectInsideName as error:
                    raise RequestError(f"rephrase {number}: {error}") from None
                except ValueError:
                    raise RequestError(f"rephrase {number} ({text[:80]!r}) does not name the subject "
                                       f"{request.subject.strip()[:80]!r}: a subject key is read from the subject's tokens") from None

    def _admit(self, key: torch.Tensor, request: EditRequest, supersede_ids: list[str], force: bool,
               branch: str) -> tuple[list[Neighbour], EditOutcome | None]:
        """The collision rule against the branch head: (its neighbours within the threshold, the
        existing edit's outcome when this one duplicates it); a contradiction raises EditConflict."""
        close = self.neighbours(key, self.routing.threshold, branch=branch)
        for near in close:
            if near.distance >= self.routing.duplicate_distance or near.edit in supersede_ids:
                continue
            if same_answer(near.prompt, near.target, request.prompt, request.target):
                return close, EditOutcome(edit=near.edit, commit=None, duplicate=True, neighbours=close)
            if not force:
                raise EditConflict(
                    f"contradicts active edit {near.edit[:12]} ({near.prompt!r} -> {near.target!r}) at distance "
                    f"{near.distance:.4f}; pass --supersede {near.edit[:12]} to replace it or --force to keep both"
                )
        return close, None

    def preflight(self, requests: list[EditRequest], supersede: list[str] | None = None, force: bool = False,
                  branch: str = MAIN) -> None:
        """Refuse a batch before training anything if the branch takes no direct writes, or any
        request contradicts an active edit or an earlier request of the same batch (nearly the
        same key, a different target)."""
        head = self.registry.check_direct_write(branch)
        superseded = set(self._supersedable(supersede or [], head, branch))
        checked = []
        for line, request in enumerate(requests, start=1):
            try:
                checked.append(self.with_subject(request.validated()))
            except RequestError as error:
                raise RequestError(f"request {line}: {error}" if len(requests) > 1 else str(error)) from None
        requests = checked
        self.release()
        routed = self.model()
        for line, request in enumerate(requests, start=1):
            try:
                self._check_request_tokens(routed, request)
            except RequestError as error:
                raise RequestError(f"request {line}: {error}; nothing was edited" if len(requests) > 1 else str(error)) from None
        if force:
            return
        seen: list[tuple[torch.Tensor, EditRequest, int]] = []
        for line, request in enumerate(requests, start=1):
            key = routing_key(routed, request.prompt, request.subject)
            for near in self.neighbours(key, self.routing.duplicate_distance, branch=branch):
                if near.edit not in superseded and not same_answer(near.prompt, near.target, request.prompt, request.target):
                    raise EditConflict(
                        f"request {line} contradicts active edit {near.edit[:12]} ({near.prompt!r} -> {near.target!r}) "
                        f"at distance {near.distance:.4f}; nothing was edited"
                    )
            for other_key, other, other_line in seen:
                distance = 1.0 - float(key @ other_key)
                if distance < self.routing.duplicate_distance and not same_answer(other.prompt, other.target, request.prompt, request.target):
                    raise EditConflict(f"requests {other_line} and {line} contradict each other (distance {distance:.4f}); nothing was edited")
            seen.append((key, request, line))

    def _advance_head_index(self, branch: str, commit: Commit, edit_id: str, removed: list[str]) -> None:
        """Keep the in-memory head index current without rebuilding it (batches of edits)."""
        cached = self._head_index.get(branch)
        if cached is None or cached[0] != commit.parent_id:
            self._head_index.pop(branch, None)
            return
        _, search, key_edit, revoked = cached
        rows = self.registry.catalog.edit_key_rows(edit_id)
        keys = self.registry.edit_keys(edit_id)
        search.add(keys[[r[1] for r in rows]], np.array([r[0] for r in rows], dtype=np.int64))
        key_edit.update({r[0]: edit_id for r in rows})
        gone = [k for k, e in key_edit.items() if e in removed]
        if gone:
            search.remove(np.array(gone, dtype=np.int64))
            for k in gone:
                del key_edit[k]
        self._head_index[branch] = (commit.commit_id, search, key_edit, revoked)

    def set_active(self, edit: str, active: bool, reason: str, author: str | None = None, branch: str = MAIN) -> Commit:
        check_notes(author, reason)
        with self.writing() as registry:
            edit_id = registry.resolve_edit(edit)
            commit = registry.set_active(edit_id, active, author or default_author(), reason, branch)
            self._relabel_head_index(branch, commit, edit_id, active)
        return commit

    def _relabel_head_index(self, branch: str, commit: Commit, edit_id: str, active: bool) -> None:
        """With tombstones a revoke keeps the edit's keys in the index and only relabels them, as
        does restoring a tombstoned edit; anything else (delete mode, restoring a superseded
        edit) rebuilds the head index on next use."""
        cached = self._head_index.get(branch)
        if cached is None or cached[0] != commit.parent_id or not self.registry.tombstones or (active and edit_id not in cached[3]):
            self._head_index.pop(branch, None)
            return
        revoked = cached[3] - {edit_id} if active else cached[3] | {edit_id}
        self._head_index[branch] = (commit.commit_id, cached[1], cached[2], frozenset(revoked))

