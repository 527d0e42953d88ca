"""Write sola/probe_data/relation_templates.json from known-1000's relation templates.

    .venv/bin/python scripts/make_relation_templates.py --known ../shared/data/known-1000.json

For each Wikidata relation in known-1000 (33 relations), its most common prompt template
(e.g. P103 "The native language of {} is"); ties go to the alphabetically first. These are the
other-relation probes `sola eval` asks about each edited subject (sola/probes.py). Never reads
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
    templates = {relation: sorted(counts.items(), key=lambda item: (-item[1], item[0]))[0][0]
                 for relation, counts in sorted(by_relation.items())}
    OUT.write_text(json.dumps({"source": "known-1000.json (most common template per relation)", "templates": templates}, indent=1) + "\n")
    print(f"{len(templates)} relation templates -> {OUT}")


if __name__ == "__main__":
    main()
