"""Edit-set commands: branch, cherry-pick, revert, merge, snapshot, protect, review, blame.

Thin click layers over `registry.store.Registry` and `registry.editsets`; registered on the
`sola` group by `sola.cli`. Only `blame` loads the model (one key computation for the prompt).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from registry.model import MAIN, RegistryError
from sola.cli import branch_option, emit, failures, json_option, main, open_registry, open_workspace, wait_option

author_option = click.option("--author", default=None, help="Who does this (default: $SOLA_AUTHOR or the login name).")


def _author(author: str | None) -> str:
    from sola.config import default_author  # not sola.workspace: these commands load no model (no torch)
    from sola.data import check_notes

    check_notes(author, None)
    return author or default_author()


@main.command()
@click.argument("name", required=False)
@click.argument("rev", required=False)
@click.option("--delete", "delete", is_flag=True, help="Delete branch NAME (its commits stay; refused for main and protected branches).")
@click.option("--force", is_flag=True, help="With --delete: also when no other branch or tag reaches its commits.")
@author_option
@wait_option
@json_option
@click.pass_context
def branch(ctx: click.Context, name: str | None, rev: str | None, delete: bool, force: bool, author: str | None, wait: float,
           as_json: bool) -> None:
    """List branches; create branch NAME at REV (default main); or --delete NAME."""
    with failures():
        if name is None:
            if delete or rev is not None:
                raise RegistryError("name the branch")
            with open_registry(ctx) as registry:
                document: Any = registry.branches()
            emit(as_json, document, lambda: [click.echo(
                f"{b['name']:<24} {b['commit'][:12]}" + (f"  protected ({b['reviews']} review(s))" if b["protected"] else ""))
                for b in document])
            return
        with open_registry(ctx, writable=True, wait=wait) as registry:
            if delete:
                if rev is not None:
                    raise RegistryError("--delete takes only the branch name")
                head = registry.delete_branch(name, _author(author), force)
                document = {"deleted": name, "commit": head.commit_id}
            else:
                commit = registry.resolve(MAIN if rev is None else rev)
                registry.create_branch(name, commit, _author(author))
                document = {"name": name, "commit": commit.commit_id, "protected": False}
    emit(as_json, document, lambda: click.echo(
        f"deleted branch {name} (was {document['commit'][:12]})" if delete else f"branch {name} at {document['commit'][:12]}"))


@main.command("cherry-pick")
@click.argument("edits", nargs=-1, required=True)
@click.option("--onto", required=True, help="Branch that receives the edits.")
@click.option("--reason", default=None, help="Why (kept in the audit log).")
@click.option("--force", is_flag=True, help="Add edits even when they contradict an active edit of the branch.")
@author_option
@wait_option
@json_option
@click.pass_context
def cherry_pick(ctx: click.Context, edits: tuple[str, ...], onto: str, reason: str | None, force: bool, author: str | None,
                wait: float, as_json: bool) -> None:
    """Add existing EDITS (same ids and artifacts, no retraining) to a branch in one commit."""
    from registry.editsets import cherry_pick as pick, neighbours_at

    with failures():
        with open_registry(ctx, writable=True, wait=wait) as registry:
            commit = pick(registry, list(edits), onto, _author(author), reason, force)
            picked = [e for e, _ in registry.changes(commit.commit_id)]
            document = dict(commit.to_dict(), branch=onto, edits=picked, neighbours=neighbours_at(registry, commit, picked))

    def human() -> None:
        click.echo(f"cherry-picked {len(document['edits'])} edit(s) onto {onto}: commit {document['commit'][:12]}")
        for near in document["neighbours"]:
            click.echo(f"warning: {near['edit'][:12]} lies within the routing radius of {near['neighbour'][:12]} "
                       f"(distance {near['distance']:.4f})", err=True)

    emit(as_json, document, human)


@main.command()
@click.argument("commit")
@branch_option
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@author_option
@wait_option
@json_option
@click.pass_context
def revert(ctx: click.Context, commit: str, branch: str, reason: str, author: str | None, wait: float, as_json: bool) -> None:
    """A new commit on a branch that undoes what COMMIT changed."""
    from registry.editsets import revert as undo

    with failures():
        with open_registry(ctx, writable=True, wait=wait) as registry:
            reverted = registry.resolve(commit).commit_id  # before the revert moves the branch COMMIT may name
            made = undo(registry, reverted, branch, _author(author), reason)
            document = dict(made.to_dict(), branch=branch, reverted=reverted)
    emit(as_json, document, lambda: click.echo(f"reverted {document['reverted'][:12]} on {branch}: commit {document['commit'][:12]}"))


def _parse_resolutions(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        edit, sep, side = value.partition("=")
        if not sep or not edit or side not in ("ours", "theirs"):
            raise RegistryError(f"--resolve {value!r}: expected EDIT=ours or EDIT=theirs")
        out[edit] = side
    return out


@main.command()
@click.argument("source")
@click.option("--into", "into", required=True, help="Target branch.")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--resolve", "resolutions", multiple=True, help="Settle a conflict: EDIT=ours or EDIT=theirs (repeatable).")
@author_option
@wait_option
@json_option
@click.pass_context
def merge(ctx: click.Context, source: str, into: str, reason: str, resolutions: tuple[str, ...], author: str | None, wait: float,
          as_json: bool) -> None:
    """Three-way merge of SOURCE's edit set into a branch, from their merge base.

    Conflicts (an edit revoked on one side and kept on the other; two sides adding contradicting
    edits) block the merge with exit 1 and nothing written; --json lists them."""
    from registry.editsets import MergeConflict, merge as run_merge

    conflict: MergeConflict | None = None
    with failures():
        with open_registry(ctx, writable=True, wait=wait) as registry:
            try:
                document = run_merge(registry, source, into, _author(author), reason, _parse_resolutions(resolutions))
            except MergeConflict as error:
                conflict, document = error, error.report
    if conflict is not None:
        emit(as_json, document, lambda: [click.echo(f"conflict ({c['kind']}): " + ", ".join(e[:12] for e in c["edits"]), err=True)
                                         for c in document["conflicts"]])
        click.echo(f"error: {conflict}", err=True)
        sys.exit(1)

    def human() -> None:
        if document["up_to_date"]:
            click.echo(f"{into} already contains {source}")
            return
        how = "fast-forward" if document["fast_forward"] else "merge commit"
        click.echo(f"merged {source} into {into} ({how} {document['commit'][:12]}): +{len(document['added'])} -{len(document['removed'])}")
        for warning in document["warnings"]:
            click.echo(f"warning: {warning['message']}: " + ", ".join(e[:12] for e in warning["edits"]), err=True)
        for duplicate in document["duplicates"]:
            click.echo(f"note: both sides added the same fact; kept {duplicate['kept'][:12]}, left out {duplicate['dropped'][:12]}", err=True)

    emit(as_json, document, human)


@main.command()
@click.argument("name")
@click.option("--from", "from_rev", required=True, help="Revision whose active edits are the starting set.")
@click.option("--include", multiple=True, help="Also hold this existing edit (repeatable).")
@click.option("--exclude", multiple=True, help="Leave out this active edit (repeatable).")
@click.option("--where", default=None,
              help="Keep only edits for which this boolean SQL expression over the edits columns holds "
                   "(edit_id, prompt, target, subject, author, reason, source, created_at, n_keys).")
@click.option("--force", is_flag=True, help="Include edits even when they contradict the chosen set.")
@author_option
@wait_option
@json_option
@click.pass_context
def snapshot(ctx: click.Context, name: str, from_rev: str, include: tuple[str, ...], exclude: tuple[str, ...], where: str | None,
             force: bool, author: str | None, wait: float, as_json: bool) -> None:
    """Create branch NAME whose head holds exactly the chosen edit set."""
    from registry.editsets import snapshot as make_snapshot

    with failures():
        with open_registry(ctx, writable=True, wait=wait) as registry:
            document = make_snapshot(registry, name, from_rev, _author(author), list(include), list(exclude), where, force)
    def human() -> None:
        click.echo(f"branch {name} at {document['commit'][:12]}: {len(document['edits'])} edit(s)")
        for taken in document["answered_by_others"]:
            click.echo(f"warning: {taken['input']!r} of left-out edit {taken['left'][:12]} is answered by {taken['edit'][:12]} "
                       f"({taken['prompt']!r} -> {taken['target']!r}, distance {taken['distance']:.4f} < radius {taken['radius']:.4f})",
                       err=True)

    emit(as_json, document, human)


@main.command()
@click.argument("branch_name", metavar="BRANCH")
@click.option("--reviews", type=click.IntRange(1, 100), default=None, help="Approvals a merge into BRANCH needs.")
@click.option("--off", is_flag=True, help="Lift the protection.")
@click.option("--reason", default=None, help="Why (kept in the audit log).")
@author_option
@wait_option
@json_option
@click.pass_context
def protect(ctx: click.Context, branch_name: str, reviews: int | None, off: bool, reason: str | None, author: str | None, wait: float,
            as_json: bool) -> None:
    """Protect BRANCH: direct writes are refused; it changes only by reviewed merges."""
    with failures():
        if off == (reviews is not None):
            raise RegistryError("give --reviews N or --off")
        with open_registry(ctx, writable=True, wait=wait) as registry:
            registry.protect(branch_name, 0 if off else reviews, _author(author), reason)
            document = {"branch": branch_name, "protected": not off, "reviews": 0 if off else reviews}
    emit(as_json, document, lambda: click.echo(f"{branch_name}: " + ("unprotected" if off else f"protected, {reviews} review(s) per merge")))


@main.group()
def review() -> None:
    """Approve or reject a branch's head for merging into a protected branch; list reviews."""


def _record_review(ctx: click.Context, verdict: str, source: str, into: str, author: str, reason: str | None, commit: str | None,
                   wait: float, as_json: bool) -> None:
    with failures():
        with open_registry(ctx, writable=True, wait=wait) as registry:
            made = registry.review(source, into, author, verdict, reason, commit)
            document = dict(made.to_dict(), approvals=len(registry.approvals(source, into)), required=registry.protection(into))
    done = {"approve": "approved", "reject": "rejected"}[verdict]
    emit(as_json, document, lambda: click.echo(
        f"{done} {source} at {document['source_commit'][:12]} for {into} ({document['approvals']}/{document['required']} approvals)"))


for _verdict in ("approve", "reject"):
    def _command(ctx: click.Context, source: str, into: str, author: str, reason: str | None, commit: str | None, wait: float,
                 as_json: bool, _verdict: str = _verdict) -> None:
        _record_review(ctx, _verdict, source, into, author, reason, commit, wait, as_json)

    _command.__doc__ = f"{_verdict.capitalize()} SOURCE's current head for merging into --into."
    for decorator in (click.pass_context, json_option, wait_option,
                      click.option("--commit", default=None, help="The head you reviewed; refused if SOURCE has moved since."),
                      click.option("--reason", default=None, help="Why (kept in the audit log)."),
                      click.option("--author", required=True, help="The reviewer (must not have written the proposal)."),
                      click.option("--into", "into", required=True, help="The protected branch."),
                      click.argument("source")):
        _command = decorator(_command)
    review.command(_verdict)(_command)


@review.command("list")
@click.option("--into", "into", default=None, help="Only reviews for merging into this branch.")
@json_option
@click.pass_context
def review_list(ctx: click.Context, into: str | None, as_json: bool) -> None:
    """Every review, with whether it is stale (its source branch moved since)."""
    with failures():
        with open_registry(ctx) as registry:
            heads = {b["name"]: b["commit"] for b in registry.branches()}
            document = [r.to_dict(heads.get(r.source, "")) for r in registry.reviews() if into is None or r.target == into]
    emit(as_json, document, lambda: [click.echo(
        f"{r['time']}  {r['author']:<12} {r['verdict']:<8} {r['source']} -> {r['target']} at {r['source_commit'][:12]}"
        + ("  [stale]" if r["stale"] else "")) for r in document])


@main.command()
@click.argument("prompt")
@click.option("--branch", "branch_name", default=MAIN, show_default=True, help="Branch (or any revision) whose history to follow.")
@click.option("--generate", "with_text", is_flag=True, help="Also generate the answer at each point (runs the model per entry).")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=16, show_default=True, help="With --generate: tokens per answer.")
@json_option
@click.pass_context
def blame(ctx: click.Context, prompt: str, branch_name: str, with_text: bool, max_new_tokens: int, as_json: bool) -> None:
    """The answer history of PROMPT along a branch: every commit at which the edit answering it changed."""
    from registry.blame import blame as find_blame
    from sola.workspace import check_tokens

    with failures():
        if not prompt.strip():
            raise RegistryError("empty prompt")
        with open_workspace(ctx, writable=False) as workspace:
            head = workspace.registry.resolve(branch_name)
            workspace.release()  # no lock held while the model loads
            routed = workspace.serving_model()  # read-only: the inference core where the family has one
            check_tokens(routed, prompt, "prompt", extra=max_new_tokens if with_text else 0)
            query = routed.query_of(prompt)  # the query the prompt routes by
            document = find_blame(workspace.registry, query, head)
            workspace.release()
            if with_text:
                for entry in document:
                    entry["text"] = workspace.generate([prompt], entry["commit"], None, max_new_tokens)[0].text

    def human() -> None:
        if not document:
            click.echo(f"no edit has answered this prompt on {branch_name}")
        for entry in document:
            who = (f"edit {entry['edit'][:12]} ({entry['prompt']!r} -> {entry['target']!r})" if entry["edit"]
                   else f"base model (tombstone of {entry['tombstone'][:12]})" if entry["tombstone"] else "base model")
            click.echo(f"{entry['commit'][:12]}  {entry['time']}  {entry['author']:<12} {entry['op']:<11} {who}"
                       + (f"  ({entry['reason']})" if entry["reason"] else "") + (f"\n    {prompt}{entry['text']}" if "text" in entry else ""))
            lineage = entry.get("lineage")
            while lineage:  # rebased: where the edit came from, back to the registry it was first made in
                origin = lineage.get("origin_edit") or {}
                click.echo(f"    derived from edit {lineage['edit'][:12]} of {lineage.get('path')} (base {lineage['base_model'].get('name')})"
                           + (f", made by {origin.get('author')} at {origin.get('created_at')}" if origin else ", origin not reachable"))
                for moment in lineage.get("origin_history", []):
                    click.echo(f"      {moment['commit'][:12]}  {moment['time']}  {moment['author']:<12} {moment['op']:<9} {moment['state']}"
                               + (f"  ({moment['reason']})" if moment["reason"] else ""))
                lineage = lineage.get("origin_lineage")

    emit(as_json, document, human)
