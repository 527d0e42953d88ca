"""Stop rules replayed over benchmarks/stop_rule.py trajectories (see its docstring)."""
import json, sys, statistics
d = json.load(open(sys.argv[1]))
rules = [("loss<0.05", lambda t: t["argmax"] and t["loss"] < 0.05), ("loss<0.1", lambda t: t["argmax"] and t["loss"] < 0.1),
         ("loss<0.2", lambda t: t["argmax"] and t["loss"] < 0.2), ("loss<0.5", lambda t: t["argmax"] and t["loss"] < 0.5),
         ("argmax", lambda t: t["argmax"]), ("minp>0.5", lambda t: t["minprob"] > 0.5), ("minp>0.8", lambda t: t["minprob"] > 0.8),
         ("loss<0.02", lambda t: t["argmax"] and t["loss"] < 0.02), ("loss<0.01", lambda t: t["argmax"] and t["loss"] < 0.01)]
for lr, rows in d.items():
    for name, rule in rules:
        steps, gen, rel, ok = [], [], [], 0
        for traj in rows:
            k = next((i for i, t in enumerate(traj) if rule(t)), len(traj) - 1)
            ok += rule(traj[k])
            steps.append(k); t = traj[k]
            if t["gen"]: gen.append(statistics.mean(t["gen"]))
            if t["rel"]: rel.append(statistics.mean(t["rel"]))
        print(f"lr {lr} n {len(rows)} {name:10s} steps med {statistics.median(steps):4.1f} mean {statistics.mean(steps):5.2f} reached {ok/len(rows):.2f} gen {statistics.mean(gen):.3f} rel {statistics.mean(rel):.3f}")
