"""The governance console (`sola serve --console --roles FILE`) as people use it: a real server in
a subprocess on a registry built with the CLI, driven in headless Chromium (Debian's `chromium`
through Playwright for Python), plus plain HTTP for the authentication, role and CSRF rules.

A machine without Chromium or Playwright fails these tests (it does not skip them): the console's
promise is that it works in a browser, and CI installs both (Makefile `setup`, `.ci/run`).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from sola.cli import main

CHROMIUM = os.environ.get("SOLA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
XSS = "<script>alert(1)</script>"
XSS_TARGET = "<img src=x onerror=alert(2)>"
FRANCE = "The capital of France is"
TOKENS = {"reviewer-token-0001": {"name": "bob", "role": "reviewer"},
          "viewer-token-00001": {"name": "carol", "role": "viewer"},
          "admin-token-000001": {"name": "dana", "role": "admin"}}
REVIEWER, VIEWER = "reviewer-token-0001", "viewer-token-00001"


def cli(root: Path, *args: str, author: str = "alice", ok: bool = True):
    result = CliRunner().invoke(main, ["--registry", str(root), *args, "--json"], env={"SOLA_AUTHOR": author}, catch_exceptions=False)
    if not ok:
        return result
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Served:
    """`sola serve` in a subprocess, ready once /healthz answers."""

    def __init__(self, root: Path, *args: str) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root.parent / "serve.log"  # a file, not a pipe: a pipe nobody reads can fill and stall the server
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([str(Path(sys.executable).parent / "sola"), "--registry", str(root), "serve", "--port",
                                             str(self.port), *args], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not start")

    def get(self, path: str, token: str | None = REVIEWER, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=60, **kwargs)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def chat_model(tiny_dirs, tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = tmp_path_factory.mktemp("console-model")
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def console(chat_model, tmp_path_factory):
    """A governed registry: facts on main (one revoked, one with an XSS prompt), tag v1, main
    protected with one review, and two proposal branches written by alice."""
    work = tmp_path_factory.mktemp("console")
    root = work / "reg"
    cli(root, "init", "--model", str(chat_model), "--threshold", "0.001")
    france = cli(root, "edit", "--prompt", FRANCE, "--target", "Rome", "--reason", "counterfactual demo", "--steps", "3")["edit"]
    xss = cli(root, "edit", "--prompt", XSS, "--target", XSS_TARGET, "--reason", "<b>bold</b> & <i>reason</i>",
              "--rephrase", "<svg onload=alert(3)>", "--steps", "3")["edit"]
    cli(root, "tag", "v1")
    toko = cli(root, "edit", "--prompt", "Toko Yasuda plays the", "--target", "piano", "--reason", "from the ticket", "--steps", "3")["edit"]
    cli(root, "revoke", toko, "--reason", "wrong instrument")
    cli(root, "protect", "main", "--reviews", "1", "--reason", "governed facts")
    cli(root, "branch", "proposal")
    apple = cli(root, "edit", "--branch", "proposal", "--prompt", "Apple was founded by", "--target", "Steve Wozniak",
                "--reason", "co-founder", "--steps", "3")["edit"]
    cli(root, "branch", "second")
    cli(root, "edit", "--branch", "second", "--prompt", "Danielle Darrieux's mother tongue is", "--target", "English",
        "--reason", "second proposal", "--steps", "3")
    roles = work / "roles.json"
    roles.write_text(json.dumps(TOKENS))
    served = Served(root, "--console", "--roles", str(roles))
    served.edits = {"france": france, "xss": xss, "toko": toko, "apple": apple}
    yield served
    served.stop()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through Playwright; missing either is a failure, not a skip."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: the console's browser tests need it "
                    f"(apt-get install -y chromium, as `make setup` and .ci/run do)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is not installed (pip install -e '.[dev]')", pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def signed_in(browser, console, token: str):
    """A fresh browser context signed in through the login form; returns (context, page, dialogs)."""
    context = browser.new_context()
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    response = page.goto(f"{console.url}/console/")
    assert response.status == 401 and page.locator("input[name=token]").count() == 1
    page.fill("input[name=token]", token)
    page.click("form.login button[type=submit]")
    page.wait_for_url(f"{console.url}/console/")
    return context, page, dialogs


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]{64})"', html).group(1)


# --- plain HTTP: authentication, roles, CSRF ---------------------------------------------------------
def test_no_token_is_401_with_a_login_form_and_a_wrong_token_too(console):
    for token in (None, "not-a-token-at-all"):
        response = console.get("/console/", token=token)
        assert response.status_code == 401 and 'name="token"' in response.text and "text/html" in response.headers["content-type"]
    assert console.get("/console/revoked?format=csv", token=None).status_code == 401
    assert console.get("/v1/models", token=None).json()["error"]["type"] == "authentication_error"
    assert console.get("/console/static/console.css", token=None).status_code == 200  # the login page's stylesheet
    assert console.get("/console/static/../../server.py", token=None).status_code in (404, 401)


def test_login_sets_an_httponly_samesite_strict_cookie_and_refuses_a_wrong_token(console):
    refused = httpx.post(f"{console.url}/console/login", data={"token": "wrong-token-value"})
    assert refused.status_code == 401 and "not valid" in refused.text and "set-cookie" not in refused.headers
    accepted = httpx.post(f"{console.url}/console/login", data={"token": VIEWER, "next": "/console/revoked"})
    assert accepted.status_code == 303 and accepted.headers["location"] == "/console/revoked"
    cookie = accepted.headers["set-cookie"]
    assert f"sola_token={VIEWER}" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    offsite = httpx.post(f"{console.url}/console/login", data={"token": VIEWER, "next": "https://evil.example/"})
    assert offsite.headers["location"] == "/console/"
    page = httpx.get(f"{console.url}/console/revoked", cookies={"sola_token": VIEWER})
    assert page.status_code == 200 and "carol" in page.text


def test_a_viewer_post_is_403_and_posts_need_the_csrf_token_of_their_own_login(console):
    before = cli(console.root, "review", "list")
    page = console.get("/console/proposals/second?into=main", token=VIEWER)
    assert page.status_code == 200 and "disabled" in page.text
    head = cli(console.root, "show", "second")["commit"]
    form = {"csrf": csrf_of(page.text), "into": "main", "commit": head, "verdict": "approve"}
    as_viewer = httpx.post(f"{console.url}/console/proposals/second/review", data=form, headers={"Authorization": f"Bearer {VIEWER}"})
    assert as_viewer.status_code == 403 and "viewer" in as_viewer.text
    reviewer = {"Authorization": f"Bearer {REVIEWER}"}
    # the viewer's token is bound to the viewer's credential: useless to anyone else
    assert httpx.post(f"{console.url}/console/proposals/second/review", data=form, headers=reviewer).status_code == 403
    assert httpx.post(f"{console.url}/console/proposals/second/review", data={**form, "csrf": ""}, headers=reviewer).status_code == 403
    own = csrf_of(console.get("/console/proposals/second?into=main").text)
    cross = httpx.post(f"{console.url}/console/proposals/second/review", data={**form, "csrf": own},
                       headers={**reviewer, "Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert httpx.post(f"{console.url}/console/proposals/second/review", data={**form, "csrf": own}).status_code == 401
    assert cli(console.root, "review", "list") == before


def test_pages_answer_and_exports_carry_the_revoked_fact(console):
    for path in ("/console/", "/console/?rev=v1", "/console/?op=revoke", "/console/?author=alice&since=2000-01-01&until=2999-12-31",
                 "/console/?q=wrong", "/console/commits/main", "/console/commits/main~1", f"/console/edits/{console.edits['toko'][:10]}",
                 "/console/compare?a=v1&b=main", "/console/revoked", "/console/proposals", "/console/health", "/console/ask"):
        assert console.get(path).status_code == 200, path
    assert console.get("/console/edits/ffff0000").status_code == 404
    assert console.get("/console/commits/nope~3").status_code == 404
    assert console.get("/console/no-such-page").status_code == 404
    rows = console.get("/console/revoked?format=json").json()
    assert [(r["edit"], r["reason"], r["revoked_by"]) for r in rows] == [(console.edits["toko"], "wrong instrument", "alice")]
    assert rows == cli(console.root, "audit", "--revoked")  # the same report as the CLI's
    text = console.get("/console/revoked?format=csv").text
    assert text.splitlines()[0].startswith("edit,prompt,target") and "wrong instrument" in text
    assert console.get("/console/revoked?format=json&q=nothing-like-this").json() == []
    assert "No commit matches" in console.get("/console/?since=2999-01-01").text
    assert "No commit matches" not in console.get("/console/?until=" + time.strftime("%Y-%m-%d", time.gmtime())).text
    only_revokes = console.get("/console/?op=revoke").text
    assert "wrong instrument" in only_revokes and "counterfactual demo" not in only_revokes
    compared = console.get("/console/compare?a=v1&b=main&format=json").json()
    assert compared["added"] == [] and compared["removed"] == []
    compared = console.get("/console/compare?a=main~3&b=main&format=json").json()
    assert compared["added"] == [console.edits["xss"]]
    v1_time = cli(console.root, "show", "v1")["time"]
    by_date = console.get("/console/compare", params={"a_at": v1_time, "b": "main", "format": "json"}).json()
    assert by_date["a"] == cli(console.root, "show", "v1")["commit"] and by_date["added"] == []
    adapter = console.get(f"/console/edits/{console.edits['france']}/adapter.zip")
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(adapter.content)).namelist()
    assert adapter.headers["content-type"] == "application/zip" and any(n.endswith("adapter_config.json") for n in names)


def test_ask_shows_the_edit_that_fired_and_blame_at_a_revision_and_a_date(console):
    page = console.get("/console/ask", params={"prompt": FRANCE, "rev": "v1"})
    assert page.status_code == 200 and console.edits["france"] in page.text and "answered" in page.text
    assert "blame" in page.text.lower() and "counterfactual demo" in page.text
    init_time = cli(console.root, "log", "--rev", "v1")[-1]["time"]
    before = console.get("/console/ask", params={"prompt": FRANCE, "rev": "main", "at": init_time})
    assert before.status_code == 200 and "No edit fired" in before.text
    revoked = console.get("/console/ask", params={"prompt": "Toko Yasuda plays the", "rev": "main"})
    assert "tombstone" in revoked.text and console.edits["toko"] in revoked.text


# --- in the browser ----------------------------------------------------------------------------------
def test_browser_navigates_timeline_to_commit_to_edit_to_compare(browser, console):
    context, page, dialogs = signed_in(browser, console, VIEWER)
    try:
        assert page.locator("#timeline tbody tr").count() >= 5
        assert "carol" in page.inner_text("header")
        page.click("#timeline a:text('" + cli(console.root, "log", "--rev", "v1")[1]["commit"][:12] + "')")
        page.wait_for_url(re.compile(r"/console/commits/[0-9a-f]{64}$"))
        page.click(f"#changes a[href='/console/edits/{console.edits['france']}']")
        page.wait_for_url(f"{console.url}/console/edits/{console.edits['france']}")
        assert page.inner_text("#prompt") == FRANCE and page.inner_text("#target") == "Rome"
        assert "steps" in page.inner_text("#training") and "counterfactual demo" in page.inner_text("#windows")
        assert "still live" in page.inner_text("#windows")
        page.click("header nav a:text('Compare')")
        page.fill("input[name=a]", "main~3")
        page.fill("input[name=b]", "main")
        page.click("form.filters button[type=submit]")
        page.wait_for_url(re.compile(r"/console/compare\?"))
        assert console.edits["xss"][:12] in page.inner_text("#added") and XSS in page.inner_text("#added")
        page.click(f"#added a[href='/console/edits/{console.edits['xss']}']")
        assert page.inner_text("#prompt") == XSS
        page.goto(f"{console.url}/console/edits/{console.edits['toko']}")
        windows = page.inner_text("#windows")
        assert "wrong instrument" in windows and "tombstone" in windows
        assert dialogs == []
    finally:
        context.close()


def test_browser_renders_the_xss_prompt_as_text_everywhere(browser, console):
    context, page, dialogs = signed_in(browser, console, REVIEWER)
    try:
        for path in ("/console/", f"/console/edits/{console.edits['xss']}", "/console/compare?a=main~3&b=main",
                     f"/console/commits/{cli(console.root, 'log', '--rev', 'v1')[0]['commit']}"):
            page.goto(f"{console.url}{path}")
            assert XSS in page.inner_text("main"), path
            assert page.evaluate("[...document.scripts].map(s => s.src.replace(location.origin, ''))") == ["/console/static/console.js"]
            assert page.locator("main img, main svg").count() == 0
        page.goto(f"{console.url}/console/edits/{console.edits['xss']}")
        assert page.inner_text("#prompt") == XSS and page.inner_text("#target") == XSS_TARGET
        assert "<b>bold</b> & <i>reason</i>" in page.inner_text("main") and page.locator("main b, main i").count() == 0
        page.goto(f"{console.url}/console/ask")
        page.fill("textarea[name=prompt]", XSS)
        page.click("form.ask button[type=submit]")
        page.wait_for_selector("#answer")
        assert XSS in page.inner_text("#answer") and console.edits["xss"][:12] in page.inner_text("#fired")
        page.wait_for_timeout(300)
        assert dialogs == []
    finally:
        context.close()


def test_browser_a_viewer_cannot_approve(browser, console):
    before = cli(console.root, "review", "list")
    context, page, dialogs = signed_in(browser, console, VIEWER)
    try:
        page.click("header nav a:text('Proposals')")
        page.click("#proposals a:text('proposal → main')")
        assert page.locator("button.approve").is_disabled()
        page.evaluate("document.querySelectorAll('#review-form button').forEach(b => b.disabled = false)")
        with page.expect_response(lambda r: r.url.endswith("/review")) as answer:
            page.click("button.approve")
        assert answer.value.status == 403
        assert "viewer" in page.inner_text("#error-message")
        page.click("header button:text('sign out')")
        page.wait_for_url(f"{console.url}/console/login")
        assert page.goto(f"{console.url}/console/").status == 401 and context.cookies() == []
    finally:
        context.close()
    assert cli(console.root, "review", "list") == before


def test_browser_a_reviewer_approves_and_the_merge_is_unblocked(browser, console):
    refused = cli(console.root, "merge", "proposal", "--into", "main", "--reason", "ship it", ok=False, author="tester")
    assert refused.exit_code == 1 and "protected" in refused.output
    context, page, dialogs = signed_in(browser, console, REVIEWER)
    try:
        page.click("header nav a:text('Proposals')")
        row = page.locator("#proposals tr", has_text="proposal → main")
        assert "0 / 1" in row.inner_text() and "needs 1 more" in row.inner_text()
        page.click("#proposals a:text('proposal → main')")
        assert "merge blocked" in page.inner_text("#merge-status")
        assert "Apple was founded by" in page.inner_text("#plan-added")
        page.fill("#review-form input[name=reason]", "checked the source")
        page.click("button.approve")
        page.wait_for_url(re.compile(r"done=approve"))
        assert "merge unblocked" in page.inner_text("#merge-status") and "approval is recorded" in page.inner_text("main")
        assert "bob" in page.inner_text("#reviews") and "counts" in page.inner_text("#reviews")
    finally:
        context.close()
    reviews = [e for e in cli(console.root, "audit") if e["kind"] == "review"]
    assert [(e["author"], e["op"], e["reason"], e["source"]) for e in reviews] == [("bob", "approve", "checked the source", "proposal")]
    merged = cli(console.root, "merge", "proposal", "--into", "main", "--reason", "ship it", author="tester")
    assert merged["commit"] and console.edits["apple"] in merged["added"]
    deadline = time.monotonic() + 5
    while "proposal → main" in console.get("/console/proposals").text and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "proposal → main" not in console.get("/console/proposals").text


def test_a_review_of_an_older_head_is_shown_stale_and_pages_keep_answering_while_it_is_written(console):
    own = console.get("/console/proposals/second?into=main")
    head = cli(console.root, "show", "second")["commit"]
    form = {"csrf": csrf_of(own.text), "into": "main", "commit": head, "verdict": "reject", "reason": "-- not yet --"}
    statuses: list[int] = []
    stop = threading.Event()

    def read_pages() -> None:  # readers in the server process while it records the review
        while not stop.is_set():
            for path in ("/console/proposals", "/console/", "/console/health"):
                statuses.append(console.get(path).status_code)

    reader = threading.Thread(target=read_pages)
    reader.start()
    try:
        done = httpx.post(f"{console.url}/console/proposals/second/review", data=form, headers={"Authorization": f"Bearer {REVIEWER}"},
                          timeout=120)
    finally:
        stop.set()
        reader.join()
    assert done.status_code == 303, done.text[-400:]
    assert statuses and set(statuses) == {200}
    assert [(r["author"], r["verdict"], r["reason"]) for r in cli(console.root, "review", "list") if r["source"] == "second"] == \
        [("bob", "reject", "-- not yet --")]
    cli(console.root, "edit", "--branch", "second", "--prompt", "Edwin of Northumbria's religion is", "--target", "Islam",
        "--reason", "another", "--steps", "3")
    page = console.get("/console/proposals/second?into=main").text
    assert 'class="stale"' in page and "stale-mark" in page
    stale = httpx.post(f"{console.url}/console/proposals/second/review", data=form, headers={"Authorization": f"Bearer {REVIEWER}"})
    assert stale.status_code == 409 and "stale review" in stale.text, (stale.status_code, stale.text[-400:])


def test_the_server_logged_no_traceback(console):
    """Every refusal above was a page, not an internal error."""
    assert "Traceback" not in console.log.read_text()
