"""Write sola/probe_data/relation_templates.json from known-1000's relation templates.

    .venv/bin/python scripts/make_relation_templates.py --known ../shared/data/known-1000.json

For each Wikidata relation in known-1000 (33 relations), its most common prompt template
(e.g. P103 "The native language of {} is"); ties go to the alphabetically first. These are the
other-relation probes `sola eval` asks about each edited subject (sola/probes.py). The next
most common template of each relation that is no relation's evaluation template goes to
`training_templates`: the prompts an edit's training may hold to the base model
(TrainConfig.relation_kl), so that training and evaluation never share a prompt. Never reads
../shared/holdout.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "sola" / "probe_data" / "relation_templates.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--known", type=Path, required=True, help="known-1000.json (ROME's known facts)")
    args = parser.parse_args()
    records = json.loads(args.known.read_text())
    by_relation: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for record in records:
        by_relation[record["relation_id"]][record["template"]] += 1
    ranked = {relation: [t for t, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
              for relation, counts in sorted(by_relation.items())}
    templates = {relation: order[0] for relation, order in ranked.items()}
    # a training template is never an evaluation template (of any relation) nor another's training one
    training: dict[str, str] = {}
    for relation, order in ranked.items():
        unused = [t for t in order[1:] if t not in templates.values() and t not in training.values()]
        if unused:
            training[relation] = unused[0]
    OUT.write_text(json.dumps({"source": "known-1000.json (most common template per relation; training: the second)",
                               "templates": templates, "training_templates": training}, indent=1) + "\n")
    print(f"{len(templates)} relation templates, {len(training)} training templates -> {OUT}")


if __name__ == "__main__":
    main()
