"""What a subject key without its subject fires on: why a subject-keyed registry refuses such edits.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/subject_fallback.py --records 300 --groups 25

Among the first `--records` CounterFact records (`../shared/data`), records whose prompts share
one relation template up to the subject ("The mother tongue of {} is") form groups. For the first
record of up to `--groups` groups, a one-edit bank is keyed (sola.train.routing_key) once on the
record's subject and once without it (the prompt's last tokens stand in), under the studied
subject routing (threshold 0.2, radius ratio 0.5, start token); then it counts how often the
edit fires on up to 3 other records' prompts of the same template (other subjects: every fire is
a locality failure) and on the record's own rephrase. A third row writes every prompt in lower
case, so that it names nobody, and keys the edit on what sola.subjects infers from it then (its
first content words): what `sola edit` does with a prompt that has no capitalised name. Routing
only, no training. Results: benchmarks/results/subject_fallback.json.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

from sola.config import SUBJECT_ROUTING_DEFAULTS, RoutingConfig
from sola.layer import EditBank
from sola.modelio import load_base
from sola.routed import RoutedModel, start_token_for
from sola.subjects import infer_subject
from sola.train import routing_key

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--groups", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer, _ = load_base(None)
    config = RoutingConfig(key_function="subject", start_token=start_token_for(tokenizer), **SUBJECT_ROUTING_DEFAULTS)
    routed = RoutedModel(model, tokenizer, config)
    records = json.loads((DATA / "counterfact-1k.json").read_text())[: args.records]
    templates: dict[str, list[dict]] = collections.defaultdict(list)
    for record in records:
        templates[record["prompt"].replace(record["subject"], "{}")].append(record)
    groups = [(members[0], members[1:4]) for members in templates.values() if len(members) >= 2][: args.groups]
    no_lora = (torch.zeros(config.rank, routed.layer.in_features), torch.zeros(routed.layer.out_features, config.rank))

    def fires(bank: EditBank, prompt: str) -> bool:
        return routed.route(routed.encode(prompt).input_ids[0].tolist(), bank=bank).edits[0] == "e"

    report = {}
    for keyed_on in ("subject", "last tokens", "inferred, lower case"):
        lower = keyed_on == "inferred, lower case"
        text = str.lower if lower else (lambda prompt: prompt)
        other_fires = others = own_fires = found = 0
        for edit, same_template in groups:
            subject = infer_subject(text(edit["prompt"])) if lower else edit["subject"] if keyed_on == "subject" else None
            found += lower and subject == edit["subject"].lower()
            key = routing_key(routed, text(edit["prompt"]), subject)
            bank = EditBank.from_tensors({"e": (*no_lora, key[None])})
            own_fires += fires(bank, text(edit["rephrase_prompt"]))
            for other in same_template:
                other_fires += fires(bank, text(other["prompt"]))
                others += 1
        report[keyed_on] = {"other_subject_fire_rate": other_fires / others, "other_subject_prompts": others,
                            "own_rephrase_fire_rate": own_fires / len(groups), "edits": len(groups)}
        if lower:
            report[keyed_on]["inferred_is_the_subject"] = found / len(groups)
        print(keyed_on, json.dumps(report[keyed_on]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "subject_fallback.json").write_text(json.dumps({"records": args.records, "routing": config.to_dict(), "report": report}, indent=1) + "\n")


if __name__ == "__main__":
    main()
