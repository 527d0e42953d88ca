"""Write a mixed edit file: zsRE questions and CounterFact statements interleaved, as one registry
holding both kinds of facts would receive them (the case the radius ratio is for, results.md 4b).

    .venv/bin/python benchmarks/make_mixed.py --each 400 --out /tmp/mixed-800.json

Records keep their own field names (`src`/`alt` for zsRE, `prompt`/`target_new` for CounterFact);
`sola eval` maps each record by its fields. Order: zsRE 0, CounterFact 0, zsRE 1, ... (first N of
each file). Never reads ../shared/holdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--each", type=int, default=400, help="records taken from each file")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    zsre = json.loads((DATA / "zsre-eval-1037.json").read_text())[: args.each]
    counterfact = json.loads((DATA / "counterfact-1k.json").read_text())[: args.each]
    mixed = [record for pair in zip(zsre, counterfact) for record in pair]
    args.out.write_text(json.dumps(mixed, indent=1))
    print(f"{len(mixed)} records -> {args.out}")


if __name__ == "__main__":
    main()
