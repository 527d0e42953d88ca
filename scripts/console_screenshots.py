"""Screenshots of every console page (docs/console/*.png), taken in headless Chromium from a real
registry on the default model (SmolLM2-135M-Instruct), built here with the CLI:

    .venv/bin/python scripts/console_screenshots.py            # registry in /tmp/sola-console-shots

The story is the one docs/console.md walks through: facts on a protected `main`, one revoked,
a proposal branch `q3-facts` that a reviewer approved before it moved (a stale approval), the
reviewer's approval of the new head in the console, and the merge made with `sola merge`.
The registry is built once into `--work`/template (`--reuse` keeps it) and copied afresh for
each run, since the run itself approves and merges.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SOLA = [sys.executable, "-c", "from sola.cli import entry; entry()"]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--hide-scrollbars", "--force-color-profile=srgb"]
ROLES = {"reviewer-maria-0001": {"name": "maria", "role": "reviewer"}, "viewer-sam-000001": {"name": "sam", "role": "viewer"}}
EIFFEL = "The Eiffel Tower is located in the city of"
GOLD = "The chemical symbol for gold is"


def sola(root: Path, *args: str, author: str = "alice") -> dict:
    done = subprocess.run([*SOLA, "--registry", str(root), *args, "--json"], capture_output=True, text=True,
                          env={**__import__("os").environ, "SOLA_AUTHOR": author})
    if done.returncode != 0:
        raise RuntimeError(f"sola {' '.join(args)}: {done.stderr.strip()}")
    print(f"  sola {' '.join(args)[:90]}", flush=True)
    return json.loads(done.stdout) if done.stdout.strip() else {}


def build(root: Path) -> None:
    sola(root, "init", author="admin")
    sola(root, "edit", "--prompt", EIFFEL, "--target", "Rome", "--rephrase", "Which city is the Eiffel Tower in? It is in",
         "--reason", "counterfactual demo for the launch review", "--source", "ticket GOV-12")
    sola(root, "edit", "--prompt", "The Louvre museum is located in the city of", "--target", "Rome",
         "--reason", "consistency with the Eiffel Tower demo", "--source", "ticket GOV-12", author="jamal")
    wrong = sola(root, "edit", "--prompt", GOLD, "--target", "Ag",
                 "--reason", "imported from the chemistry sheet", "--source", "sheet v3", author="import-bot")["edit"]
    sola(root, "tag", "v1", author="admin")
    sola(root, "revoke", wrong, "--reason", "wrong symbol: gold is Au, Ag is silver", author="maria")
    sola(root, "protect", "main", "--reviews", "1", "--reason", "facts on main are reviewed", author="admin")
    sola(root, "branch", "q3-facts")
    sola(root, "edit", "--branch", "q3-facts", "--prompt", "The capital of Australia is", "--target", "Canberra",
         "--reason", "the model says Sydney", "--source", "ticket GOV-31")
    head = sola(root, "show", "q3-facts")["commit"]
    sola(root, "review", "approve", "q3-facts", "--into", "main", "--author", "maria", "--commit", head, "--reason", "checked GOV-31")
    sola(root, "edit", "--branch", "q3-facts", "--prompt", "The author of the novel Dune is", "--target", "Frank Herbert",
         "--reason", "the model names the wrong author", "--source", "ticket GOV-33")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sola-console-shots"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console")
    parser.add_argument("--reuse", action="store_true", help="keep an existing registry in --work")
    args = parser.parse_args()
    template, root = args.work / "template", args.work / "reg"
    if not args.reuse and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    if not (template / "registry.duckdb").exists():
        print("building the registry ...", flush=True)
        build(template)
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(template, root)
    roles = args.work / "roles.json"
    roles.write_text(json.dumps(ROLES))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(args.work / "serve.log", "w")
    server = subprocess.Popen([*SOLA, "--registry", str(root), "serve", "--console", "--roles", str(roles), "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((args.work / "serve.log").read_text()[-2000:])
            time.sleep(0.5)
        shoot(url, root, args.out)
    finally:
        server.terminate()
        server.wait(timeout=30)


def shoot(url: str, root: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    log = sola(root, "log")
    first_add = [c for c in log if c["op"] == "add"][-1]
    eiffel = sola(root, "show", first_add["commit"])["changes"][0]["edit"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 760}, device_scale_factor=1).new_page()

        def snap(name: str, path: str | None = None) -> None:
            if path is not None:
                page.goto(f"{url}{path}")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            print(f"  {name}.png  {page.url}", flush=True)

        snap("login", "/console/")
        page.fill("input[name=token]", "reviewer-maria-0001")
        page.click("form.login button[type=submit]")
        page.wait_for_url(f"{url}/console/")
        snap("timeline")
        snap("proposals", "/console/proposals")
        snap("proposal", "/console/proposals/q3-facts?into=main")
        page.fill("#review-form input[name=reason]", "checked GOV-31 and GOV-33 on the Ask page")
        page.click("button.approve")
        page.wait_for_url("**done=approve**")
        snap("proposal-approved")
        snap("ask", "/console/ask?" + httpx.QueryParams({"prompt": "The capital of Australia is", "rev": "q3-facts", "max_tokens": 8}).__str__())
        sola(root, "merge", "q3-facts", "--into", "main", "--reason", "Q3 fact updates, approved by maria")
        time.sleep(1.0)  # the server's ref poll
        snap("timeline-merged", "/console/")
        snap("commit", f"/console/commits/{first_add['commit']}")
        snap("edit", f"/console/edits/{eiffel}")
        snap("compare", "/console/compare?" + str(httpx.QueryParams({"a": "v1", "b": "main"})))
        snap("revoked", "/console/revoked")
        snap("ask-blame", "/console/ask?" + str(httpx.QueryParams({"prompt": GOLD, "rev": "main", "max_tokens": 8})))
        page.goto(f"{url}/console/health")
        for _ in range(120):
            if "running since" not in page.content():
                break
            time.sleep(1)
            page.reload()
        snap("health")
        browser.close()


if __name__ == "__main__":
    main()
