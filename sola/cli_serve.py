"""`sola serve`: the OpenAI-compatible server (sola/server.py) as a command."""

from __future__ import annotations

from pathlib import Path

import click

from registry.model import RegistryError
from sola.cli import failures, main, registry_path


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to bind (0: any free port).")
@click.option("--follow", default="main", show_default=True, help="Branch served when a request names no model, kept ready as it moves.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the model runs (auto: cuda when available).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True,
              help="Model weights' dtype.")
@click.option("--max-batch", type=click.IntRange(1, 256), default=8, show_default=True, help="Sequences per forward pass.")
@click.option("--max-tokens", "max_tokens_limit", type=click.IntRange(1, 32768), default=512, show_default=True,
              help="Largest max_tokens a request may ask for.")
@click.option("--max-concurrency", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Requests in flight before the server answers 429.")
@click.option("--token-env", default=None, help="Require `Authorization: Bearer <token>` (the value of this environment variable) on every route but /healthz.")
@click.option("--roles", "roles_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON file {token: {name, role}} with roles viewer, reviewer, admin (tokens are then required).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads for torch (default: torch's choice).")
@click.option("--console", is_flag=True, help="Also serve the governance console under /console/.")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, follow: str, device: str, dtype: str, max_batch: int, max_tokens_limit: int,
          max_concurrency: int, token_env: str | None, roles_file: Path | None, threads: int | None, console: bool) -> None:
    """Serve the routed model over the OpenAI HTTP API at any revision, following a branch."""
    with failures():
        import torch
        import uvicorn

        from sola.server import Identity, ServeConfig, Server, create_app, load_roles, token_from_env

        if threads is not None:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise RegistryError("--device cuda: no CUDA device is available")
        tokens = load_roles(roles_file) if roles_file is not None else {}
        api_token = token_from_env(token_env)
        if api_token is not None:
            tokens[api_token] = Identity(f"${token_env}", "viewer")
        config = ServeConfig(registry_path(ctx), follow=follow, device=device, dtype=dtype, max_batch=max_batch,
                             max_tokens_limit=max_tokens_limit, max_concurrency=max_concurrency, tokens=tokens, console=console)
        app = create_app(Server(config))
    click.echo(f"serving {registry_path(ctx)} on http://{host}:{port} (following {follow})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", limit_concurrency=max_concurrency * 2, timeout_keep_alive=5)
