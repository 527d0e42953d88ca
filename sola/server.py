"""`sola serve`: the routed model behind an OpenAI-compatible HTTP API that follows the registry.

One process holds the base model; every request resolves its `model` field (any revision the
CLI accepts, or `REV@ISO_TIME`) to a commit once, takes that tree's snapshot from the cache, and
generates with that snapshot's bank passed to the routed layer for its call only — so requests
at different revisions run side by side and none sees two revisions. The registry is read only
in short read transactions (a poller refreshes the refs a few times a second, so a commit made
by another process is served within a second), never holding a lock a writer would wait on.

Non-streaming greedy requests for the same snapshot are batched (up to `max_batch` sequences per
forward, each routed on its own); streaming and sampled requests run alone. Nothing here writes
to the registry.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any, AsyncIterator, Iterator

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry.model import RegistryError
from registry.storage import read_storage
from registry.store import Registry
from registry.revisions import parse_revision
from sola.arch import context_length
from sola.config import RoutingConfig
from sola.layer import Routing
from sola.modelio import load_base
from sola.routed import RoutedModel
from sola.snapshots import Snapshot, SnapshotCache, reading

MAX_BODY_BYTES = 1 << 20
MAX_PROMPTS = 32
MAX_PROMPT_CHARS = 32_000
POLL_SECONDS = 0.1  # how often the ref watcher stats the catalog files (it reads only when they changed)
ROUTES = ("/healthz", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/log")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ApiError(Exception):
    """An OpenAI-style error: HTTP status, message, type and code."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "code": self.code}}, status_code=self.status)


ROLES = ("viewer", "reviewer", "admin")


@dataclass(frozen=True)
class Identity:
    """Who a bearer token belongs to, and what they may do: viewers read, reviewers also
    approve or reject proposals, admins everything a reviewer may."""

    name: str
    role: str


def load_roles(path: Path) -> dict[str, Identity]:
    """A roles file: a JSON object {token: {"name": ..., "role": viewer|reviewer|admin}}."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise RegistryError(f"--roles {path}: not a readable JSON file ({type(error).__name__})") from None
    if not isinstance(document, dict) or not document:
        raise RegistryError(f"--roles {path}: expected a JSON object {{token: {{name, role}}}}")
    out = {}
    for token, entry in document.items():
        if not isinstance(token, str) or len(token) < 8 or not isinstance(entry, dict) or entry.get("role") not in ROLES \
                or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise RegistryError(f"--roles {path}: each token (8+ characters) needs a name and a role in {ROLES}")
        out[token] = Identity(entry["name"], entry["role"])
    return out


@dataclass
class ServeConfig:
    root: Path
    follow: str = "main"
    device: str = "cpu"
    dtype: str = "float32"
    max_batch: int = 8
    max_tokens_limit: int = 512
    max_concurrency: int = 64
    tokens: dict[str, Identity] = field(default_factory=dict)  # empty: no authentication
    batch_window_seconds: float = 0.005
    console: bool = False


# --- metrics ------------------------------------------------------------------------------------
@dataclass
class Metrics:
    """Prometheus counters and a latency histogram, rendered as text exposition format."""

    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0
    tokens: int = 0
    edits_fired: int = 0
    sequences: int = 0
    batches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
            index = next((i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound), len(LATENCY_BUCKETS))
            self.latency_buckets[index] += 1
            self.latency_sum += seconds
            self.latency_count += 1

    def generated(self, tokens: int, fired: int, sequences: int) -> None:
        with self.lock:
            self.tokens += tokens
            self.edits_fired += fired
            self.sequences += sequences
            self.batches += 1

    def render(self, cache: SnapshotCache) -> str:
        with self.lock:
            lines = ["# HELP sola_requests_total HTTP requests by endpoint and status.", "# TYPE sola_requests_total counter"]
            lines += [f'sola_requests_total{{endpoint="{e}",status="{s}"}} {n}' for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP sola_request_seconds Request latency.", "# TYPE sola_request_seconds histogram"]
            running = 0
            for bound, count in zip([*LATENCY_BUCKETS, math.inf], self.latency_buckets):
                running += count
                lines.append(f'sola_request_seconds_bucket{{le="{"+Inf" if bound == math.inf else bound}"}} {running}')
            lines += [f"sola_request_seconds_sum {self.latency_sum:.6f}", f"sola_request_seconds_count {self.latency_count}"]
            for name, value, text in (("sola_tokens_generated_total", self.tokens, "Completion tokens generated."),
                                      ("sola_edits_fired_total", self.edits_fired, "Sequences an edit answered."),
                                      ("sola_sequences_total", self.sequences, "Sequences generated."),
                                      ("sola_forward_batches_total", self.batches, "Generation calls (batches)."),
                                      ("sola_snapshot_cache_hits_total", cache.hits, "Snapshot cache hits."),
                                      ("sola_snapshot_cache_misses_total", cache.misses, "Snapshots built.")):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} counter", f"{name} {value}"]
        return "\n".join(lines) + "\n"


# --- refs ---------------------------------------------------------------------------------------
class RefWatcher:
    """The registry's refs as of the last poll, and the followed branch's snapshot built as soon
    as its head moves. A poll stats the catalog's files (microseconds) and opens the catalog for
    a short read only when they changed: every commit writes to them. A shared (Postgres)
    catalog has no files here: a poll asks it for its newest ref log id (one index lookup on a
    connection the watcher keeps; its readers block no writer), and every ref move adds one."""

    def __init__(self, cache: SnapshotCache, follow: str) -> None:
        self.cache = cache
        self.follow = follow
        self.refs: dict[str, tuple[str, str]] = {}  # name -> (kind, commit id)
        self.version = 0
        self.error: str | None = None
        self._signature: tuple | None = None
        self._shared = read_storage(cache.root).catalog is not None
        self._probe: Registry | None = None  # the kept connection of a shared catalog
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sola-ref-watcher", daemon=True)

    def start(self) -> None:
        self.poll(force=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def signature(self) -> tuple:
        if self._shared:
            if self._probe is None:
                self._probe = Registry.open(self.cache.root)
            try:
                return ("reflog", self._probe.catalog.last_reflog_id())
            except Exception:
                self._probe.close()  # a broken connection is reopened on the next poll
                self._probe = None
                raise
        found = []
        for name in ("registry.duckdb", "registry.duckdb.wal"):
            try:
                stat = (self.cache.root / name).stat()
                found.append((name, stat.st_mtime_ns, stat.st_size))
            except FileNotFoundError:
                found.append((name, None, None))
        return tuple(found)

    def poll(self, force: bool = False) -> None:
        signature = self.signature()
        if not force and signature == self._signature:
            return
        with reading(self.cache.root) as registry:
            refs = {name: (kind, commit) for name, kind, commit in registry.catalog.refs()}
            if refs != self.refs:
                followed = refs.get(self.follow)
                if followed is not None:
                    self.cache.snapshot(registry, registry.commit(followed[1]))
                self.refs = refs
                self.version += 1
        self._signature = signature
        self.error = None

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.poll()
            except Exception as error:  # noqa: BLE001 - a failed poll is retried; requests still resolve themselves
                self.error = f"{type(error).__name__}: {error}"


# --- generation ---------------------------------------------------------------------------------
@dataclass
class Job:
    snapshot: Snapshot
    token_ids: list[int]
    query_mask: list[int] | None
    route_ids: list[int] | None  # a chat turn routes by its user message alone
    max_tokens: int
    temperature: float
    seed: int | None
    future: Future = field(default_factory=Future)


@dataclass
class Completion:
    text: str
    tokens: int
    finish_reason: str
    edit: str | None
    distance: float


class Generator:
    """Runs generation jobs: batches greedy jobs of one snapshot, runs the others alone."""

    def __init__(self, routed: RoutedModel, config: ServeConfig, metrics: Metrics) -> None:
        self.routed = routed
        self.config = config
        self.metrics = metrics
        self.queue: Queue[Job] = Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sola-batcher", daemon=True)
        self.eos = {routed.tokenizer.eos_token_id} - {None}
        self._model_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def submit(self, job: Job) -> Future:
        self.queue.put(job)
        return job.future

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.queue.get(timeout=0.1)
            except Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.config.batch_window_seconds
            held: list[Job] = []
            while len(batch) < self.config.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    job = self.queue.get(timeout=max(remaining, 0)) if remaining > 0 else self.queue.get_nowait()
                except Empty:
                    break
                compatible = (job.snapshot.tree_id == first.snapshot.tree_id and job.temperature == 0 == first.temperature)
                (batch if compatible else held).append(job)
            for job in held:
                self.queue.put(job)
            try:
                results = self.run(batch)
            except Exception as error:  # noqa: BLE001 - delivered to each waiting request
                for job in batch:
                    job.future.set_exception(error)
                continue
            for job, result in zip(batch, results):
                job.future.set_result(result)

    def decisions(self, jobs: list[Job]) -> Routing | None:
        """Routing decided on each job's routing tokens alone (chat turns), pinned for generation."""
        if all(job.route_ids is None for job in jobs):
            return None
        found: list[Routing] = []
        for job in jobs:
            ids = job.route_ids if job.route_ids is not None else job.token_ids
            mask = None if job.route_ids is not None else job.query_mask
            found.append(self.routed.route(ids, mask, job.snapshot.bank))
        return Routing([r.edits[0] for r in found], [r.distances[0] for r in found], [r.nearest[0] for r in found],
                       [r.radii[0] for r in found])

    def run(self, jobs: list[Job], streamer: Any = None) -> list[Completion]:
        """One generation call for jobs of one snapshot; each keeps its own token limit. Calls
        from the batcher and from streams take turns on the model: the routing capture for chat
        turns hooks the shared model, and two forwards at once would only share the same cores."""
        with self._model_lock:
            return self._generate(jobs, streamer)

    def _generate(self, jobs: list[Job], streamer: Any = None) -> list[Completion]:
        pinned = self.decisions(jobs)
        rows = [job.token_ids for job in jobs]
        width = max(len(r) for r in rows)
        pad = self.routed.tokenizer.pad_token_id
        pad = pad if pad is not None else (self.routed.tokenizer.eos_token_id or 0)
        device = self.routed.device
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long, device=device)
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=device)
        masks = [job.query_mask if job.query_mask is not None else [1] * len(job.token_ids) for job in jobs]
        query = torch.tensor([[0] * (width - len(m)) + m for m in masks], dtype=torch.long, device=device)
        scope = self.routed.scope(input_ids, query, pinned)
        temperature = jobs[0].temperature
        options: dict[str, Any] = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        if temperature > 0 and jobs[0].seed is not None:
            torch.manual_seed(jobs[0].seed)
        with torch.no_grad(), self.routed.routing_call(scope, jobs[0].snapshot.bank):
            output = self.routed.model.generate(input_ids=input_ids, attention_mask=attention, pad_token_id=pad, streamer=streamer,
                                                max_new_tokens=max(job.max_tokens for job in jobs), **options)
        decision = scope.decision or Routing.unrouted(len(jobs))
        completions = []
        for row, job in enumerate(jobs):
            generated = output[row, width:].tolist()[: job.max_tokens]
            finish = "length"
            for position, token in enumerate(generated):
                if token in self.eos:
                    generated, finish = generated[:position], "stop"
                    break
            text = self.routed.tokenizer.decode(generated, skip_special_tokens=True)
            completions.append(Completion(text, len(generated), finish, decision.edits[row], decision.distances[row]))
        self.metrics.generated(sum(c.tokens for c in completions), sum(c.edit is not None for c in completions), len(jobs))
        return completions


# --- the app ------------------------------------------------------------------------------------
class Server:
    """State shared by the HTTP handlers: the model, snapshot cache, ref watcher and generator."""

    def __init__(self, config: ServeConfig, routed: RoutedModel | None = None) -> None:
        self.config = config
        with reading(config.root) as registry:
            self.base_model = registry.base_model
            routing = RoutingConfig.from_record(registry.routing)
            if config.follow not in {n for n, _, _ in registry.catalog.refs()}:
                raise RegistryError(f"unknown branch {config.follow!r} to follow")
        if routed is None:
            model, tokenizer, _ = load_base(self.base_model["spec"], expected_sha256=self.base_model["sha256"])
            dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[config.dtype]
            routed = RoutedModel(model.to(device=config.device, dtype=dtype), tokenizer, routing)
        self.routed = routed
        self.context = context_length(routed.model)
        self.metrics = Metrics()
        self.cache = SnapshotCache(config.root, device=config.device)
        self.watcher = RefWatcher(self.cache, config.follow)
        self.generator = Generator(routed, config, self.metrics)
        self.slots = threading.BoundedSemaphore(config.max_concurrency)
        self.started = time.time()

    def start(self) -> None:
        self.watcher.start()
        self.generator.start()

    def identify(self, request: Request) -> Identity | None:
        """The identity of a request's bearer token (or, for the console, its session cookie)."""
        if not self.config.tokens:
            return Identity("anonymous", "admin")
        header = request.headers.get("authorization", "")
        given = header[7:] if header.startswith("Bearer ") else request.cookies.get("sola_token", "")
        for token, identity in self.config.tokens.items():
            if given and secrets.compare_digest(given.encode(), token.encode()):
                return identity
        return None

    def stop(self) -> None:
        self.watcher.stop()
        self.generator.stop()

    # --- revisions ------------------------------------------------------------------------------
    def snapshot(self, model: Any) -> Snapshot:
        """The snapshot a request's `model` names: a ref from the last poll, else one short read."""
        if model is None:
            model = self.config.follow
        if not isinstance(model, str) or not model.strip() or len(model) > 400:
            raise ApiError(400, "`model` must be a revision: a branch, tag, commit id, REV~N, REV^N or REV@ISO_TIME", code="invalid_model")
        ref = self.watcher.refs.get(model)
        try:
            if ref is not None:
                cached = self.cache.cached(ref[1])
                if cached is not None:
                    return cached
                with reading(self.config.root) as registry:
                    return self.cache.snapshot(registry, registry.commit(ref[1]))
            parse_revision(model)
            return self.cache.resolve(model)
        except RegistryError as error:
            raise ApiError(404, f"unknown model {model!r}: {error}", code="model_not_found") from None

    # --- request bodies -------------------------------------------------------------------------
    def limits(self, body: dict[str, Any]) -> tuple[int, float, int | None]:
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 16))
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ApiError(400, "`max_tokens` must be a positive integer", code="invalid_max_tokens")
        if max_tokens > self.config.max_tokens_limit:
            raise ApiError(400, f"`max_tokens` {max_tokens} is over this server's limit of {self.config.max_tokens_limit}",
                           code="max_tokens_over_limit")
        temperature = body.get("temperature", 0)
        if temperature is None:
            temperature = 0
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
                or not 0 <= temperature <= 2:
            raise ApiError(400, "`temperature` must be a number from 0 to 2", code="invalid_temperature")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ApiError(400, "`seed` must be an integer", code="invalid_seed")
        if body.get("n", 1) != 1:
            raise ApiError(400, "only n = 1 is supported", code="invalid_n")
        return max_tokens, float(temperature), seed

    def check_length(self, ids: list[int], max_tokens: int) -> None:
        if not ids:
            raise ApiError(400, "the prompt encodes to no tokens", code="empty_prompt")
        if len(ids) + max_tokens > self.context:
            raise ApiError(400, f"prompt of {len(ids)} tokens plus max_tokens {max_tokens} is over the model's context of "
                                f"{self.context} tokens", code="context_length_exceeded")

    def prompt_job(self, snapshot: Snapshot, prompt: Any, max_tokens: int, temperature: float, seed: int | None) -> Job:
        if not isinstance(prompt, str):
            raise ApiError(400, "`prompt` must be a string or a list of strings", code="invalid_prompt")
        if not prompt.strip():
            raise ApiError(400, "empty prompt", code="empty_prompt")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ApiError(400, f"prompt over {MAX_PROMPT_CHARS} characters", code="context_length_exceeded")
        ids = self.routed.prompt_ids(prompt)
        self.check_length(ids, max_tokens)
        return Job(snapshot, ids, None, None, max_tokens, temperature, seed)

    def chat_job(self, snapshot: Snapshot, messages: Any, max_tokens: int, temperature: float, seed: int | None) -> Job:
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "`messages` must be a non-empty list", code="invalid_messages")
        cleaned = []
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(message.get("content"), str):
                raise ApiError(400, "each message needs a role (system, user, assistant) and string content", code="invalid_messages")
            if len(message["content"]) > MAX_PROMPT_CHARS:
                raise ApiError(400, f"message over {MAX_PROMPT_CHARS} characters", code="context_length_exceeded")
            cleaned.append({"role": message["role"], "content": message["content"]})
        users = [m for m in cleaned if m["role"] == "user"]
        if not users or not users[-1]["content"].strip():
            raise ApiError(400, "the conversation needs a non-empty user message", code="invalid_messages")
        tokenizer = self.routed.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ApiError(400, "this base model has no chat template; use /v1/completions", code="no_chat_template")
        ids = tokenizer.apply_chat_template(cleaned, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        ids = list(ids)
        self.check_length(ids, max_tokens)
        route = self.routed.prompt_ids(users[-1]["content"])
        if not route:
            raise ApiError(400, "the last user message encodes to no tokens", code="empty_prompt")
        return Job(snapshot, ids, None, route, max_tokens, temperature, seed)


def _sola_extension(snapshot: Snapshot, completions: list[Completion]) -> dict[str, Any]:
    return {"commit": snapshot.commit.commit_id, "tree": snapshot.tree_id, "edits": [c.edit for c in completions],
            "distances": [None if c.distance == float("inf") else round(c.distance, 6) for c in completions]}


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="sola", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return ApiError(400, "invalid request body").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return ApiError(error.status_code, str(error.detail), kind).response()

    @app.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception) -> JSONResponse:
        return ApiError(500, f"internal error ({type(error).__name__})", "server_error").response()

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        path = request.url.path
        try:
            request.state.identity = server.identify(request)
            if server.config.tokens and path != "/healthz" and request.state.identity is None:
                raise ApiError(401, "missing or wrong bearer token", "authentication_error", "invalid_api_key")
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
            response = await call_next(request)
        except ApiError as error:
            response = error.response()
        endpoint = "/v1/edits/{id}" if path.startswith("/v1/edits/") else path if path in ROUTES else "other"
        server.metrics.observe(endpoint, response.status_code, time.perf_counter() - started)
        return response

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        return body

    def acquire() -> None:
        if not server.slots.acquire(blocking=False):
            raise ApiError(429, "too many requests in flight; retry shortly", "rate_limit_error", "server_busy")

    async def run_jobs(jobs: list[Job]) -> list[Completion]:
        futures = [server.generator.submit(job) for job in jobs]
        return [await asyncio.wrap_future(f) for f in futures]

    def headers(snapshot: Snapshot) -> dict[str, str]:
        return {"X-Sola-Commit": snapshot.commit.commit_id}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "follow": server.config.follow, "commit": server.watcher.refs.get(server.config.follow, (None, None))[1],
                "poll_error": server.watcher.error}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render(server.cache), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        created = int(server.started)
        data = [{"id": name, "object": "model", "created": created, "owned_by": "sola",
                 "sola": {"kind": kind, "commit": commit}} for name, (kind, commit) in sorted(server.watcher.refs.items())]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await body_of(request)
        max_tokens, temperature, seed = server.limits(body)
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not prompts or len(prompts) > MAX_PROMPTS:
            raise ApiError(400, f"`prompt` must be a string or a list of 1 to {MAX_PROMPTS} strings", code="invalid_prompt")
        snapshot = await asyncio.to_thread(server.snapshot, body.get("model"))
        jobs = [server.prompt_job(snapshot, p, max_tokens, temperature, seed) for p in prompts]
        name = body.get("model") or server.config.follow
        if body.get("stream"):
            if len(jobs) != 1:
                raise ApiError(400, "streaming takes one prompt", code="invalid_prompt")
            return stream(jobs[0], name, "text_completion", headers(snapshot))
        acquire()
        try:
            done = await run_jobs(jobs)
        finally:
            server.slots.release()
        choices = [{"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None} for i, c in enumerate(done)]
        usage_prompt = sum(len(j.token_ids) for j in jobs)
        usage_done = sum(c.tokens for c in done)
        document = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion", "created": int(time.time()), "model": name,
                    "choices": choices, "usage": {"prompt_tokens": usage_prompt, "completion_tokens": usage_done,
                                                  "total_tokens": usage_prompt + usage_done},
                    "sola": _sola_extension(snapshot, done)}
        return JSONResponse(document, headers=headers(snapshot))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await body_of(request)
        max_tokens, temperature, seed = server.limits(body)
        snapshot = await asyncio.to_thread(server.snapshot, body.get("model"))
        job = server.chat_job(snapshot, body.get("messages"), max_tokens, temperature, seed)
        name = body.get("model") or server.config.follow
        if body.get("stream"):
            return stream(job, name, "chat.completion.chunk", headers(snapshot))
        acquire()
        try:
            [done] = await run_jobs([job])
        finally:
            server.slots.release()
        document = {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion", "created": int(time.time()), "model": name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text}, "finish_reason": done.finish_reason,
                                 "logprobs": None}],
                    "usage": {"prompt_tokens": len(job.token_ids), "completion_tokens": done.tokens,
                              "total_tokens": len(job.token_ids) + done.tokens},
                    "sola": _sola_extension(snapshot, [done])}
        return JSONResponse(document, headers=headers(snapshot))

    def stream(job: Job, name: str, kind: str, extra: dict[str, str]) -> StreamingResponse:
        """Server-sent events: one chunk per decoded piece, the `sola` extension on the last."""
        from transformers import TextIteratorStreamer

        acquire()
        streamer = TextIteratorStreamer(server.routed.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
        result: Future = Future()

        def work() -> None:
            try:
                result.set_result(server.generator.run([job], streamer))
            except BaseException as error:  # noqa: BLE001 - ends the stream with an error event
                result.set_exception(error)
                streamer.end()
            finally:
                server.slots.release()

        threading.Thread(target=work, name="sola-stream", daemon=True).start()
        ident = f"{'chatcmpl' if kind.startswith('chat') else 'cmpl'}-{secrets.token_hex(12)}"

        def chunk(piece: str | None, finish: str | None, last: dict[str, Any] | None = None) -> str:
            if kind.startswith("chat"):
                delta = {"content": piece} if piece is not None else {}
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
            document = {"id": ident, "object": kind, "created": int(time.time()), "model": name, "choices": [choice]}
            if last is not None:
                document["sola"] = last
            return f"data: {json.dumps(document)}\n\n"

        async def events() -> AsyncIterator[str]:
            iterator: Iterator[str] = iter(streamer)
            while True:
                piece = await asyncio.to_thread(next, iterator, None)
                if piece is None:
                    break
                if piece:
                    yield chunk(piece, None)
            try:
                done = await asyncio.wrap_future(result)
                yield chunk(None, done[0].finish_reason, _sola_extension(job.snapshot, done))
            except Exception as error:  # noqa: BLE001
                yield f"data: {json.dumps({'error': {'message': f'generation failed ({type(error).__name__})', 'type': 'server_error', 'code': None}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=extra)

    @app.get("/v1/edits/{edit}")
    async def edit(edit: str) -> JSONResponse:
        from registry.inspect import describe_edit

        def read() -> dict[str, Any]:
            with reading(server.config.root) as registry:
                return describe_edit(registry, registry.resolve_edit(edit))

        try:
            return JSONResponse(json.loads(json.dumps(await asyncio.to_thread(read), default=str)))
        except RegistryError as error:
            raise ApiError(404, str(error), "not_found_error", "edit_not_found") from None

    @app.get("/v1/log")
    async def log(ref: str | None = None, limit: int = 20) -> JSONResponse:
        if not 0 <= limit <= 10_000:
            raise ApiError(400, "`limit` must be from 0 to 10000", code="invalid_limit")

        def read() -> list[dict[str, Any]]:
            with reading(server.config.root) as registry:
                return [c.to_dict() for c in registry.log(limit, registry.resolve(ref) if ref else registry.head(server.config.follow))]

        try:
            return JSONResponse(await asyncio.to_thread(read))
        except RegistryError as error:
            raise ApiError(404, str(error), "not_found_error", "revision_not_found") from None

    if server.config.console:
        from sola.console import mount_console

        mount_console(app, server)

    @app.on_event("startup")
    async def startup() -> None:
        server.start()

    @app.on_event("shutdown")
    async def shutdown() -> None:
        server.stop()

    return app


def token_from_env(variable: str | None) -> str | None:
    """The bearer token from an environment variable (refused when the variable is empty)."""
    if variable is None:
        return None
    value = os.environ.get(variable, "")
    if not value:
        raise RegistryError(f"--token-env {variable}: the variable is not set or empty")
    return value


__all__ = ["ServeConfig", "Server", "create_app", "ApiError", "token_from_env"]
