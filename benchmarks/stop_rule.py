"""Learning rate and stop rule, routing aside: what each step of one edit's training buys.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stop_rule.py --out benchmarks/results/stop_rule_cf60.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stop_rule.py --data zsre-eval-1037.json --out benchmarks/results/stop_rule_zsre60.json
    .venv/bin/python benchmarks/stop_rule.py --analyse benchmarks/results/stop_rule_cf60.json

Records offset..offset+records of `--data` (../shared/data) are each trained for a fixed
`--steps` Adam steps per learning rate (subject-key registry settings, fresh LoRA as sola.train),
the LoRA forced on; after every step the trajectory records the loss, whether every target token
is the argmax, the smallest target-token probability, teacher-forced accuracy after up to 3
paraphrases and the base-argmax share of 2 other-relation probes (sola.probes). `--analyse`
replays stop rules over the trajectories: where each would stop, and what the edit is then."""
import json, sys, time, argparse
from pathlib import Path
import torch
from sola.config import RoutingConfig, SUBJECT_ROUTING_DEFAULTS
from sola.data import read_benchmark
from sola.modelio import load_base
from sola.probes import relation_probes
from sola.routed import RoutedModel, start_token_for

p = argparse.ArgumentParser()
p.add_argument("--records", type=int, default=60)
p.add_argument("--offset", type=int, default=100)
p.add_argument("--data", default="counterfact-1k.json")
p.add_argument("--lrs", default="0.05,0.1,0.2")
p.add_argument("--steps", type=int, default=14)
p.add_argument("--out", default="benchmarks/results/stop_rule.json")
p.add_argument("--analyse", default=None)
a = p.parse_args()
if a.analyse:
    import runpy; sys.argv = ["analyse", a.analyse]; runpy.run_path(str(Path(__file__).with_name("stop_rule_analyse.py"))); raise SystemExit
torch.set_num_threads(1)
model, tok, _ = load_base(None)
cfg = RoutingConfig(key_function="subject", start_token=start_token_for(tok), **SUBJECT_ROUTING_DEFAULTS)
routed = RoutedModel(model, tok, cfg)
layer = routed.layer
_, reqs = read_benchmark(Path("/work/shared/data") / a.data, a.offset + a.records)
reqs = reqs[a.offset:]
probes = relation_probes(reqs, per_edit=2)
@torch.no_grad()
def nxt(prompt):
    return int(model(input_ids=routed.encode(prompt).input_ids, use_cache=False).logits[0, -1].argmax())
base = {pr.prompt: nxt(pr.prompt) for pr in probes}
out = {}
for lr in [float(x) for x in a.lrs.split(",")]:
    rows = []
    for i, r in enumerate(reqs):
        g = torch.Generator().manual_seed(0)
        A = (torch.randn(cfg.rank, layer.in_features, generator=g) * 0.02).requires_grad_(True)
        B = torch.zeros(layer.out_features, cfg.rank).requires_grad_(True)
        opt = torch.optim.Adam([A, B], lr=lr)
        e = routed.encode(r.prompt, r.target); s = e.prompt_len - 1
        reph = [routed.encode(ph, r.target) for ph in r.rephrases[:3]]
        traj = []
        for step in range(a.steps + 1):
            with layer.training_adapter(A, B):
                lg = model(input_ids=e.input_ids, use_cache=False).logits[0, s:s+len(e.target_ids)]
                loss = torch.nn.functional.cross_entropy(lg, e.target_ids)
                with torch.no_grad():
                    gen = []
                    for x in reph:
                        l2 = model(input_ids=x.input_ids, use_cache=False).logits[0, x.prompt_len-1:x.prompt_len-1+len(x.target_ids)]
                        gen.append(float((l2.argmax(-1) == x.target_ids).float().mean()))
                    rel = [1.0 if nxt(pr.prompt) == base[pr.prompt] else 0.0 for pr in probes if pr.record == i]
            traj.append({"loss": float(loss), "argmax": bool((lg.argmax(-1) == e.target_ids).all()),
                         "minprob": float(lg.softmax(-1).gather(1, e.target_ids[:, None]).min()), "gen": gen, "rel": rel})
            if step < a.steps:
                opt.zero_grad(); loss.backward(); opt.step()
        rows.append(traj)
        print(lr, i, [round(t["loss"], 3) for t in traj], [t["gen"] for t in traj][-1], file=sys.stderr, flush=True)
    out[str(lr)] = rows
    Path(a.out).write_text(json.dumps(out))
