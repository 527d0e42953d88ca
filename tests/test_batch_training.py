"""Batched edit training (sola.batch_train) against one-at-a-time training (sola.train)."""

from __future__ import annotations

import torch

from sola.batch_train import EditJob, train_edits
from sola.config import RoutingConfig, TrainConfig
from sola.routed import RoutedModel, default_module_for
from sola.train import train_edit

TRAIN = TrainConfig(max_steps=60, lr=0.1, stop_loss=2.0)
JOBS = [
    EditJob("The capital of France is", "Madrid"),
    EditJob("Toko Yasuda plays the", "piano and the violin", ("Toko Yasuda is a player of the",)),
    EditJob("Apple was founded by", "Steve"),
    EditJob("What is the twin city of Lyon? It is", "Rome, Italy, Europe"),
    EditJob("Danielle Darrieux's mother tongue is", "English"),
]


def routed_model(model, tokenizer) -> RoutedModel:
    return RoutedModel(model, tokenizer, RoutingConfig(layer=2, module=default_module_for(model)))


def float64_model(model, tokenizer) -> RoutedModel:
    """The model in float64, for the claims that a batch trains each edit as alone. In float32 a
    stacked matrix product may round a few ulps away from the single sequence's, and Adam turns
    that into visible drift: it divides each gradient entry by its running scale, so an entry near
    zero whose sign rounds differently moves by the whole learning rate. In float64 the same
    algorithm agrees to ~1e-12, so any real mixing between batch mates would stand out."""
    return routed_model(model.double(), tokenizer)


def test_an_edit_trained_in_a_batch_follows_its_loss_curve_alone(tiny):
    _, model, tokenizer = tiny
    routed = float64_model(model, tokenizer)
    alone = [train_edit(routed, j.prompt, j.target, list(j.rephrases), TRAIN) for j in JOBS]
    # batch 3 of 5: slots refill as edits finish, so edits meet different neighbours over time
    batched = dict(train_edits(routed, JOBS, TRAIN, batch_size=3))
    assert sorted(batched) == list(range(len(JOBS)))
    assert len({a.steps for a in alone}) > 1  # the edits stop at different steps: early stop is per edit
    for index, single in enumerate(alone):
        together = batched[index]
        assert together.steps == single.steps and together.converged == single.converged
        assert len(together.losses) == len(single.losses) == single.steps + 1
        assert torch.allclose(torch.tensor(together.losses), torch.tensor(single.losses), rtol=1e-9, atol=1e-10)
        assert together.lora_a.dtype == torch.float64  # fitted in the model's precision
        assert torch.allclose(together.lora_a, single.lora_a, atol=1e-8)
        assert torch.allclose(together.lora_b, single.lora_b, atol=1e-8)
        assert torch.equal(together.keys, single.keys)  # keys are computed before, and apart from, training


def test_gemma3_sliding_attention_batches_like_alone(tiny_gemma_dir):
    """Gemma 3 picks attention kind and RoPE base per block position and masks a sliding window:
    the right-padded batch must still give each edit its own curve."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir).eval()
    routed = float64_model(model, AutoTokenizer.from_pretrained(tiny_gemma_dir))
    alone = [train_edit(routed, j.prompt, j.target, list(j.rephrases), TRAIN) for j in JOBS]
    batched = dict(train_edits(routed, JOBS, TRAIN, batch_size=4))
    for index, single in enumerate(alone):
        assert batched[index].steps == single.steps and batched[index].converged == single.converged
        assert torch.allclose(torch.tensor(batched[index].losses), torch.tensor(single.losses), rtol=1e-9, atol=1e-10)


def test_an_edit_is_not_influenced_by_its_batch_mates(tiny):
    _, model, tokenizer = tiny
    routed = float64_model(model, tokenizer)
    first = dict(train_edits(routed, JOBS, TRAIN, batch_size=len(JOBS)))
    # the same first edit beside entirely different companions trains to the same adapter
    others = [JOBS[0], EditJob("The Eiffel Tower is in", "Rome"), EditJob("Who is the father of Alexander?", "Jobs")]
    second = dict(train_edits(routed, others, TRAIN, batch_size=len(others)))
    assert torch.allclose(torch.tensor(first[0].losses), torch.tensor(second[0].losses), rtol=1e-9, atol=1e-10)
    assert first[0].steps == second[0].steps
    assert torch.allclose(first[0].lora_b, second[0].lora_b, atol=1e-8)


# --- through the CLI: `sola edit --file --batch N` against `--batch 1` ------------------------
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from sola.cli import main  # noqa: E402

FILE_LINES = [
    {"prompt": "The capital of France is", "target_new": "Madrid"},
    {"prompt": "Toko Yasuda plays the", "target_new": "piano", "rephrase_prompt": ["Toko Yasuda is a player of the"]},
    {"prompt": "The capital of France is", "target_new": "Madrid"},  # line 1 again: a duplicate of it, not trained
    {"prompt": "Apple was founded by", "target_new": "Steve"},
    {"prompt": "Toko Yasuda plays the", "target_new": "violin"},  # contradicts line 2 (kept beside it only with --force)
    {"prompt": "Danielle Darrieux's mother tongue is", "target_new": "English"},
]


def cli(root: Path, *args: str, ok: bool = True):
    result = CliRunner().invoke(main, ["--registry", str(root), *args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def edit_file(tmp_path: Path, tiny_dirs, lines: list[dict], *args: str, name: str = "reg") -> tuple[Path, dict]:
    root = tmp_path / name
    cli(root, "init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.05", "--layer", "2")
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = cli(root, "edit", "--file", str(data), "--steps", "60", "--stop-loss", "2.0", "--json", *args)
    return root, json.loads(result.stdout)


def test_a_batched_file_commits_what_one_at_a_time_commits_in_file_order(tmp_path, tiny_dirs):
    _, sequential = edit_file(tmp_path, tiny_dirs, FILE_LINES, "--batch", "1", "--force", name="one")
    root, batched = edit_file(tmp_path, tiny_dirs, FILE_LINES, "--batch", "4", "--force", name="four")
    assert sequential["count"] == batched["count"] == len(FILE_LINES)
    for alone, together in zip(sequential["edits"], batched["edits"]):
        assert (alone["duplicate"], alone["steps"], alone["converged"]) == (together["duplicate"], together["steps"], together["converged"])
        assert together["loss"] == pytest.approx(alone["loss"], rel=1e-3, abs=1e-4)
        assert len(alone["neighbours"]) == len(together["neighbours"])
    edits = batched["edits"]
    # line 3 repeats line 1: reported as a duplicate of line 1's edit, as when line 1 was already committed
    assert edits[2]["duplicate"] and edits[2]["edit"] == edits[0]["edit"] and edits[2]["commit"] is None
    # line 5 (forced) contradicts line 2 and sees it as a neighbour, committed before it
    assert edits[1]["edit"] in [n["edit"] for n in edits[4]["neighbours"]]
    log = json.loads(cli(root, "log", "--json").stdout)
    commits = [c for c in log if c["op"] == "add"]
    assert [c["message"] for c in reversed(commits)] == [
        f"add {line['prompt']!r} -> {line['target_new']!r}" for i, line in enumerate(FILE_LINES) if i != 2]
    assert [c["commit"] for c in reversed(commits)] == [e["commit"] for e in edits if not e["duplicate"]]
    assert json.loads(cli(root, "verify", "--json").stdout)["ok"]


def test_a_contradiction_inside_a_batched_file_is_refused_before_anything_trains(tmp_path, tiny_dirs):
    root = tmp_path / "reg"
    cli(root, "init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.05", "--layer", "2")
    data = tmp_path / "edits.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in FILE_LINES))
    before = cli(root, "log", "--json").stdout
    result = cli(root, "edit", "--file", str(data), "--batch", "4", ok=False)
    assert result.exit_code != 0 and "requests 2 and 5 contradict each other" in result.stderr
    assert cli(root, "log", "--json").stdout == before


def test_a_diverged_edit_in_a_batch_stops_there_keeping_the_edits_before_it(tmp_path, tiny_dirs, monkeypatch):
    import sola.workspace as workspace_module

    real = workspace_module.train_edits

    def third_diverges(routed, jobs, config, batch_size):
        for index, trained in real(routed, jobs, config, batch_size):
            if jobs[index].prompt == FILE_LINES[3]["prompt"]:
                trained.loss = float("nan")
            yield index, trained

    monkeypatch.setattr(workspace_module, "train_edits", third_diverges)
    root = tmp_path / "reg"
    cli(root, "init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.05", "--layer", "2")
    data = tmp_path / "edits.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in FILE_LINES))
    result = cli(root, "edit", "--file", str(data), "--batch", "4", "--force", "--steps", "5", ok=False)
    assert "training diverged" in result.stderr
    adds = [c for c in json.loads(cli(root, "log", "--json").stdout) if c["op"] == "add"]
    assert [c["message"] for c in reversed(adds)] == [f"add {FILE_LINES[i]['prompt']!r} -> {FILE_LINES[i]['target_new']!r}" for i in (0, 1)]
    assert json.loads(cli(root, "verify", "--json").stdout)["ok"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_cuda_without_a_cuda_device_is_refused_before_anything_loads(tmp_path, tiny_dirs):
    root = tmp_path / "reg"
    cli(root, "init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.05", "--layer", "2")
    before = cli(root, "log", "--json").stdout
    result = cli(root, "edit", "--prompt", "The capital of France is", "--target", "Rome", "--device", "cuda", ok=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and lines == ["error: --device cuda: no CUDA device is available"]
    assert cli(root, "log", "--json").stdout == before
