"""`sola serve` as deployed: a real uvicorn server in a subprocess on a free localhost port,
talked to with the official `openai` client and plain HTTP, while other processes write."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner

from sola.cli import main

PROMPT = "The capital of France is"
OTHER = "Toko Yasuda plays the"
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"


def cli(root: Path, *args: str) -> dict:
    result = CliRunner().invoke(main, ["--registry", str(root), *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Served:
    def __init__(self, root: Path, env: dict[str, str] | None = None, *args: str) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "sola"), "--registry", str(root), "serve", "--port", str(self.port), *args],
                                        env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def client(self, token: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=token, max_retries=0, timeout=60)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def chat_model(tiny_dirs, tmp_path_factory) -> Path:
    """The tiny Llama with a chat template (the served chat endpoint needs one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = tmp_path_factory.mktemp("tiny-chat")
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def served(chat_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("served") / "reg"
    cli(root, "init", "--model", str(chat_model), "--threshold", "0.001")
    edit = cli(root, "edit", "--prompt", PROMPT, "--target", "Rome")
    cli(root, "tag", "v1")
    server = Served(root)
    server.edit = edit["edit"]
    yield server
    server.stop()


def test_models_lists_every_branch_and_tag_with_its_commit(served):
    listed = served.client().models.list()
    by_id = {m.id: m for m in listed.data}
    assert {"main", "v1"} <= set(by_id)
    assert by_id["v1"].model_extra["sola"]["commit"] == cli(served.root, "show", "v1")["commit"]


def test_a_completion_carries_the_revision_and_the_edit_that_answered(served):
    raw = served.client().completions.with_raw_response.create(model="v1", prompt=[PROMPT, OTHER], max_tokens=4)
    completion = raw.parse()
    commit = cli(served.root, "show", "v1")["commit"]
    assert raw.headers["x-sola-commit"] == commit
    assert completion.model_extra["sola"]["commit"] == commit
    assert completion.model_extra["sola"]["edits"] == [served.edit, None]
    expected = cli(served.root, "generate", PROMPT, "--rev", "v1", "--max-new-tokens", "4")["text"]
    assert completion.choices[0].text == expected and completion.usage.completion_tokens == 2 * 4


def test_a_chat_turn_routes_by_its_user_message_like_the_raw_prompt(served):
    chat = served.client().chat.completions.create(model="v1", max_tokens=3, messages=[
        {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": PROMPT}])
    assert chat.model_extra["sola"]["edits"] == [served.edit]
    other = served.client().chat.completions.create(model="v1", max_tokens=3, messages=[{"role": "user", "content": OTHER}])
    assert other.model_extra["sola"]["edits"] == [None]


def test_streaming_sends_the_same_text_as_one_response(served):
    client = served.client()
    whole = client.completions.create(model="v1", prompt=PROMPT, max_tokens=5).choices[0].text
    chunks = list(client.completions.create(model="v1", prompt=PROMPT, max_tokens=5, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].model_extra["sola"]["edits"] == [served.edit]


def test_a_pinned_revision_keeps_the_old_fact_after_a_revoke_and_main_follows_without_restart(served):
    client = served.client()
    cli(served.root, "revoke", served.edit, "--reason", "withdrawn")  # another process (the CLI) writes
    revoked_head = cli(served.root, "show", "main")["commit"]
    deadline = time.monotonic() + 5
    while True:
        answer = client.completions.create(model="main", prompt=PROMPT, max_tokens=3)
        if answer.model_extra["sola"]["commit"] == revoked_head or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer.model_extra["sola"]["commit"] == revoked_head and answer.model_extra["sola"]["edits"] == [None]
    pinned = client.completions.create(model="v1", prompt=PROMPT, max_tokens=3)
    assert pinned.model_extra["sola"]["edits"] == [served.edit]
    at_time = client.completions.create(model=f"main@{cli(served.root, 'show', 'v1')['time']}", prompt=PROMPT, max_tokens=3)
    assert at_time.model_extra["sola"]["edits"] == [served.edit]
    cli(served.root, "restore", served.edit, "--reason", "back")


def test_requests_at_two_revisions_at_once_each_see_their_own(served):
    cli(served.root, "branch", "bare", cli(served.root, "log")[-1]["commit"])  # the init commit: no edits
    client = served.client()
    seen: dict[str, set] = {"v1": set(), "bare": set()}

    def ask(model: str) -> None:
        for _ in range(4):
            seen[model].add(client.completions.create(model=model, prompt=PROMPT, max_tokens=2).model_extra["sola"]["edits"][0])

    threads = [threading.Thread(target=ask, args=(m,)) for m in ("v1", "bare", "v1", "bare")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"v1": {served.edit}, "bare": {None}}


@pytest.mark.parametrize("body, status, code", [
    (b"{not json", 400, "invalid_json"),
    (b'["a list"]', 400, "invalid_json"),
    (json.dumps({"model": "nope", "prompt": PROMPT}).encode(), 404, "model_not_found"),
    (json.dumps({"model": "main~", "prompt": PROMPT}).encode(), 404, "model_not_found"),
    (json.dumps({"prompt": ""}).encode(), 400, "empty_prompt"),
    (json.dumps({"prompt": PROMPT, "max_tokens": 10**20}).encode(), 400, "max_tokens_over_limit"),
    (json.dumps({"prompt": PROMPT, "max_tokens": "3"}).encode(), 400, "invalid_max_tokens"),
    (json.dumps({"prompt": PROMPT * 40, "max_tokens": 100}).encode(), 400, "context_length_exceeded"),
    (json.dumps({"prompt": PROMPT, "temperature": float("nan")}).encode().replace(b"NaN", b"1e999"), 400, "invalid_temperature"),
    (json.dumps({"prompt": 5}).encode(), 400, "invalid_prompt"),
    (b"x" * (2 << 20), 413, "request_too_large"),
])
def test_bad_requests_get_an_openai_error_body_and_a_4xx(served, body, status, code):
    response = httpx.post(f"{served.url}/v1/completions", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and "Traceback" not in response.text


def test_bad_chat_bodies_and_unknown_routes_are_4xx(served):
    for messages in ([], [{"role": "robot", "content": "x"}], [{"role": "system", "content": "only system"}], "text"):
        response = httpx.post(f"{served.url}/v1/chat/completions", json={"messages": messages}, timeout=30)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_messages"
    assert httpx.get(f"{served.url}/v1/nothing").status_code == 404
    assert httpx.get(f"{served.url}/v1/edits/ffff0000").json()["error"]["code"] == "edit_not_found"
    with pytest.raises(openai.NotFoundError):
        served.client().completions.create(model="no-such-branch", prompt=PROMPT, max_tokens=2)


def test_log_and_edit_views_match_the_cli(served):
    assert httpx.get(f"{served.url}/v1/log", params={"ref": "v1", "limit": 5}).json() == cli(served.root, "log", "--rev", "v1", "--limit", "5")
    shown = httpx.get(f"{served.url}/v1/edits/{served.edit[:12]}").json()
    assert shown["edit"] == served.edit and shown["prompt"] == PROMPT


def test_metrics_count_requests_tokens_edits_and_cache_hits(served):
    served.client().completions.create(model="v1", prompt=PROMPT, max_tokens=2)
    text = httpx.get(f"{served.url}/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert values['sola_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert values["sola_tokens_generated_total"] >= 2 and values["sola_edits_fired_total"] >= 1
    assert values["sola_snapshot_cache_hits_total"] >= 1 and values['sola_request_seconds_bucket{le="+Inf"}'] >= 1


def test_a_token_is_required_on_every_route_but_healthz(chat_model, tmp_path):
    root = tmp_path / "reg"
    cli(root, "init", "--model", str(chat_model), "--threshold", "0.001")
    server = Served(root, {"SOLA_TEST_TOKEN": "s3cret"}, "--token-env", "SOLA_TEST_TOKEN")
    try:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        for path in ("/v1/models", "/metrics", "/v1/log"):
            response = httpx.get(f"{server.url}{path}")
            assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            server.client("wrong").models.list()
        assert [m.id for m in server.client("s3cret").models.list().data] == ["main"]
    finally:
        server.stop()
