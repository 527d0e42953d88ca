"""The main job (`make demo`): edit a fact into the default model, check locality, revoke it, show the log.

Runs on the real bundled SmolLM2-135M-Instruct through the same API the CLI uses, in a fresh
registry (default ./demo-registry, replaced on every run).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from sola.data import EditRequest
from sola.layer import EditBank
from sola.workspace import Workspace

FACT = "The Eiffel Tower is located in the city of"
NEW_TARGET = "Rome"
PARAPHRASE = "The Eiffel Tower can be found in the city of"
UNRELATED = "The largest planet in the solar system is"


def show(title: str, prompt: str, result) -> None:
    if result.edit:
        fired = f"edit {result.edit[:12]} fired (distance {result.distance:.4f} < radius {result.radius:.4f})"
    elif result.held_by_tombstone:
        fired = f"no edit fired: revoked edit {result.nearest[:12]} holds this input for the base model (tombstone)"
    else:
        fired = "no edit fired"
    print(f"  {title:<10} {prompt!r} ->{result.text!r}   [{fired}]")


def base_logits(workspace: Workspace, prompt: str) -> torch.Tensor:
    routed = workspace.model()
    with routed.bank_override(EditBank.empty()):
        return routed.prompt_logits(prompt)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--registry", type=Path, default=Path("demo-registry"))
    args = parser.parse_args()
    if args.registry.exists():
        shutil.rmtree(args.registry)

    print(f"1. sola init {args.registry} (SmolLM2-135M-Instruct; first run converts the GGUF once, ~30 s)")
    workspace = Workspace.init(args.registry, None, {}, "demo")
    routing = workspace.routing
    print(f"   layer {routing.layer} {routing.module}, rank {routing.rank}, key {routing.key_function}, threshold {routing.threshold}, radius ratio {routing.radius_ratio}")

    print("2. the base model")
    for prompt in (FACT, UNRELATED):
        show("before", prompt, workspace.generate([prompt], max_new_tokens=8)[0])
    reference = {p: base_logits(workspace, p) for p in (FACT, UNRELATED)}

    print(f"3. sola edit --prompt {FACT!r} --target {NEW_TARGET!r} --rephrase {PARAPHRASE!r}")
    outcome = workspace.edit(EditRequest(FACT, NEW_TARGET, (PARAPHRASE,)), author="demo", reason="counterfactual demo", source="demo")
    print(f"   edit {outcome.edit[:12]} in commit {outcome.commit[:12]}: {outcome.steps} steps, loss {outcome.loss:.3f}, {outcome.seconds:.2f} s")
    for prompt in (FACT, PARAPHRASE, UNRELATED):
        show("edited", prompt, workspace.generate([prompt], max_new_tokens=8)[0])
    routed, _ = workspace.routed_at()
    unrelated_identical = torch.equal(routed.prompt_logits(UNRELATED)[0], reference[UNRELATED])
    print(f"   unrelated prompt's logits bit-identical to the base model: {unrelated_identical}")

    print(f"4. sola revoke {outcome.edit[:12]} --reason 'demo over'")
    workspace.set_active(outcome.edit, False, "demo over", "demo")
    show("revoked", FACT, workspace.generate([FACT], max_new_tokens=8)[0])
    routed, _ = workspace.routed_at()
    restored_identical = torch.equal(routed.prompt_logits(FACT)[0], reference[FACT])
    print(f"   edited prompt's logits bit-identical to the base model again: {restored_identical}")

    print("5. sola log")
    for commit in workspace.registry.log():
        print(f"   {commit.commit_id[:12]}  {commit.op:<7} {commit.author:<5} {commit.message}" + (f"  ({commit.reason})" if commit.reason else ""))
    print("6. sola generate --rev main~1 (the model as it was before the revoke)")
    show("main~1", FACT, workspace.generate([FACT], revision="main~1", max_new_tokens=8)[0])
    workspace.close()
    if not (unrelated_identical and restored_identical):
        raise SystemExit("demo failed: logits were not bit-identical")
    print(f"done. Explore it: sola --registry {args.registry} log / show / audit --revoked / verify")


if __name__ == "__main__":
    main()
