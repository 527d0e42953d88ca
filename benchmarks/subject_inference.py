"""How often sola.subjects finds a record's own subject in its prompt (no model needed).

    .venv/bin/python benchmarks/subject_inference.py

For every record of ../shared/data's CounterFact and zsRE files that names a subject: the
subject inferred from the prompt alone, compared with the record's. Reported per file: exact
(the same text), partial (one contains the other: "Christian" for "Christian liturgy"), other,
and none (the prompt holds no capitalised name, so a subject-keyed registry refuses the edit
without --subject), with a sample of the misses. Whether keys read from inferred subjects route
as well is measured by `benchmarks/subject_keys.py --infer-subjects`.
Results: benchmarks/results/subject_inference.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from sola.data import read_benchmark
from sola.subjects import infer_subject

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
FILES = ("counterfact-1k.json", "zsre-eval-1037.json")


def measure(path: Path) -> dict:
    _, requests = read_benchmark(path, 100_000)
    counts = {"exact": 0, "partial": 0, "other": 0, "none": 0}
    misses = []
    for request in requests:
        if not request.subject:
            continue
        given, found = request.subject.strip(), infer_subject(request.prompt)
        if found is None:
            kind = "none"
        elif found == given:
            kind = "exact"
        elif found in given or given in found:
            kind = "partial"
        else:
            kind = "other"
        counts[kind] += 1
        if kind != "exact" and len(misses) < 25:
            misses.append({"prompt": request.prompt, "subject": given, "inferred": found, "kind": kind})
    total = sum(counts.values())
    return {"records": total, **counts, "exact_share": counts["exact"] / total, "misses": misses}


def main() -> None:
    results = {name: measure(DATA / name) for name in FILES}
    for name, result in results.items():
        print(f"{name}: {result['exact']}/{result['records']} exact ({result['exact_share']:.3f}), "
              f"{result['partial']} partial, {result['other']} other, {result['none']} none")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "subject_inference.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
