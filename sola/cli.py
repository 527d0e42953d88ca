"""The `sola` command line: a thin click layer over `Workspace` and `Registry`.

Every command that prints records takes `--json` (one JSON document on stdout). Every
failure is one `error:` line on stderr and a non-zero exit; set SOLA_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import click

# OpenMP threads that spin while they wait make a short forward pass 3-5x slower whenever other
# processes share the cores (docs/results.md, "Start-up"); set before torch loads, and a
# user's own OMP_WAIT_POLICY wins
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from registry.db import RegistryLocked
from registry.objects import CorruptObject
from registry.storage import registry_exists
from registry.store import Registry, RegistryError
from sola.config import (DEFAULT_BATCH, DEVICES, KEY_FUNCTIONS, MAX_BATCH, MAX_LAYER, MAX_LR, MAX_RADIUS_RATIO, MAX_RANK, MAX_STEPS, MAX_STOP_LOSS,
                         MAX_CONTEXTS, MAX_RELATION_KL, MAX_RELATION_PROMPTS,
                         TrainConfig, default_author, resolve_device)
from sola.data import MAX_AUTHOR_CHARS, MAX_NOTE_CHARS, MAX_TEXT_CHARS, EditRequest, RequestError, check_notes, check_text, read_jsonl
from sola.modelio import ModelError


class Failure(click.ClickException):
    """A user-facing failure, rendered by SolaGroup as a single `error:` line."""


KNOWN_ERRORS = (RegistryError, RegistryLocked, RequestError, ModelError, CorruptObject, ValueError, OSError)


@contextmanager
def failures() -> Iterator[None]:
    """Turn any failure into one `error:` line; nothing has been committed when it fires."""
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except KNOWN_ERRORS as error:
        if os.environ.get("SOLA_DEBUG"):
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise Failure(message) from None
    except Exception as error:  # noqa: BLE001 - the contract is one line, never a traceback
        if os.environ.get("SOLA_DEBUG"):
            raise
        raise Failure(f"internal error ({type(error).__name__}): {str(error).splitlines()[0] if str(error) else ''}") from None


def finite_json(document: Any) -> Any:
    """The document with every NaN or infinite float as null: JSON has no such numbers (an edit
    stored by an older release may hold a NaN loss in its provenance)."""
    if isinstance(document, float):
        return document if math.isfinite(document) else None
    if isinstance(document, dict):
        return {key: finite_json(value) for key, value in document.items()}
    if isinstance(document, (list, tuple)):
        return [finite_json(value) for value in document]
    return document


def dumps(document: Any) -> str:
    return json.dumps(finite_json(document), indent=2, default=str, allow_nan=False)


def emit(as_json: bool, document: Any, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(dumps(document))
    else:
        human()


class FiniteFloat(click.ParamType):
    """A float option that refuses nan, inf and anything outside [low, high] (or (low, high]
    with `low_open`) while parsing, i.e. before any work."""

    name = "number"

    def __init__(self, low: float, high: float, low_open: bool = False) -> None:
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{str(value)[:80]!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number", param, ctx)
        if number < self.low or (self.low_open and number == self.low) or number > self.high:
            low = f"{self.low:g}<x" if self.low_open else f"{self.low:g}<=x"
            self.fail(f"{number:g} is not in the range {low}<={self.high:g}", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"FiniteFloat({self.low}, {self.high})"


INT64_MAX = 2**63 - 1
MAX_WAIT = 86_400.0  # --wait: a day at most (and never nan, which waited forever)
MAX_NEW_TOKENS = 32_768  # also bounded by the model's context once it is loaded
# per option, the longest text argument taken (others: MAX_TEXT_CHARS); names are bounded by
# registry.revisions (200), prompts and targets further by the model's context
ARGUMENT_LIMITS = {"author": MAX_AUTHOR_CHARS, "reason": MAX_NOTE_CHARS, "source": MAX_NOTE_CHARS}
ECHO_CHARS = 80  # an over-long argument is cut to this many characters in an error line

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
wait_option = click.option("--wait", "wait", type=FiniteFloat(0.0, MAX_WAIT), default=30.0, show_default=True,
                           help="Seconds to wait while another sola process commits (writers hold the lock only to commit).")
READ_WAIT = 10.0  # a reading command retries this long while another process commits
batch_option = click.option("--batch", "batch", type=click.IntRange(1, MAX_BATCH), default=DEFAULT_BATCH, show_default=True,
                            help="Train up to N edits at once (each its own LoRA and early stop; 1 = one after another). "
                                 "Commits stay one per edit, in order.")
device_option = click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
                             help="Where the model trains: cpu, cuda, or auto (cuda when available).")
branch_option = click.option("--branch", default="main", show_default=True, help="Branch to write to (protected branches change only by merge).")


def training_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """How each edit's LoRA is fitted, shared by `init` (the registry's default), `edit`, `eval`
    and `rebase`, so a benchmark recipe (zsRE's stricter fit, say) is reproduced by the flags it
    was measured with. The command receives `training`: the TrainConfig fields the user set
    (unset flags fall back to the registry's default, then TrainConfig's)."""
    defaults = TrainConfig()
    fields = {"steps": "max_steps", "lr": "lr", "stop_loss": "stop_loss", "contexts": "contexts",
              "relation_prompts": "relation_prompts", "relation_kl": "relation_kl"}
    options = [
        click.option("--steps", type=click.IntRange(0, MAX_STEPS), default=None,
                     help=f"Maximum training steps, 0 to {MAX_STEPS} (default: the registry's, else {defaults.max_steps})."),
        click.option("--lr", type=FiniteFloat(0.0, MAX_LR, low_open=True), default=None,
                     help=f"Learning rate, in (0, {MAX_LR:g}] (default: the registry's, else {defaults.lr})."),
        click.option("--stop-loss", type=FiniteFloat(0.0, MAX_STOP_LOSS, low_open=True), default=None,
                     help="Stop once the target loss is under this and every target token is the argmax "
                          f"(default: the registry's, else {defaults.stop_loss})."),
        click.option("--contexts", type=click.IntRange(0, MAX_CONTEXTS), default=None,
                     help=f"Also fit the target after this many generic context sentences, 0 to {MAX_CONTEXTS} "
                          f"(paraphrase reach; default: the registry's, else {defaults.contexts})."),
        click.option("--relation-prompts", type=click.IntRange(0, MAX_RELATION_PROMPTS), default=None,
                     help="Other-relation prompts of the subject held to the base model during training "
                          f"(needs a subject and --relation-kl; default: the registry's, else {defaults.relation_prompts})."),
        click.option("--relation-kl", type=FiniteFloat(0.0, MAX_RELATION_KL), default=None,
                     help="Weight of the KL to the base model on those prompts; an edit also stops only when they keep "
                          f"their base answer (default: the registry's, else {defaults.relation_kl:g})."),
    ]

    @functools.wraps(command)
    def with_training(*args: Any, **kwargs: Any) -> Any:
        kwargs["training"] = {field: kwargs.pop(flag) for flag, field in fields.items() if kwargs.get(flag) is not None}
        for flag in fields:
            kwargs.pop(flag, None)
        return command(*args, **kwargs)

    for option in reversed(options):
        with_training = option(with_training)
    return with_training


def registry_path(ctx: click.Context) -> Path:
    return Path(ctx.obj["registry"])


def open_workspace(ctx: click.Context, writable: bool, wait: float = READ_WAIT, device: str = "cpu"):  # -> Workspace
    from sola.workspace import Workspace

    return Workspace.open(registry_path(ctx), writable=writable, wait_seconds=wait, device=device)


def open_registry(ctx: click.Context, writable: bool = False, wait: float = READ_WAIT) -> Registry:
    return Registry.open(registry_path(ctx), writable=writable, wait_seconds=wait)


def check_arguments(command: click.Command, ctx: click.Context) -> None:
    """Every text argument is valid Unicode (undecodable UTF-8 bytes arrive as lone surrogates;
    file paths may hold them) and not longer than its option's limit, before any work."""
    for param in command.params:
        value = ctx.params.get(param.name or "")
        values = value if isinstance(value, (tuple, list)) else (value,)
        label = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
        limit = ARGUMENT_LIMITS.get(param.name or "", MAX_TEXT_CHARS)
        for item in values:
            if not isinstance(item, str):
                continue
            if len(item) > limit:
                raise click.UsageError(f"{label} is {len(item)} characters long; the limit is {limit}")
            if not isinstance(param.type, click.Path):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise click.UsageError(f"{label} is not valid UTF-8 text") from None


def cut_arguments(message: str, arguments: list[str]) -> str:
    """The error line with each over-long argument it echoes cut to ECHO_CHARS characters."""
    for argument in sorted({a for a in arguments if isinstance(a, str) and len(a) > ECHO_CHARS}, key=len, reverse=True):
        short = argument[:ECHO_CHARS] + "..."
        message = message.replace(repr(argument), repr(short)).replace(argument, short)
    return message if len(message) <= 2000 else message[:2000] + "..."


class SolaCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        check_arguments(self, ctx)
        return rest


class SolaGroup(click.Group):
    """A click group whose usage errors also follow the contract: one `error:` line, non-zero exit."""

    command_class = SolaCommand
    group_class = type  # subgroups (`sola review`) are SolaGroups too

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        check_arguments(self, ctx)
        return rest

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        given = args[0] if args else kwargs.get("args")
        arguments = [str(a) for a in (sys.argv[1:] if given is None else given)]
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except click.ClickException as error:
            message = error.format_message().splitlines()[0] if error.format_message() else type(error).__name__
            click.echo(f"error: {cut_arguments(message, arguments)}", err=True)
            sys.exit(error.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=SolaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--registry",
    envvar="SOLA_REGISTRY",
    default=".sola",
    show_default=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Registry directory (env SOLA_REGISTRY).",
)
@click.option("--witness", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append a checkpoint to this file after every write; `verify` checks it (env SOLA_WITNESS; docs/integrity.md).")
@click.pass_context
def main(ctx: click.Context, registry: str, witness: Path | None = None) -> None:
    """sola: an edit registry and versioned knowledge store for language models."""
    ctx.ensure_object(dict)
    ctx.obj["registry"] = registry
    if witness is not None:
        from registry.checkpoint import witness_for

        ctx.with_resource(witness_for(witness))


@main.command()
@click.option("--model", default=None, help="Base model: default (SmolLM2), gemma3 (Gemma 3 270M), a .gguf file or a Hugging Face directory.")
@click.option("--layer", type=click.IntRange(0, MAX_LAYER), default=None, help="Block whose MLP projection is edited (default: the model family's studied block for the key function; docs/concepts.md, Model families).")
@click.option("--module", default=None, help="Projection inside the block (default mlp.up_proj, GPT-2 mlp.c_fc).")
@click.option("--rank", type=click.IntRange(1, MAX_RANK), default=None, help="LoRA rank per edit.")
@click.option("--threshold", type=FiniteFloat(0.0, 2.0, low_open=True), default=None, help="Routing radius (cosine distance, in (0, 2]; default: 0.14 for subject keys, the model family's for mean keys).")
@click.option("--radius-ratio", type=FiniteFloat(0.0, MAX_RADIUS_RATIO), default=None,
              help="Shrink a key's radius to this times its distance to the nearest other edit's key (0 = off; "
                   "default: 1 for subject keys, 0.5 for mean keys).")
@click.option("--key-function", type=click.Choice(list(KEY_FUNCTIONS)), default=None,
              help="How the prompt becomes a key: subject (a two-part key on the edit's --subject, inferred from the "
                   "prompt when not given; the default for Llama-family models such as the bundled SmolLM2), mean "
                   "(the default for other families; keeps an edited subject's other relations), or last.")
@click.option("--revoke-mode", type=click.Choice(["tombstone", "delete"]), default=None,
              help="tombstone (default): a revoked edit's keys keep their inputs and send them to the base model; "
                   "delete: the keys leave routing, so a neighbouring edit may answer those inputs.")
@click.option("--name-ends/--no-name-ends", "name_ends", default=None,
              help="Subject keys: a query meets a key only where a name may end, so a \"David\" edit does not fire on "
                   "\"David Bowie plays\" (default: on for subject keys).")
@training_options
@click.option("--author", default=None, help="Who creates the registry (default: $SOLA_AUTHOR or the login name).")
@click.option("--catalog", default=None, metavar="URL",
              help="A shared catalog: postgresql://USER@HOST:PORT/DB[?schema=S] (default: registry.duckdb in the directory).")
@click.option("--objects", default=None, metavar="URL",
              help="Shared objects: s3://BUCKET/PREFIX[?endpoint_url=URL] (default: objects/ in the directory).")
@click.option("--join", is_flag=True, help="Point this directory at an existing shared registry (--catalog) instead of creating one.")
@json_option
@click.pass_context
def init(ctx: click.Context, model: str | None, layer: int | None, module: str | None, rank: int | None,
         threshold: float | None, radius_ratio: float | None, key_function: str | None, revoke_mode: str | None,
         name_ends: bool | None, training: dict[str, Any], author: str | None, catalog: str | None,
         objects: str | None, join: bool, as_json: bool) -> None:
    """Create a registry on a base model (the bundled SmolLM2-135M-Instruct by default), in the
    directory or on shared backends (docs/scaling.md); `--join` attaches a directory to one."""
    from registry.storage import Storage
    from sola.workspace import Workspace

    with failures():
        storage = Storage(catalog, objects).check()
        if join:
            chosen = [name for name, value in (("--model", model), ("--layer", layer), ("--module", module), ("--rank", rank),
                                               ("--threshold", threshold), ("--radius-ratio", radius_ratio),
                                               ("--key-function", key_function), ("--revoke-mode", revoke_mode),
                                               ("--name-ends" if name_ends else "--no-name-ends", name_ends))
                      if value is not None] + [f"--{name.replace('_', '-')}" for name in training]
            if chosen:
                raise RequestError(f"--join attaches to a registry that has its settings; {chosen[0]} cannot change them")
            with Registry.join(registry_path(ctx), storage) as registry:
                head = registry.head()
                document = {"registry": str(registry_path(ctx)), "joined": True, "catalog": catalog, "objects": objects,
                            "base_model": registry.base_model, "commit": head.commit_id}
            emit(as_json, document, lambda: click.echo(
                f"joined {document['registry']} to the registry on {document['base_model']['name']} at {catalog} "
                f"(main at {head.commit_id[:12]})"))
            return
        check_notes(author, None)
        routing = {k: v for k, v in {"layer": layer, "module": module, "rank": rank, "threshold": threshold,
                                      "radius_ratio": radius_ratio, "key_function": key_function,
                                      "revoke_mode": revoke_mode, "name_ends": name_ends}.items() if v is not None}
        workspace = Workspace.init(registry_path(ctx), model, routing, author or default_author(), training, storage=storage)
        with workspace:
            head = workspace.registry.head()
            document = {"registry": str(registry_path(ctx)), "base_model": workspace.registry.base_model,
                        "routing": workspace.registry.routing, "training": workspace.registry.training,
                        "commit": head.commit_id}
    emit(as_json, document, lambda: click.echo(
        f"initialised {document['registry']} on {document['base_model']['name']} "
        f"(layer {document['routing']['layer']} {document['routing']['module']}, threshold {document['routing']['threshold']})"))


def _print_outcome(outcome: dict[str, Any]) -> None:
    if outcome["duplicate"]:
        click.echo(f"duplicate of active edit {outcome['edit'][:12]}; nothing changed")
        return
    click.echo(f"edit {outcome['edit'][:12]}  commit {outcome['commit'][:12]}  ({outcome['steps']} steps, loss {outcome['loss']:.4f}, {outcome['seconds']:.2f}s)")
    if outcome["subject_inferred"]:
        click.echo(f"  subject {outcome['subject']!r} (found in the prompt; give --subject to choose another)")
    if outcome.get("keyed_on_last_tokens"):
        click.echo("  no subject found in the prompt: keyed on its last tokens, so it fires on this wording "
                   "(give --subject to key it on one)")
    for old in outcome["superseded"]:
        click.echo(f"  superseded {old[:12]}")
    for near in outcome["neighbours"]:
        click.echo(f"  neighbour {near['edit'][:12]} at {near['distance']:.4f}: {near['prompt']!r} -> {near['target']!r}")


@main.command()
@click.option("--prompt", default=None, help="The prompt whose continuation changes.")
@click.option("--target", default=None, help="The new continuation.")
@click.option("--rephrase", multiple=True, help="A paraphrase that should route to this edit (repeatable).")
@click.option("--subject", default=None, help="The subject of the fact (recorded with the edit). A subject-keyed registry keys the edit on it; without it, the prompt's longest capitalised name is taken (and recorded as inferred). It must occur in the prompt and in every --rephrase.")
@click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="JSONL of edit requests.")
@click.option("--author", default=None, help="Who made the edit (default: $SOLA_AUTHOR or the login name).")
@click.option("--reason", default=None, help="Why (kept in the audit log).")
@click.option("--source", default=None, help="Where the fact comes from (a ticket, a document).")
@click.option("--supersede", multiple=True, help="Revoke this edit in the same commit (contradiction).")
@click.option("--force", is_flag=True, help="Keep a contradicting edit beside the existing one.")
@training_options
@batch_option
@device_option
@branch_option
@wait_option
@json_option
@click.pass_context
def edit(ctx: click.Context, prompt: str | None, target: str | None, rephrase: tuple[str, ...], subject: str | None,
         file: Path | None, author: str | None, reason: str | None, source: str | None, supersede: tuple[str, ...],
         force: bool, training: dict[str, Any], batch: int, device: str, branch: str, wait: float, as_json: bool) -> None:
    """Teach the model one fact (or every line of a JSONL file, one commit per edit, in file order)."""
    from sola.workspace import PlannedEdit

    with failures():
        if file is not None and (prompt is not None or target is not None):
            raise RequestError("give either --file or --prompt/--target, not both")
        if file is not None and supersede:
            raise RequestError("--supersede names one edit to replace; use it with --prompt/--target, not --file")
        if file is not None:
            requests = read_jsonl(file)
        elif prompt is None or target is None:
            raise RequestError("--prompt and --target are required (or --file)")
        else:
            requests = [EditRequest(prompt, target, tuple(rephrase), subject).validated()]
        check_notes(author, reason, source or (str(file) if file else None))
        with open_workspace(ctx, writable=True, wait=wait, device=resolve_device(device)) as workspace:
            train = TrainConfig.resolve(workspace.registry.training, **training)
            workspace.preflight(requests, list(supersede), force, branch)
            planned = [PlannedEdit(request, author or default_author(), reason, source or (str(file) if file else None),
                                   list(supersede)) for request in requests]
            with BatchProgress(len(requests)) as progress:
                results = workspace.edit_many(planned, force, train, branch, batch=batch,
                                              on_commit=progress.committed, on_trained=progress.trained)
            outcomes = [outcome.to_dict() for outcome in results]
    document: Any = outcomes[0] if file is None else {"edits": outcomes, "count": len(outcomes)}
    emit(as_json, document, lambda: [_print_outcome(o) for o in outcomes])


class BatchProgress:
    """The bar of a batched `edit --file`: edits committed of the total, and how many are trained
    (training runs ahead of the commits, which go in file order). Silent for a single edit."""

    def __init__(self, total: int) -> None:
        self.total, self.done_training, self.bar = total, 0, None

    def trained(self, position: int) -> None:
        self.done_training += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"trained {self.done_training}", refresh=True)

    def committed(self, position: int, outcome: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def __enter__(self) -> "BatchProgress":
        if self.total > 1:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc="editing", unit="edit", file=sys.stderr, leave=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


class StageProgress:
    """One tqdm bar per stage of a long job, on stderr."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage, self.bar = stage, tqdm(total=total, desc=stage, file=sys.stderr, leave=True)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@main.command()
@click.argument("prompt")
@click.option("--rev", default=None, help="Revision: branch, tag, commit id or prefix, REV~N, REV^2, BRANCH@TIME (default main).")
@click.option("--at", "at", default=None, help="ISO time: the model as the branch given by --rev (default main) was then.")
@click.option("--snapshot", type=click.Path(file_okay=False, path_type=Path), default=None, help="An exported snapshot directory (no registry needed).")
@click.option("--max-new-tokens", type=click.IntRange(1, MAX_NEW_TOKENS), default=16, show_default=True,
              help="Tokens to generate (at most the model's context less the prompt's tokens).")
@click.option("--explain", is_flag=True, help="Say which edit fired and at what distance.")
@wait_option
@json_option
@click.pass_context
def generate(ctx: click.Context, prompt: str, rev: str | None, at: str | None, snapshot: Path | None,
             max_new_tokens: int, explain: bool, wait: float, as_json: bool) -> None:
    """Greedy completion of PROMPT by the model at a revision (default: main)."""
    with failures():
        check_text("prompt", prompt)
        if snapshot is not None:
            from sola.snapshot import load_snapshot
            from sola.workspace import check_tokens

            loaded = load_snapshot(snapshot)
            check_tokens(loaded.routed, prompt, "prompt", extra=max_new_tokens)
            generation = loaded.generate([prompt], max_new_tokens=max_new_tokens)[0]
        else:
            with open_workspace(ctx, writable=False, wait=wait) as workspace:
                generation = workspace.generate([prompt], rev, at, max_new_tokens)[0]
        result = generation.to_dict()
    def human() -> None:
        click.echo(prompt + result["text"])
        if explain:
            if result["edit"]:
                click.echo(f"[edit {result['edit'][:12]} fired at distance {result['distance']:.4f} < radius {result['radius']:.4f}]", err=True)
            elif generation.held_by_tombstone:
                click.echo(f"[no edit fired: nearest {result['nearest_edit'][:12]} at {result['distance']:.4f} < radius "
                           f"{result['radius']:.4f} is revoked; its tombstone gives the base model's output]", err=True)
            else:
                nearest = (f"nearest {result['nearest_edit'][:12]} at {result['distance']:.4f}, radius {result['radius']:.4f}"
                           if result["nearest_edit"] else "no active edits")
                click.echo(f"[no edit fired: {nearest}]", err=True)
    emit(as_json, result, human)


def _set_active(ctx: click.Context, edit: str, active: bool, reason: str, author: str | None, branch: str, wait: float,
                as_json: bool) -> None:
    # no model: the reroute report applies the routing rule to the edit's stored keys
    with failures():
        check_notes(author, reason)
        with open_registry(ctx, writable=True, wait=wait) as registry:
            edit_id = registry.resolve_edit(edit)
            head = registry.check_direct_write(branch)
            # computed before the commit (as the branch will route after it), so a failure leaves nothing committed
            still = registry.reroutes(edit_id, head, revoking=True) if not active and registry.is_active(edit_id, head) else []
            commit = registry.set_active(edit_id, active, author or default_author(), reason, branch)
            document = dict(commit.to_dict(), edit=edit_id, branch=branch)
            if not active:
                document["still_answered_by"] = [dict(r, distance=round(r["distance"], 6), radius=round(r["radius"], 6)) for r in still]

    def human() -> None:
        click.echo(f"{document['op']} {document['edit'][:12]}  commit {document['commit'][:12]}")
        for reroute in document.get("still_answered_by", []):
            click.echo(f"warning: {reroute['input']!r} is still answered by active edit {reroute['edit'][:12]} "
                       f"({reroute['prompt']!r} -> {reroute['target']!r}, distance {reroute['distance']:.4f} "
                       f"< radius {reroute['radius']:.4f}); revoke that edit too to give this input the base model's output",
                       err=True)

    emit(as_json, document, human)


@main.command()
@click.argument("edit")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--author", default=None, help="Who decided (default: $SOLA_AUTHOR or the login name).")
@branch_option
@wait_option
@json_option
@click.pass_context
def revoke(ctx: click.Context, edit: str, reason: str, author: str | None, branch: str, wait: float, as_json: bool) -> None:
    """Deactivate EDIT in a new commit; its inputs get the base model's exact output."""
    _set_active(ctx, edit, False, reason, author, branch, wait, as_json)


@main.command()
@click.argument("edit")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--author", default=None, help="Who decided (default: $SOLA_AUTHOR or the login name).")
@branch_option
@wait_option
@json_option
@click.pass_context
def restore(ctx: click.Context, edit: str, reason: str, author: str | None, branch: str, wait: float, as_json: bool) -> None:
    """Reactivate a revoked EDIT in a new commit."""
    _set_active(ctx, edit, True, reason, author, branch, wait, as_json)


@main.command()
@click.option("--limit", type=click.IntRange(0, INT64_MAX), default=None, help="Newest N commits.")
@click.option("--rev", default=None, help="List what this revision (any branch, tag or commit) reaches instead of main.")
@json_option
@click.pass_context
def log(ctx: click.Context, limit: int | None, rev: str | None, as_json: bool) -> None:
    """Commits, newest first."""
    with failures():
        with open_registry(ctx) as registry:
            commits = [c.to_dict() for c in registry.log(limit, registry.resolve(rev) if rev is not None else None)]
    emit(as_json, commits, lambda: [click.echo(f"{c['commit'][:12]}  {c['time']}  {c['author']:<12} {c['op']:<9} {c['message']}") for c in commits])


@main.command()
@click.argument("name")
@click.argument("rev", required=False)
@click.option("--author", default=None, help="Who tags (default: $SOLA_AUTHOR or the login name).")
@wait_option
@json_option
@click.pass_context
def tag(ctx: click.Context, name: str, rev: str | None, author: str | None, wait: float, as_json: bool) -> None:
    """Name a revision (default main). Tags are immutable."""
    with failures():
        check_notes(author, None)
        with open_registry(ctx, writable=True, wait=wait) as registry:
            commit = registry.resolve(rev)
            registry.tag(name, commit, author or default_author())
            document = {"tag": name, "commit": commit.commit_id}
    emit(as_json, document, lambda: click.echo(f"tagged {commit.commit_id[:12]} as {name}"))


@main.command()
@click.argument("rev_a")
@click.argument("rev_b")
@json_option
@click.pass_context
def diff(ctx: click.Context, rev_a: str, rev_b: str, as_json: bool) -> None:
    """Edits active in REV_B but not REV_A (added) and the reverse (removed)."""
    from registry.inspect import edit_summaries

    with failures():
        with open_registry(ctx) as registry:
            a, b = registry.resolve(rev_a), registry.resolve(rev_b)
            changes = registry.diff(a, b)
            document = {"from": a.commit_id, "to": b.commit_id,
                        **{kind: edit_summaries(registry, changes[kind]) for kind in ("added", "removed")}}
    def human() -> None:
        for kind, sign in (("added", "+"), ("removed", "-")):
            for item in document[kind]:
                click.echo(f"{sign} {item['edit'][:12]}  {item['prompt']!r} -> {item['target']!r}")
    emit(as_json, document, human)


@main.command()
@click.argument("ident")
@json_option
@click.pass_context
def show(ctx: click.Context, ident: str, as_json: bool) -> None:
    """An edit (full provenance, history, neighbours) or a commit (record and changes)."""
    from registry.inspect import describe_object

    with failures():
        with open_registry(ctx) as registry:
            document = describe_object(registry, ident)
    emit(as_json, document, lambda: click.echo(dumps(document)))


@main.command()
@click.option("--revoked", is_flag=True, help="Governance view: revoked facts, who revoked them, when, why, when they were live.")
@click.option("--since", default=None, help="Only operations at or after this ISO time.")
@click.option("--rev", default=None, help="Only what this revision reaches (default: every commit; with --revoked: main).")
@json_option
@click.pass_context
def audit(ctx: click.Context, revoked: bool, since: str | None, rev: str | None, as_json: bool) -> None:
    """Every operation with who, when and why: commits on every branch and reviews (or, with
    --revoked, every fact revoked at a revision)."""
    from registry.inspect import audit as audit_log, revoked_report

    with failures():
        with open_registry(ctx) as registry:
            revision = registry.resolve(rev) if rev is not None else None
            document = revoked_report(registry, since, revision) if revoked else audit_log(registry, since, revision)
    def human() -> None:
        for item in document:
            if revoked:
                spans = ", ".join(f"{s['from']} .. {s['until']}" for s in item["live"])
                click.echo(f"{item['edit'][:12]}  {item['prompt']!r} -> {item['target']!r}  revoked {item['revoked_at']} by {item['revoked_by']}: {item['reason'] or '(no reason)'}  (live {spans})"
                           + ("  [tombstone]" if item["tombstone"] else ""))
            else:
                click.echo(f"{item['time']}  {item['author']:<12} {item['op']:<9} {item['message']}" + (f"  ({item['reason']})" if item["reason"] else ""))
    emit(as_json, document, human)


@main.command()
@click.option("--rev", default=None, help="Revision to check (default main).")
@json_option
@click.pass_context
def conflicts(ctx: click.Context, rev: str | None, as_json: bool) -> None:
    """Pairs of active edits whose keys lie within the routing threshold of each other."""
    from registry.inspect import conflicts as find_conflicts

    with failures():
        with open_registry(ctx) as registry:
            document = find_conflicts(registry, registry.resolve(rev))
    emit(as_json, document, lambda: [click.echo(
        f"{p['distance']:.4f}  {p['a']['edit'][:12]} {p['a']['prompt']!r} -> {p['a']['target']!r}  |  "
        f"{p['b']['edit'][:12]} {p['b']['prompt']!r} -> {p['b']['target']!r}") for p in document] or click.echo("no conflicts"))


@main.command()
@click.option("--checkpoint", "checkpoint_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Prove the registry extends the checkpoint(s) in FILE (`sola checkpoint`; repeatable).")
@click.option("--public-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Require every --checkpoint to be signed by this Ed25519 public key (PEM).")
@click.option("--witness", "witness_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Check every checkpoint of this registry in this witness file (default: the configured witness, if any).")
@json_option
@click.pass_context
def verify(ctx: click.Context, checkpoint_files: tuple[Path, ...], public_key: Path | None, witness_file: Path | None,
           as_json: bool) -> None:
    """Integrity: object hashes, provenance vs rows, the commit and ref log hash chains, refs,
    caches; with --checkpoint or a witness, that no history before a checkpoint was removed or changed."""
    from registry import checkpoint as checkpoints
    from registry.verify import verify as run_verify

    with failures():
        if public_key is not None and not checkpoint_files:
            raise RegistryError("--public-key checks the signature of a --checkpoint FILE: give one")
        key = checkpoints.load_public_key(public_key) if public_key is not None else None
        given = [found for path in checkpoint_files for found in checkpoints.checkpoints_in(path)]
        with open_registry(ctx) as registry:
            report = run_verify(registry, given, key, witness_file or checkpoints.witness_path()).to_dict()
    def human() -> None:
        for problem in report["problems"]:
            click.echo(f"problem: {problem}")
        for note in report["notes"]:
            click.echo(f"note: {note}")
        click.echo(("ok" if report["ok"] else "FAILED") + "  " + ", ".join(f"{v} {k}" for k, v in report["checked"].items()))
    emit(as_json, report, human)
    if not report["ok"]:
        click.echo(f"error: verify found {len(report['problems'])} problem(s): {report['problems'][0]}", err=True)
        ctx.exit(1)


@main.command()
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@wait_option
@json_option
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, wait: float, as_json: bool) -> None:
    """Remove what interrupted writes left in objects/: unreferenced objects and .tmp-* files.

    Holds the write lock, so nothing it removes can belong to a write in progress; touches only
    files sola names (other files in objects/ are listed and left alone). History is unchanged."""
    from registry.verify import collect_garbage

    with failures():
        with open_registry(ctx, writable=True, wait=wait) as registry:
            document = collect_garbage(registry, remove=not dry_run)

    def human() -> None:
        verb = "would remove" if dry_run else "removed"
        for item in document["objects"]:
            click.echo(f"{verb} unreferenced object {item['object'][:12]} ({item['bytes']} bytes)")
        for item in document["temporary"]:
            click.echo(f"{verb} temporary file {item['path']} ({item['bytes']} bytes)")
        for name in document["other"]:
            click.echo(f"left alone: {name} (not a file sola wrote)", err=True)
        count = len(document["objects"]) + len(document["temporary"])
        click.echo(f"{verb} {count} file(s), {document['bytes']} bytes" if count else "nothing to remove")

    emit(as_json, document, human)


@main.command()
@click.option("--sign", "key_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Sign the checkpoint with this Ed25519 private key (PEM).")
@click.option("--new-key", "new_key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a new Ed25519 key to FILE (mode 0600) and its public key to FILE.pub, and exit.")
@json_option
@click.pass_context
def checkpoint(ctx: click.Context, key_file: Path | None, new_key: Path | None, as_json: bool) -> None:
    """Print the registry's checkpoint {registry, ref log length, head hash, time} as one line
    of canonical JSON, to keep where the writers cannot reach (docs/integrity.md)."""
    from registry import checkpoint as checkpoints

    with failures():
        if new_key is not None:
            if key_file is not None:
                raise RegistryError("give --new-key alone: it makes a key and takes no checkpoint")
            made = checkpoints.new_key(new_key)
            emit(as_json, made, lambda: click.echo(f"wrote {made['private_key']} (keep it secret) and {made['public_key']}"))
            return
        with open_registry(ctx) as registry:
            statement = checkpoints.take(registry.catalog)
        if key_file is not None:
            statement = checkpoints.sign(statement, key_file)
    click.echo(checkpoints.dumps(statement))


@main.command()
@click.argument("rev_or_time")
@click.argument("directory", type=click.Path(path_type=Path))
@json_option
@click.pass_context
def export(ctx: click.Context, rev_or_time: str, directory: Path, as_json: bool) -> None:
    """Write the snapshot at a revision (or ISO time) as a self-contained directory."""
    from registry.export import export_snapshot

    with failures():
        with open_registry(ctx) as registry:
            commit = _resolve_rev_or_time(registry, rev_or_time)
            document = export_snapshot(registry, commit, directory)
    emit(as_json, document, lambda: click.echo(f"exported {document['edits']} edits at {document['commit'][:12]} to {document['directory']}"))


def _resolve_rev_or_time(registry: Registry, text: str):  # -> Commit
    try:
        return registry.resolve(text)
    except RegistryError:
        if text[:4].isdigit() and "-" in text:
            return registry.resolve(at=text)
        raise


@main.command("export-edit")
@click.argument("edit")
@click.argument("directory", type=click.Path(path_type=Path))
@json_option
@click.pass_context
def export_edit(ctx: click.Context, edit: str, directory: Path, as_json: bool) -> None:
    """Write one edit as a standard PEFT LoRA adapter (+ key and provenance sidecars)."""
    from registry.export import export_peft

    with failures():
        with open_registry(ctx) as registry:
            document = export_peft(registry, registry.resolve_edit(edit), directory)
    emit(as_json, document, lambda: click.echo(f"exported {document['edit'][:12]} as a PEFT adapter to {document['directory']}"))


@main.command("eval")
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="CounterFact or zsRE file.")
@click.option("--limit", type=click.IntRange(1, 10_000_000), default=100, show_default=True, help="Edit the first N records.")
@click.option("--threshold", type=FiniteFloat(0.0, 2.0, low_open=True), default=None, help="Routing threshold (default: the registry's).")
@click.option("--radius-ratio", type=FiniteFloat(0.0, MAX_RADIUS_RATIO), default=None, help="Per-key radius ratio, 0 = off (default: the registry's).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, help="Seed for the rollback half.")
@click.option("--every", type=click.IntRange(0, 10_000_000), default=0, help="Measure retention of all past edits every K edits.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a PNG of the run.")
@click.option("--layer", type=click.IntRange(0, MAX_LAYER), default=None, help="Edited block (default: the registry's).")
@click.option("--key-function", type=click.Choice(list(KEY_FUNCTIONS)), default=None, help="Key function (default: the registry's).")
@click.option("--revoke-mode", type=click.Choice(["tombstone", "delete"]), default=None,
              help="What the rollback's revokes do to keys (default: the registry's).")
@click.option("--name-ends/--no-name-ends", "name_ends", default=None,
              help="Subject queries meet keys only where a name may end (default: the registry's).")
@click.option("--model", default=None, help="Base model when there is no registry (default: the registry's).")
@training_options
@batch_option
@device_option
@json_option
@click.pass_context
def eval_command(ctx: click.Context, data: Path, limit: int, threshold: float | None, radius_ratio: float | None, seed: int, every: int,
                 plot: Path | None, layer: int | None, key_function: str | None, revoke_mode: str | None,
                 name_ends: bool | None, model: str | None,
                 training: dict[str, Any], batch: int, device: str, as_json: bool) -> None:
    """Edit the first N records into a scratch registry and report the field's metrics."""
    from sola.config import RoutingConfig
    from sola.evaluate import run_eval

    with failures():
        if limit < 1:
            raise RequestError("--limit must be at least 1")
        routing: dict[str, Any] = {}
        recorded_training: dict[str, Any] = {}
        spec = model
        if registry_exists(registry_path(ctx)):
            with open_registry(ctx) as registry:
                routing = RoutingConfig.from_record(registry.routing).to_dict()
                recorded_training = registry.training
                spec = spec or registry.base_model["spec"]
        overrides = {"threshold": threshold, "radius_ratio": radius_ratio, "layer": layer, "key_function": key_function,
                     "revoke_mode": revoke_mode, "name_ends": name_ends}
        routing.update({k: v for k, v in overrides.items() if v is not None})
        if routing.get("key_function", "subject") != "subject" and name_ends is None:
            routing["name_ends"] = False  # the registry's name ends apply to its subject keys only
        RoutingConfig.from_dict(routing)  # validate the overrides before loading anything
        TrainConfig.resolve(recorded_training, **training)  # validated before anything loads
        with StageProgress() as progress:
            result = run_eval(data, spec, routing, limit=limit, seed=seed, every=every, training={**recorded_training, **training},
                              progress=progress, batch=batch, device=resolve_device(device))
        document = result.summary()
        if plot is not None:
            from sola.plots import plot_eval

            plot_eval(result, plot)
            document["plot"] = str(plot)
    emit(as_json, document, lambda: click.echo(_eval_text(document)))


def _eval_text(document: dict[str, Any]) -> str:
    """One metric per line, with its 95% bootstrap interval where one was computed."""
    intervals = document.get("intervals", {})
    lines = []
    for name, value in document.items():
        if name in ("curve", "protocol", "intervals"):
            continue
        interval = f"   (95% CI {intervals[name][0]:.3f}-{intervals[name][1]:.3f})" if name in intervals else ""
        lines.append(f"{name:>36}: {value}{interval}")
    return "\n".join(lines)


def entry() -> None:
    """The `sola` executable. Once the command is done the process only exits; freezing the
    garbage collector first spares interpreter shutdown a walk over every object torch and
    the model made, more than half of the exit of a torch-loading command
    (docs/results.md, "Start-up"). Only here: an embedding process keeps collecting."""
    import gc as collector  # `gc` in this module is the `sola gc` command

    try:
        main(obj={})
    finally:
        collector.freeze()


from sola import cli_editsets, cli_rebase, cli_serve, cli_storage  # noqa: E402,F401  (registers branch, merge, review, blame, rebase, serve, migrate-storage, ...)
