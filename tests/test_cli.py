"""End to end through the CLI (click's runner) on a tiny Llama saved as a Hugging Face directory."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from sola.cli import main
from sola.config import TrainConfig

PROMPT = "The capital of France is"


class Sola:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True):
        result = self.runner.invoke(main, ["--registry", str(self.root), *args], catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str):
        return json.loads(self(*args, "--json").stdout)

    def fails(self, *args: str) -> str:
        result = self(*args, ok=False)
        assert result.exit_code != 0
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return lines[0]


@pytest.fixture
def sola(tmp_path, tiny_dirs) -> Sola:
    cli = Sola(tmp_path / "reg")
    cli("init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.001")
    return cli


def test_edit_generate_revoke_roundtrip(sola):
    before = sola.json("generate", PROMPT, "--max-new-tokens", "4")
    assert before["edit"] is None
    made = sola.json("edit", "--prompt", PROMPT, "--target", "Madrid", "--reason", "demo", "--steps", "100")
    assert made["edit"] and made["commit"]
    during = sola.json("generate", PROMPT, "--max-new-tokens", "4")
    assert during["edit"] == made["edit"]
    assert during["text"].startswith(" Madrid")
    revoked = sola.json("revoke", made["edit"][:10], "--reason", "wrong")
    assert revoked["op"] == "revoke"
    after = sola.json("generate", PROMPT, "--max-new-tokens", "4")
    assert after["edit"] is None and after["text"] == before["text"]


def test_revoke_names_the_active_edit_that_still_answers_the_revoked_prompt(tmp_path, tiny_dirs):
    wide = Sola(tmp_path / "wide")
    wide("init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.5", "--radius-ratio", "0", "--revoke-mode", "delete")
    first = wide.json("edit", "--prompt", PROMPT, "--target", "Madrid", "--steps", "20")
    second = wide.json("edit", "--prompt", "The capital city of France is", "--target", "Rome", "--steps", "20", "--force")
    warned = wide("revoke", first["edit"], "--reason", "wrong")
    assert f"still answered by active edit {second['edit'][:12]}" in warned.stderr
    wide("restore", first["edit"], "--reason", "again, for the JSON form")
    revoked = wide.json("revoke", first["edit"], "--reason", "wrong")
    [claim] = revoked["still_answered_by"]
    assert claim["input"] == PROMPT and claim["edit"] == second["edit"] and claim["distance"] < claim["radius"]
    assert wide.json("generate", PROMPT, "--max-new-tokens", "2")["edit"] == second["edit"]  # the model agrees
    warned = wide("revoke", second["edit"], "--reason", "also wrong")
    assert "still answered" not in warned.stderr  # nothing active is left to answer it
    assert wide.json("generate", PROMPT, "--max-new-tokens", "2")["edit"] is None


def test_tombstone_returns_a_revoked_prompt_to_the_base_output_while_a_restatement_stays_active(tmp_path, tiny_dirs):
    wide = Sola(tmp_path / "wide")
    wide("init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.5", "--radius-ratio", "0")  # default revoke mode
    restated = "The capital city of France is"
    base = {p: wide.json("generate", p, "--max-new-tokens", "4")["text"] for p in (PROMPT, restated)}
    first = wide.json("edit", "--prompt", PROMPT, "--target", "Madrid", "--steps", "20")
    second = wide.json("edit", "--prompt", restated, "--target", "Rome", "--steps", "20", "--force")
    revoked = wide("revoke", first["edit"], "--reason", "wrong")
    assert "still answered" not in revoked.stderr
    after = wide.json("generate", PROMPT, "--max-new-tokens", "4")
    assert after["edit"] is None and after["nearest_edit"] == first["edit"] and after["text"] == base[PROMPT]
    assert f"{first['edit'][:12]} at 0.0000 < radius 0.5000 is revoked" in wide("generate", PROMPT, "--explain").stderr
    assert wide.json("generate", restated, "--max-new-tokens", "4")["edit"] == second["edit"]  # unaffected
    assert wide.json("verify")["ok"]
    assert [(r["edit"], r["tombstone"]) for r in wide.json("audit", "--revoked")] == [(first["edit"], True)]
    wide.json("export", "main", str(tmp_path / "snap"))
    snapshot = Sola(tmp_path / "none").json("generate", PROMPT, "--snapshot", str(tmp_path / "snap"), "--max-new-tokens", "4")
    assert snapshot["edit"] is None and snapshot["text"] == base[PROMPT]
    wide("restore", first["edit"], "--reason", "it was right")
    assert wide.json("generate", PROMPT, "--max-new-tokens", "4")["edit"] == first["edit"]


def test_log_lists_commits_newest_first_with_contract_fields(sola):
    made = sola.json("edit", "--prompt", PROMPT, "--target", "Madrid", "--author", "alice")
    log = sola.json("log")
    assert [c["op"] for c in log] == ["add", "init"]
    assert log[0]["commit"] == made["commit"] and log[0]["author"] == "alice"
    assert {"commit", "time", "author", "op", "message"} <= set(log[0])
    assert len(sola.json("log", "--limit", "1")) == 1


def test_generate_at_a_revision_and_a_time_sees_the_model_as_it_was(sola):
    first = sola.json("log")[0]
    made = sola.json("edit", "--prompt", PROMPT, "--target", "Madrid")
    sola("tag", "before", first["commit"][:12])
    assert sola.json("generate", PROMPT, "--rev", "before")["edit"] is None
    assert sola.json("generate", PROMPT, "--rev", "main~1")["edit"] is None
    assert sola.json("generate", PROMPT, "--at", first["time"])["edit"] is None
    assert sola.json("generate", PROMPT, "--rev", made["commit"][:8])["edit"] == made["edit"]
    assert "error: main did not exist" in sola.fails("generate", PROMPT, "--at", "1999-01-01T00:00:00Z")


def test_show_diff_audit_and_restore(sola):
    made = sola.json("edit", "--prompt", PROMPT, "--target", "Madrid", "--reason", "why not", "--source", "unit")
    shown = sola.json("show", made["edit"][:12])
    assert shown["kind"] == "edit" and shown["provenance"]["reason"] == "why not" and shown["active"]
    with duckdb.connect(str(sola.root / "registry.duckdb"), read_only=True) as database:
        [(key_bytes,)] = database.execute("SELECT vector FROM key_vectors").fetchall()
    assert shown["keys_sha256"] == shown["provenance"]["keys_sha256"] == hashlib.sha256(key_bytes).hexdigest()
    assert sola.json("show", made["commit"][:12])["changes"][0]["edit"] == made["edit"]
    assert [e["edit"] for e in sola.json("diff", "main~1", "main")["added"]] == [made["edit"]]
    sola("revoke", made["edit"], "--reason", "false", "--author", "auditor")
    [item] = sola.json("audit", "--revoked")
    assert {k: item[k] for k in ("edit", "prompt", "target", "revoked_by", "reason")} == {
        "edit": made["edit"], "prompt": PROMPT, "target": "Madrid", "revoked_by": "auditor", "reason": "false"}
    assert item["commit"] == sola.json("log")[0]["commit"] and item["revoked_at"]
    sola("restore", made["edit"], "--reason", "true after all")
    assert sola.json("audit", "--revoked") == []
    assert [a["op"] for a in sola.json("audit")] == ["init", "add", "revoke", "restore"]
    assert sola.json("generate", PROMPT)["edit"] == made["edit"]


def test_contradiction_is_refused_unless_superseded_and_duplicate_changes_nothing(sola):
    first = sola.json("edit", "--prompt", PROMPT, "--target", "Madrid")
    message = sola.fails("edit", "--prompt", PROMPT, "--target", "Spain")
    assert first["edit"][:12] in message and "distance" in message
    duplicate = sola.json("edit", "--prompt", PROMPT, "--target", " Madrid")
    assert duplicate["duplicate"] and duplicate["edit"] == first["edit"] and duplicate["commit"] is None
    assert len(sola.json("log")) == 2
    replaced = sola.json("edit", "--prompt", PROMPT, "--target", "Spain", "--supersede", first["edit"][:12])
    assert replaced["superseded"] == [first["edit"]]
    commit = sola.json("show", replaced["commit"])
    assert commit["op"] == "supersede" and {(c["edit"], c["active"]) for c in commit["changes"]} == {
        (first["edit"], False), (replaced["edit"], True)}


def test_neighbours_within_threshold_are_reported(tmp_path, tiny_dirs):
    sola = Sola(tmp_path / "wide")
    sola("init", "--model", str(tiny_dirs["llama"]), "--threshold", "1.5")
    first = sola.json("edit", "--prompt", PROMPT, "--target", "Madrid")
    second = sola.json("edit", "--prompt", "Toko Yasuda plays the", "--target", "piano")
    assert [n["edit"] for n in second["neighbours"]] == [first["edit"]]
    assert sola.json("show", second["edit"])["neighbours"][0]["edit"] == first["edit"]
    [pair] = sola.json("conflicts")
    assert {pair["a"]["edit"], pair["b"]["edit"]} == {first["edit"], second["edit"]}


def test_edit_file_validates_every_line_before_training(sola, tmp_path):
    bad = tmp_path / "edits.jsonl"
    bad.write_text(json.dumps({"prompt": PROMPT, "target_new": "Madrid"}) + "\n{not json}\n")
    assert ":2:" in sola.fails("edit", "--file", str(bad))
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"prompt": "x"}) + "\n")
    assert "target_new" in sola.fails("edit", "--file", str(missing))
    assert len(sola.json("log")) == 1
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": PROMPT, "target_new": "Madrid", "rephrase_prompt": "France's capital is"},
        {"prompt": "Toko Yasuda plays the", "target_new": "piano"}]) + "\n")
    result = sola.json("edit", "--file", str(good))
    assert result["count"] == 2
    assert [c["op"] for c in sola.json("log")] == ["add", "add", "init"]
    assert sola.json("generate", "France's capital is")["edit"] == result["edits"][0]["edit"]


def test_bad_input_gives_one_error_line_and_changes_nothing(sola, tiny_dirs, tmp_path):
    sola.json("edit", "--prompt", PROMPT, "--target", "Madrid")
    before = sola.json("log")
    assert "empty prompt" in sola.fails("edit", "--prompt", "  ", "--target", "x")
    assert "empty target" in sola.fails("edit", "--prompt", "x", "--target", "")
    assert "unknown edit" in sola.fails("revoke", "abcdef123456", "--reason", "x")
    assert "unknown revision" in sola.fails("generate", PROMPT, "--rev", "nope")
    assert "empty prompt" in sola.fails("generate", " ")
    edit = before[0]["commit"]
    made = sola.json("show", edit)["changes"][0]["edit"]
    sola("revoke", made, "--reason", "x")
    assert "already revoked" in sola.fails("revoke", made, "--reason", "again")
    assert "model not found" in Sola(tmp_path / "other").fails("init", "--model", str(tmp_path / "nothing"))
    assert not (tmp_path / "other").exists()
    assert "no registry" in Sola(tmp_path / "none").fails("log")
    assert len(sola.json("log")) == len(before) + 1


def test_edit_stop_loss_fits_the_target_below_it_and_is_recorded_with_the_edit(tmp_path, tiny_dirs):
    results = {}
    for stop_loss in ("3.0", "1.2"):
        cli = Sola(tmp_path / stop_loss)
        cli("init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.001")
        made = cli.json("edit", "--prompt", PROMPT, "--target", "Madrid", "--steps", "200", "--stop-loss", stop_loss)
        record = cli.json("show", made["edit"])["provenance"]
        assert record["training"]["stop_loss"] == float(stop_loss) and record["training"]["max_steps"] == 200
        assert record["result"]["converged"] and record["result"]["loss"] < float(stop_loss)
        results[stop_loss] = record["result"]
    assert results["1.2"]["steps"] > results["3.0"]["steps"]


def test_training_set_at_init_is_the_default_for_every_edit_and_eval_until_a_flag_overrides_it(tmp_path, tiny_dirs):
    cli = Sola(tmp_path / "reg")
    made = cli.json("init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.001", "--stop-loss", "1.2", "--steps", "200")
    assert made["training"]["stop_loss"] == 1.2 and made["training"]["max_steps"] == 200 and made["training"]["lr"] == TrainConfig().lr
    by_default = cli.json("edit", "--prompt", PROMPT, "--target", "Madrid")
    overridden = cli.json("edit", "--prompt", "The tallest mountain is", "--target", "Rome", "--stop-loss", "3.0")
    default_record, override_record = (cli.json("show", m["edit"])["provenance"]["training"] for m in (by_default, overridden))
    assert (default_record["stop_loss"], default_record["max_steps"]) == (1.2, 200)
    assert (override_record["stop_loss"], override_record["max_steps"]) == (3.0, 200)
    data = Path(__file__).parent / "fixtures" / "zsre-3.json"
    assert cli.json("eval", "--data", str(data), "--limit", "1")["protocol"]["training"]["stop_loss"] == 1.2


def test_bad_training_settings_are_refused_before_anything_is_trained(sola, tmp_path, tiny_dirs):
    before = sola.json("log")
    # refused by the option parser (tests/test_fuzz.py has the full table)
    assert "'--stop-loss': 0 is not in the range 0<x<=100" in sola.fails("edit", "--prompt", PROMPT, "--target", "x", "--stop-loss", "0")
    assert "'--lr': -1 is not in the range 0<x<=10" in sola.fails("edit", "--prompt", PROMPT, "--target", "x", "--lr", "-1")
    assert "'--steps': -3 is not in the range 0<=x<=10000" in sola.fails("edit", "--prompt", PROMPT, "--target", "x", "--steps", "-3")
    data = Path(__file__).parent / "fixtures" / "zsre-3.json"
    assert "'--stop-loss'" in sola.fails("eval", "--data", str(data), "--stop-loss", "-0.5")
    assert sola.json("log") == before
    assert "'--lr': 0 is not in the range" in Sola(tmp_path / "other").fails("init", "--model", str(tiny_dirs["llama"]), "--lr", "0")
    assert not (tmp_path / "other").exists()


def test_usage_errors_are_one_error_line(sola):
    assert "--reason" in sola.fails("revoke", "abcd")
    assert "nope" in sola.fails("nope")
    assert "--limit" in sola.fails("log", "--limit", "many")


def test_batch_contradictions_are_refused_before_any_training(sola, tmp_path):
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Toko Yasuda plays the", "target_new": "piano"},
        {"prompt": PROMPT, "target_new": "Madrid"},
        {"prompt": PROMPT, "target_new": "Spain"}]) + "\n")
    assert "requests 2 and 3 contradict" in sola.fails("edit", "--file", str(batch))
    assert len(sola.json("log")) == 1


def test_registry_refuses_a_different_base_model(sola, tiny_dirs):
    weights = tiny_dirs["llama"] / "model.safetensors"
    original = weights.read_bytes()
    try:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(weights))
        name = next(iter(tensors))
        tensors[name] = tensors[name] + 1
        save_file(tensors, str(weights), metadata={"format": "pt"})
        assert "edits were made on" in sola.fails("generate", PROMPT)
    finally:
        weights.write_bytes(original)


def test_export_snapshot_generates_like_the_registry_without_it(sola, tmp_path):
    made = sola.json("edit", "--prompt", PROMPT, "--target", "Madrid", "--steps", "100")
    expected = sola.json("generate", PROMPT, "--max-new-tokens", "4")
    exported = sola.json("export", "main", str(tmp_path / "snap"))
    assert exported["edits"] == 1
    manifest = json.loads((tmp_path / "snap" / "manifest.json").read_text())
    assert manifest["edits"][0]["edit"] == made["edit"] and manifest["base_model"]["sha256"]
    snapshot = Sola(tmp_path / "no-registry-here").json("generate", PROMPT, "--snapshot", str(tmp_path / "snap"), "--max-new-tokens", "4")
    assert (snapshot["text"], snapshot["edit"]) == (expected["text"], made["edit"])
    assert "not empty" in sola.fails("export", "main", str(tmp_path / "snap"))


def test_verify_passes_then_names_a_tampered_object(sola):
    made = sola.json("edit", "--prompt", PROMPT, "--target", "Madrid")
    assert sola.json("verify")["ok"]
    tensors = sola.json("show", made["edit"])["tensors_sha256"]
    path = sola.root / "objects" / tensors[:2] / tensors[2:]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "corrupted" in sola.fails("verify")


def test_second_writer_is_told_the_registry_is_locked(sola):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(30)"),
        str(sola.root / "registry.duckdb")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        message = sola.fails("revoke", "abcd", "--reason", "x", "--wait", "0.5")
        assert message == "error: registry is locked by another sola process"
    finally:
        holder.kill()


def test_every_cli_command_is_documented():
    docs = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    documented = set(re.findall(r"^## `sola ([a-z-]+)", docs, flags=re.M))
    assert set(main.commands) == documented


@pytest.mark.parametrize("fixture", ["counterfact-4.json", "zsre-3.json"])
def test_eval_reports_every_contract_metric(sola, fixture, tmp_path):
    data = Path(__file__).parent / "fixtures" / fixture
    report = sola.json("eval", "--data", str(data), "--limit", "3", "--plot", str(tmp_path / "eval.png"), "--stop-loss", "0.5")
    assert report["n_edits"] == 3
    assert report["protocol"]["training"]["stop_loss"] == 0.5
    for name in ("edit_success", "retention", "generalization", "locality", "rollback_fidelity"):
        assert 0.0 <= report[name] <= 1.0, name
    assert report["seconds_per_edit"] > 0
    assert report["rollback_unrouted_exact"] == 1.0
    assert report["rollback_reroute_predicted"] == 1.0
    assert report["protocol"]["format"] == ("zsre" if "zsre" in fixture else "counterfact")
    assert (tmp_path / "eval.png").stat().st_size > 0
    assert len(sola.json("log")) == 1  # the scratch registry, not this one, received the edits


def test_eval_restore_brings_edits_back_and_leaves_the_rest_revoked(tiny_dirs, tmp_path):
    from sola.evaluate import run_eval

    data = Path(__file__).parent / "fixtures" / "counterfact-4.json"
    result = run_eval(data, str(tiny_dirs["llama"]), {"threshold": 0.001}, limit=4, every=2,
                      training={"max_steps": 100}, scratch=tmp_path)
    restored = [r for r in result.records if r.restored]
    still_revoked = [r for r in result.records if r.revoked and not r.restored]
    assert len(restored) == 1 and len(still_revoked) == 1
    assert restored[0].retention_after_restore == restored[0].retention == 1.0
    assert still_revoked[0].still_revoked_exact is True
    assert [c["edits"] for c in result.curve] == [2, 4]
    assert all({"generalization", "locality", "retention"} <= set(c) for c in result.curve)
    summary = result.summary()
    assert summary["n_restored"] == 1 and summary["restored_retention"] == 1.0


def test_eval_revokes_an_edit_that_answers_several_records_once_and_counts_them_all(tiny_dirs, tmp_path):
    """A record that duplicates an earlier one is answered by that edit: rollback once crashed
    revoking it a second time ("already revoked") 40 minutes into a zsRE 1000 eval."""
    from sola.evaluate import run_eval

    fact = {"prompt": "Toko Yasuda plays the", "target_new": "piano", "subject": "Toko Yasuda"}
    data = tmp_path / "repeated.json"
    data.write_text(json.dumps([fact] * 4))
    result = run_eval(data, str(tiny_dirs["llama"]), {"threshold": 0.05}, limit=4,
                      training={"max_steps": 100}, scratch=tmp_path)
    assert len({r.edit for r in result.records}) == 1  # the repeats are duplicates of the first edit
    assert all(r.revoked for r in result.records)  # revoking it revokes every record it answers
    assert all(r.rollback_exact for r in result.records)
    summary = result.summary()
    assert (summary["n_revoked"], summary["n_restored"], summary["rollback_fidelity"]) == (4, 0, 1.0)


def test_eval_generalisation_credits_a_restatement_with_the_same_target_as_the_field_does(tiny_dirs, tmp_path):
    """EasyEdit's rephrase accuracy scores the edited model, whichever edit answers; the strict
    variant also requires the paraphrase to fire its own edit."""
    from sola.evaluate import run_eval

    restated = [
        {"prompt": "Kenya African National Union is located in", "target_new": "Venezuela",
         "subject": "Kenya African National Union", "rephrase_prompt": "The headquarters of KANU are in"},
        {"prompt": "The headquarters of KANU are in", "target_new": "Venezuela", "subject": "KANU",
         "rephrase_prompt": "David Robinson professionally plays the sport"},
    ]
    data = tmp_path / "restated.json"
    data.write_text(json.dumps(restated))
    result = run_eval(data, str(tiny_dirs["llama"]), {"threshold": 0.001}, limit=2,
                      training={"max_steps": 100}, scratch=tmp_path)
    first = result.records[0]
    assert first.paraphrase_fired == result.records[1].edit  # its paraphrase is the second edit's prompt
    assert first.generalization == 1.0 and first.generalization_routed == 0.0
    summary = result.summary()
    assert summary["generalization_routed"] <= summary["generalization"]
    assert 0.0 <= summary["generalization_base"] < 1.0


def test_eval_summary_separates_restated_facts_from_unique_subjects():
    from sola.evaluate import EvalResult, RecordResult

    def record(index: int, subject: str, shared: bool, accuracy: float, fired: str | None) -> RecordResult:
        own = fired == f"e{index}"
        return RecordResult(index, f"e{index}", subject, 1.0, 0.1, 3, 0, subject_shared=shared,
                            paraphrase_routed=own, paraphrase_fired=fired, generalization=accuracy,
                            generalization_routed=accuracy if own else 0.0)

    records = [record(0, "Toodyay Fire Station", True, 1.0, "e1"),  # fired the restatement, same target
               record(1, "Toodyay Fire Station", True, 1.0, "e1"),
               record(2, "NGC 6604", False, 1.0, "e2"),
               record(3, "Kyrre Nakkim", False, 0.0, None)]
    summary = EvalResult({}, records).summary()
    assert summary["generalization"] == 0.75 and summary["generalization_routed"] == 0.5
    assert summary["generalization_unique_subject"] == 0.5 and summary["n_unique_subject"] == 2
    assert summary["paraphrase_to_same_subject_edit"] == 1
    # no record was probed on other relations (no subjects): not measured, rather than all changed
    assert summary["locality_relation"] is None and summary["relation_probe_fires"] is None
    assert summary["n_relation_probes"] == 0
    records[2].locality_relation, records[2].relation_fired = 0.5, 1.0
    probed = EvalResult({}, records).summary()
    assert probed["locality_relation"] == 0.5 and probed["n_relation_probes"] == 1


def test_eval_summary_gives_bootstrap_intervals_that_bracket_each_metric_and_narrow_with_more_edits():
    from sola.evaluate import EvalResult, RecordResult

    def stream(n: int) -> EvalResult:
        records = [RecordResult(i, f"e{i}", None, 1.0, 0.1, 3, 0, locality=float(i % 4 != 0), revoked=i % 2 == 0,
                                rollback_exact=True) for i in range(n)]
        return EvalResult({}, records)

    small, large = stream(40).summary(), stream(400).summary()
    low, high = large["intervals"]["locality"]
    assert low < large["locality"] == 0.75 < high
    assert high - low < small["intervals"]["locality"][1] - small["intervals"]["locality"][0]
    assert large["intervals"]["edit_success"] == [1.0, 1.0] and large["intervals"]["rollback_fidelity"] == [1.0, 1.0]
    assert "generalization" not in large["intervals"]  # no paraphrases, no interval


def test_benchmark_file_mixing_zsre_and_counterfact_records_reads_as_mixed(tmp_path):
    from sola.data import read_benchmark

    fixtures = Path(__file__).parent / "fixtures"
    zsre, counterfact = (json.loads((fixtures / name).read_text()) for name in ("zsre-3.json", "counterfact-4.json"))
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([zsre[0], counterfact[0], zsre[1]]))
    kind, requests = read_benchmark(mixed)
    assert kind == "mixed"
    assert [r.prompt for r in requests] == [zsre[0]["src"], counterfact[0]["prompt"], zsre[1]["src"]]
    assert read_benchmark(fixtures / "zsre-3.json")[0] == "zsre" and read_benchmark(fixtures / "counterfact-4.json")[0] == "counterfact"
