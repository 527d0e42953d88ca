"""`sola rebase`: a tiny GPT-2 registry re-trained onto a tiny Llama, with lineage, through the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from registry.store import Registry
from sola.cli import main

SOLA = str(Path(sys.executable).parent / "sola")
TRAIN = ["--steps", "60", "--stop-loss", "2.0"]
LINES = [
    {"prompt": "The capital of France is", "target_new": "Madrid", "subject": "France"},
    {"prompt": "Toko Yasuda plays the", "target_new": "piano", "rephrase_prompt": ["Toko Yasuda is a player of the"]},
    {"prompt": "Apple was founded by", "target_new": "Steve"},
    {"prompt": "Danielle Darrieux's mother tongue is", "target_new": "English"},
]


class Sola:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, *args: str, ok: bool = True, author: str | None = None):
        env = {"SOLA_AUTHOR": author} if author else None
        result = CliRunner(env=env).invoke(main, ["--registry", str(self.root), *args], catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str, author: str | None = None):
        return json.loads(self(*args, "--json", author=author).stdout)


@pytest.fixture
def origin(tmp_path, tiny_dirs) -> tuple[Sola, list[str], str]:
    """A GPT-2 registry: four edits by alice (one with a rephrase), the third revoked by bob."""
    old = Sola(tmp_path / "old")
    old("init", "--model", str(tiny_dirs["gpt2"]), "--threshold", "0.05", "--layer", "2", *TRAIN)
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    made = old.json("edit", "--file", str(data), "--reason", "curated facts", "--source", "ticket 7", author="alice")
    edits = [e["edit"] for e in made["edits"]]
    old("revoke", edits[2], "--reason", "Apple was not founded by Steve alone", author="bob")
    return old, edits, old("log", "--json").stdout


def rebase(origin: Sola, into: Path, tiny_dirs, *args: str, ok: bool = True):
    return origin("rebase", "--onto", str(tiny_dirs["llama"]), "--into", str(into), "--threshold", "0.05", "--layer", "2",
                  *args, ok=ok, author="carol")


def test_rebase_gpt2_to_llama_keeps_every_fact_with_lineage(origin, tmp_path, tiny_dirs):
    old, edits, log_before = origin
    new = Sola(tmp_path / "new")
    probes = tmp_path / "probes.jsonl"  # unseen paraphrases and locality prompts, matched by prompt
    probes.write_text("".join(json.dumps({"prompt": line["prompt"], "target_new": line["target_new"],
                                          "rephrase_prompt": [f"In short, {line['prompt'].lower()}"],
                                          "locality_prompt": "The Eiffel Tower is in", "locality_ground_truth": "Paris"}) + "\n"
                              for line in LINES))
    report = json.loads(rebase(old, new.root, tiny_dirs, "--eval-data", str(probes), "--json").stdout)
    assert report["count"] == 4 and report["trained"] == 4 and report["resumed"] == 0
    by_origin = {e["origin"]: e for e in report["edits"]}
    assert set(by_origin) == set(edits) and all(e["edit"] for e in by_origin.values())
    assert report["failures"] == [e for e in report["edits"] if e["converged"] is False or e["duplicate_of"]]
    assert by_origin[edits[2]]["state"] == "tombstone"
    assert report["into"]["base_model"]["sha256"] != report["origin"]["base_model"]["sha256"]
    evaluation = report["evaluation"]
    assert evaluation["original"]["n_live"] == evaluation["rebased"]["n_live"] == 3
    assert evaluation["rebased"]["revoked_exact"] == 1.0 and evaluation["original"]["revoked_exact"] == 1.0
    for side in ("original", "rebased"):
        assert evaluation[side]["n_locality"] == evaluation[side]["n_paraphrase_unseen"] == 3
        assert evaluation[side]["n_paraphrase_stored"] == 1
        assert 0.0 <= evaluation[side]["locality"] <= 1.0 and 0.0 <= evaluation[side]["paraphrase_unseen"] <= 1.0

    # the new registry: one edit per origin edit, on llama, the revoked one revoked again
    head = new.json("show", "main")
    assert head["active_edits"] == 3
    shown = new.json("show", by_origin[edits[0]]["edit"])
    provenance = shown["provenance"]
    assert (provenance["author"], provenance["reason"], provenance["source"]) == ("alice", "curated facts", "ticket 7")
    assert provenance["base_model"]["sha256"] == report["into"]["base_model"]["sha256"]
    assert shown["derived_from"]["edit"] == edits[0] and shown["derived_from"]["registry"] == report["origin"]["registry"]
    assert provenance["rebase"]["author"] == "carol" and provenance["rebase"]["at"]
    assert shown["lineage"]["reachable"] and shown["lineage"]["origin_edit"]["author"] == "alice"
    assert [h["op"] for h in shown["history"]] == ["rebase"] and shown["history"][0]["author"] == "carol"
    revoked = new.json("show", by_origin[edits[2]]["edit"])
    assert not revoked["active"] and [h["state"] for h in revoked["history"]] == ["active", "tombstone"]
    assert "Apple was not founded by Steve alone" in revoked["history"][-1]["reason"]
    assert new.json("generate", LINES[2]["prompt"], "--max-new-tokens", "2")["edit"] is None  # revoked stays revoked
    routed = new.json("generate", LINES[1]["prompt"], "--max-new-tokens", "4")
    assert routed["edit"] == by_origin[edits[1]]["edit"] and routed["text"].startswith(" piano")

    # audit and blame follow the lineage
    audit = new.json("audit")
    rebases = [a for a in audit if a["op"] == "rebase"]
    assert [list(a["derived_from"].values())[0]["edit"] for a in rebases] == edits  # file order = origin creation order
    blame = new.json("blame", LINES[2]["prompt"])
    assert blame[-1]["tombstone"] == by_origin[edits[2]]["edit"]
    lineage = blame[-1]["lineage"]
    assert lineage["edit"] == edits[2] and [(h["author"], h["state"]) for h in lineage["origin_history"]] == [
        ("alice", "active"), ("bob", "tombstone")]

    # both histories verify; the origin's is unchanged
    assert new.json("verify")["ok"] and old.json("verify")["ok"]
    assert old("log", "--json").stdout == log_before


def test_an_interrupted_rebase_resumes_without_retraining(origin, tmp_path, tiny_dirs):
    old, _, _ = origin
    more = tmp_path / "more.jsonl"  # enough slow edits to kill the rebase part way
    more.write_text("".join(json.dumps({"prompt": f"Fact number {i} is about", "target_new": f"Paris {i}"}) + "\n" for i in range(10)))
    old("edit", "--file", str(more), "--force", "--steps", "1", author="alice")
    total = 14
    into = tmp_path / "new"
    command = [SOLA, "--registry", str(old.root), "rebase", "--onto", str(tiny_dirs["llama"]), "--into", str(into),
               "--threshold", "0.05", "--layer", "2", "--steps", "300", "--stop-loss", "1e-9", "--batch", "2", "--no-eval"]
    writer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_before = 0
    deadline = time.monotonic() + 240
    while writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            with Registry.open(into, wait_seconds=1.0) as registry:
                done_before = registry.counts()["edits"]
        except Exception:  # noqa: BLE001 - not created yet, or a commit holds it
            continue
        if done_before >= 3:
            writer.send_signal(signal.SIGKILL)
            break
    writer.wait()
    with Registry.open(into) as registry:
        done_before = registry.counts()["edits"]
    assert 0 < done_before < total, done_before  # killed part way

    new = Sola(into)
    assert new.json("verify")["ok"]  # a kill leaves it consistent
    report = json.loads(rebase(old, into, tiny_dirs, "--steps", "5", "--batch", "4", "--no-eval", "--json").stdout)
    assert report["into"]["resumed"] and report["resumed"] == done_before
    assert report["trained"] == total - done_before and report["count"] == total
    with Registry.open(into) as registry:
        lineage = [registry.provenance(e)["derived_from"]["edit"] for e in {e for _, e in registry.catalog.key_owners(0)}]
    assert len(lineage) == len(set(lineage)) == total  # each origin edit derived exactly once
    assert new.json("verify")["ok"]


def test_rebase_refuses_bad_targets_before_any_work(origin, tmp_path, tiny_dirs):
    old, _, _ = origin
    assert "rebase into a new directory" in rebase(old, old.root, tiny_dirs, ok=False).stderr
    assert "unknown revision" in rebase(old, tmp_path / "x", tiny_dirs, "--from", "nosuch", ok=False).stderr.lower() \
        or "error:" in rebase(old, tmp_path / "x", tiny_dirs, "--from", "nosuch", ok=False).stderr
    assert not (tmp_path / "x").exists()
    other = Sola(tmp_path / "other")  # a registry on the origin's own model: not a rebase target of llama
    other("init", "--model", str(tiny_dirs["gpt2"]), "--threshold", "0.05", "--layer", "2")
    assert "rebase into a new directory" in rebase(old, other.root, tiny_dirs, ok=False).stderr
    moved = Sola(tmp_path / "moved")  # a rebase of main, then main moves: not the same rebase to resume
    rebase(old, moved.root, tiny_dirs, "--no-eval")
    old("edit", "--prompt", "The capital of Spain is", "--target", "Lisbon", "--steps", "2", author="alice")
    log = moved("log", "--json").stdout
    assert "resume it with --from" in rebase(old, moved.root, tiny_dirs, "--no-eval", ok=False).stderr
    assert moved("log", "--json").stdout == log
    mixed = Sola(tmp_path / "mixed")  # on llama, but holding an edit made directly
    mixed("init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.05", "--layer", "2")
    mixed("edit", "--prompt", "The capital of Italy is", "--target", "Rome", "--steps", "2")
    log = mixed("log", "--json").stdout
    assert "not derived from this registry" in rebase(old, mixed.root, tiny_dirs, ok=False).stderr
    assert mixed("log", "--json").stdout == log


def test_rebase_carries_how_subject_queries_meet_keys(tmp_path, tiny_dirs):
    """A subject registry made without name ends keeps routing without them on the new model,
    though a new subject registry would take them by default."""
    old = Sola(tmp_path / "old")
    old("init", "--model", str(tiny_dirs["llama"]), "--key-function", "subject", "--no-name-ends", "--threshold", "0.05",
        "--layer", "2", *TRAIN)
    old("edit", "--prompt", LINES[0]["prompt"], "--target", LINES[0]["target_new"], "--subject", "France")
    report = json.loads(old("rebase", "--onto", str(tiny_dirs["gpt2"]), "--into", str(tmp_path / "new"), "--layer", "2",
                            "--no-eval", "--json").stdout)
    assert report["trained"] == 1
    assert (report["into"]["routing"]["key_function"], report["into"]["routing"]["name_ends"]) == ("subject", False)
