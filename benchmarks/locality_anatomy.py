"""Which edit an "unrelated" locality prompt fires, and whether the prompt names that edit's subject.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/locality_anatomy.py \
        --data ../shared/data/counterfact-1k.json --limit 1000 \
        --stream benchmarks/results/counterfact-1000-subject-stop001.json

The field's unrelated-locality score counts every locality prompt whose answer an edit moves as
a failure. In a 1000-edit CounterFact bank many of those prompts are not unrelated to the bank
at all: a neighbourhood prompt ("Dennis Rodman plays" for an Otto Graham edit) may name the
subject of *another* edit in the same bank, sometimes asking the very fact that edit changed.
This study keys every record's edit as a subject registry does (`sola.train.routing_key` under
the routing `sola init --model M --key-function subject` records: the family's block,
threshold, radius ratio and start token), routes every record's locality prompt through the
whole bank (zero LoRAs: routing only, no training) and sorts each fire:

- `names_fired_subject_same_fact`: the prompt names the fired edit's subject and its expected
  answer is that edit's old answer (CounterFact `ground_truth`): it asks the edited fact, so an
  edit that generalises must move it;
- `names_fired_subject_other_fact`: names the fired edit's subject, asks something else: a
  relation-locality case (the subject key says who, not what about);
- `inside_longer_name`: the fired edit's subject is in the prompt only as part of a longer name
  ("David Bowie plays" fires a "David" edit): a genuine false fire, and one a causal model cannot
  tell apart at the subject's last token, which has not yet seen the rest of the name;
- `names_no_fired_subject`: the fired edit's subject is not in the prompt: a genuine false fire
  (near names: "BMW M30" against a "BMW M40" edit).

"Names" is a whole-name match: the subject's text at word boundaries, not followed by another
capitalised word and not preceded by one (other than the prompt's first word).

With `--stream` (an `edit_stream.py` result over the same records, same order) it joins each
record's measured locality and reports the score over the prompts of each class, so the
unrelated-locality miss can be read as what it is. `--name-ends` routes the same bank with
RoutingConfig.name_ends on: a prompt that then fires nothing scores 1 (the base model bit for
bit), one that still fires keeps the stream's measured score (an estimate; the stream itself
measures it when run with `--name-ends`). Never reads ../shared/holdout.
It also reports how often each record's first paraphrase reaches its own edit (what a routing
change could cost). Results: benchmarks/results/locality_anatomy_<name>.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

import torch

from sola.arch import routing_defaults
from sola.config import RoutingConfig
from sola.data import read_benchmark
from sola.layer import EditBank
from sola.modelio import load_base
from sola.routed import RoutedModel, subject_start_token
from sola.subjects import infer_subject
from sola.train import routing_key

RESULTS = Path(__file__).parent / "results"
CLASSES = ("no_fire", "names_fired_subject_same_fact", "names_fired_subject_other_fact", "inside_longer_name",
           "names_no_fired_subject")
GENUINE = ("inside_longer_name", "names_no_fired_subject")


def mention(prompt: str, subject: str) -> str | None:
    """"whole" where the prompt names the subject as a name of its own, "part" where the subject's
    text is only inside a longer name, None where it does not occur at word boundaries."""
    found = None
    for match in re.finditer(re.escape(subject), prompt):
        before, after = prompt[: match.start()], prompt[match.end():]
        if (before and before[-1].isalnum()) or (after and after[0].isalnum()):
            continue
        continues = re.match(r"\s+[A-Z]", after) is not None
        previous = re.search(r"(\S+)\s+$", before)
        extends = previous is not None and previous.start(1) > 0 and previous.group(1)[0].isupper() \
            and previous.group(1)[-1].isalpha()
        if not (continues or extends):
            return "whole"
        found = "part"
    return found


def old_answer(record: dict) -> str | None:
    """The answer the edit replaces, where the record says it (CounterFact's `ground_truth`)."""
    value = record.get("ground_truth")
    return value.strip() if isinstance(value, str) else None


def classify(prompt: str, answer: str | None, fired: dict | None) -> str:
    if fired is None:
        return "no_fire"
    named = mention(prompt, fired["subject"])
    if named is None:
        return "names_no_fired_subject"
    if named == "part":
        return "inside_longer_name"
    same = answer is not None and fired["old_answer"] is not None and answer.strip().lower() == fired["old_answer"].lower()
    return "names_fired_subject_same_fact" if same else "names_fired_subject_other_fact"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--stream", type=Path, default=None, help="edit_stream.py result over the same records")
    parser.add_argument("--name", default=None)
    parser.add_argument("--examples", type=int, default=12)
    parser.add_argument("--name-ends", action="store_true", help="route with RoutingConfig.name_ends on")
    parser.add_argument("--model", default=None, help="base model as `sola init --model` takes it (default: SmolLM2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, requests = read_benchmark(args.data, args.limit)
    raw = json.loads(args.data.read_text())[: args.limit]
    model, tokenizer, identity = load_base(args.model)
    # what `sola init --model M --key-function subject` records, name ends as asked
    settings = {**routing_defaults(model, "subject"), "start_token": subject_start_token(model, tokenizer), "name_ends": args.name_ends}
    config = RoutingConfig.from_dict(settings)
    routed = RoutedModel(model, tokenizer, config)
    zeros = (torch.zeros(config.rank, routed.layer.in_features), torch.zeros(routed.layer.out_features, config.rank))

    edits: dict[str, dict] = {}
    tensors = {}
    for index, (request, record) in enumerate(zip(requests, raw)):
        subject = request.subject if request.names_subject and request.subject in request.prompt else infer_subject(request.prompt)
        if subject is None:
            continue
        edit_id = f"e{index}"
        tensors[edit_id] = (*zeros, routing_key(routed, request.prompt, subject)[None])
        edits[edit_id] = {"index": index, "subject": subject, "old_answer": old_answer(record), "prompt": request.prompt}
        if index % 100 == 0:
            print(f"keyed {index}/{len(requests)}", flush=True)
    bank = EditBank.from_tensors(tensors)

    stream = json.loads(args.stream.read_text())["records"] if args.stream else None
    counts: collections.Counter = collections.Counter()
    scores: dict[str, list[float]] = collections.defaultdict(list)
    examples: dict[str, list[dict]] = collections.defaultdict(list)
    own_fires = paraphrase_own = paraphrases = 0
    for index, request in enumerate(requests):
        if request.rephrases and f"e{index}" in edits:  # does the first paraphrase still reach its own edit?
            reached = routed.route(routed.encode(request.rephrases[0]).input_ids[0].tolist(), bank=bank).edits[0]
            paraphrase_own += reached == f"e{index}"
            paraphrases += 1
        if not request.locality_prompt:
            continue
        chosen = routed.route(routed.encode(request.locality_prompt).input_ids[0].tolist(), bank=bank).edits[0]
        fired = edits.get(chosen) if chosen else None
        own_fires += fired is not None and fired["index"] == index
        kind = classify(request.locality_prompt, request.locality_answer, fired)
        counts[kind] += 1
        # a prompt that fires nothing is the base model bit for bit; one that fires keeps the stream's
        # measured score (exact when the stream routed as this run does; an estimate under --name-ends)
        score = (1.0 if kind == "no_fire" else stream[index]["locality"]) if stream else None
        if score is not None:
            scores[kind].append(score)
        if kind != "no_fire" and len(examples[kind]) < args.examples:
            examples[kind].append({"record": index, "locality_prompt": request.locality_prompt, "answer": request.locality_answer,
                                   "fired_subject": fired["subject"], "fired_prompt": fired["prompt"],
                                   "fired_old_answer": fired["old_answer"], "locality": score})
    total = sum(counts.values())
    report = {"data": str(args.data), "name_ends": args.name_ends, "records": len(requests), "keyed": len(edits), "locality_prompts": total,
              "model": identity.to_dict(), "routing": config.to_dict(), "fires_own_edit": own_fires,
              "paraphrase_fires_own_edit": paraphrase_own / max(1, paraphrases), "paraphrases": paraphrases,
              "classes": {kind: {"prompts": counts[kind], "share": counts[kind] / total,
                                 "locality": (sum(scores[kind]) / len(scores[kind])) if scores[kind] else None,
                                 "locality_failures": sum(1 for s in scores[kind] if s < 1)} for kind in CLASSES}}
    if stream:
        all_scores = [s for kind in CLASSES for s in scores[kind]]
        unnamed = scores["no_fire"] + [s for kind in GENUINE for s in scores[kind]]
        report["locality_all"] = sum(all_scores) / len(all_scores)
        # the score over the prompts that do not name a fired edit's subject as a name of its own
        report["locality_not_naming_fired_subject"] = sum(unnamed) / len(unnamed)
        report["stream"] = str(args.stream)
    report["examples"] = examples
    for kind in CLASSES:
        print(f"{kind:>32}: {json.dumps(report['classes'][kind])}")
    print(f"{'paraphrase_fires_own_edit':>32}: {report['paraphrase_fires_own_edit']:.4f} of {paraphrases}")
    for name in ("locality_all", "locality_not_naming_fired_subject"):
        if name in report:
            print(f"{name:>32}: {report[name]:.4f}")
    RESULTS.mkdir(exist_ok=True)
    name = args.name or args.data.stem
    (RESULTS / f"locality_anatomy_{name}.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
