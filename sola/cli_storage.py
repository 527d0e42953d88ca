"""`sola migrate-storage`: copy a registry between local files and shared backends (registry/migrate_storage.py)."""

from __future__ import annotations

from pathlib import Path

import click

from registry.storage import Storage
from sola.cli import StageProgress, emit, failures, json_option, main, open_registry, wait_option


@main.command("migrate-storage")
@click.option("--to", "target", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The new registry directory (it must not hold a registry).")
@click.option("--to-catalog", default=None, metavar="URL",
              help="Catalog of the copy: postgresql://USER@HOST:PORT/DB[?schema=S] (default: registry.duckdb in --to).")
@click.option("--to-objects", default=None, metavar="URL",
              help="Objects of the copy: s3://BUCKET/PREFIX[?endpoint_url=URL] (default: objects/ in --to).")
@wait_option
@json_option
@click.pass_context
def migrate_storage_command(ctx: click.Context, target: Path, to_catalog: str | None, to_objects: str | None, wait: float,
                            as_json: bool) -> None:
    """Copy this registry to other storage with every id unchanged, then verify the copy.

    Local to shared: `--to DIR --to-catalog postgresql://... --to-objects s3://...`; shared back
    to local: `--to DIR` alone. The source is read under its writer lock and never changed."""
    from registry.migrate_storage import migrate_storage

    with failures():
        storage = Storage(to_catalog, to_objects).check()
        with open_registry(ctx, writable=True, wait=wait) as source, StageProgress() as progress:
            document = migrate_storage(source, target, storage, progress)
    emit(as_json, document, lambda: click.echo(
        f"copied {document['commits']} commits, {document['rows']} rows and {document['objects_copied']} objects "
        f"to {document['to']} (catalog {document['catalog']}, objects {document['objects']}); "
        f"ids unchanged: {'yes' if document['ids_unchanged'] else 'NO'}; verify: {'ok' if document['verify']['ok'] else 'FAILED'}"))
    if not document["verify"]["ok"]:
        for problem in document["verify"]["problems"][:20]:
            click.echo(f"  {problem}", err=True)
        ctx.exit(1)
