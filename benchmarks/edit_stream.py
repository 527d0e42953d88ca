"""Sequential-editing benchmark: `sola eval` on a benchmark file, results to JSON + PNG.

    .venv/bin/python benchmarks/edit_stream.py --data ../shared/data/counterfact-1k.json --limit 100 --name counterfact-100

Writes benchmarks/results/<name>.json (summary, per-record results, protocol) and <name>.png.
`--resummarise` recomputes the summary and plot of an existing <name>.json from its records,
for metrics added after the run (the stream itself is not repeated).
Threads are fixed (default 2) and recorded; run nothing else heavy at the same time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import torch

from sola.config import RoutingConfig
from sola.evaluate import EvalResult, RecordResult, run_eval
from sola.plots import plot_eval

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--name", required=True)
    parser.add_argument("--layer", type=int, default=RoutingConfig.layer)
    parser.add_argument("--threshold", type=float, default=RoutingConfig.threshold)
    parser.add_argument("--radius-ratio", type=float, default=RoutingConfig.radius_ratio, help="0 = global threshold only")
    parser.add_argument("--key-function", default=RoutingConfig.key_function)
    parser.add_argument("--start-token", type=int, default=-1,
                        help="subject keys: the token put before every prompt (-1: the registry's default)")
    parser.add_argument("--name-ends", action="store_true", help="subject queries end only where a name may end (RoutingConfig.name_ends)")
    parser.add_argument("--revoke-mode", default=RoutingConfig.revoke_mode, choices=["tombstone", "delete"])
    parser.add_argument("--stop-loss", type=float, default=None, help="training early stop (loss under it, targets argmax; default: what init records)")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--contexts", type=int, default=None, help="generic contexts each edit is also fitted after")
    parser.add_argument("--relation-prompts", type=int, default=None)
    parser.add_argument("--relation-kl", type=float, default=None)
    parser.add_argument("--every", type=int, default=0, help="retention of all past edits every K edits")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="edits trained at once (sola.batch_train); 1 = one at a time")
    parser.add_argument("--resummarise", action="store_true", help="recompute <name>.json's summary and plot from its records")
    args = parser.parse_args()
    if args.resummarise:
        resummarise(RESULTS / f"{args.name}.json")
        return
    if args.data is None:
        parser.error("--data is required")

    torch.set_num_threads(args.threads)
    routing = RoutingConfig(layer=args.layer, threshold=args.threshold, radius_ratio=args.radius_ratio,
                            key_function=args.key_function, revoke_mode=args.revoke_mode,
                            start_token=args.start_token, name_ends=args.name_ends).to_dict()

    def progress(stage: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"{stage}: {done}/{total}", file=sys.stderr, flush=True)

    given = {"stop_loss": args.stop_loss, "max_steps": args.max_steps, "lr": args.lr, "contexts": args.contexts,
             "relation_prompts": args.relation_prompts, "relation_kl": args.relation_kl}
    training = {name: value for name, value in given.items() if value is not None}  # the rest: what init records
    result = run_eval(args.data, None, routing, limit=args.limit, every=args.every, progress=progress, training=training,
                      batch=args.batch)
    summary = result.summary()
    summary["protocol"]["machine"] = {"cpus": torch.get_num_threads(), "platform": platform.platform(), "python": platform.python_version()}
    write_results(RESULTS / f"{args.name}.json", result, summary)


def write_results(path: Path, result: EvalResult, summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"summary": summary, "records": [dataclasses.asdict(r) for r in result.records]}
    path.write_text(json.dumps(document, indent=1))
    plot_eval(result, path.with_suffix(".png"))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("protocol", "curve")}, indent=1))


def resummarise(path: Path) -> None:
    """Summary from the stored records; the run's own peak memory is kept (this process's is not it)."""
    document = json.loads(path.read_text())
    stored = document["summary"]
    missing = {f.name for f in dataclasses.fields(RecordResult)} - set(document["records"][0])
    if missing:  # e.g. runs whose `generalization` was the strict variant: recomputing would relabel it
        raise SystemExit(f"error: {path} was written by an older eval (records lack {', '.join(sorted(missing))}); rerun the stream")
    records = [RecordResult(**r) for r in document["records"]]
    result = EvalResult(stored["protocol"], records, stored["curve"])
    summary = result.summary()
    summary["peak_rss_mb"] = stored["peak_rss_mb"]
    write_results(path, result, summary)


if __name__ == "__main__":
    main()
