"""Scale: `rank`'s scoring alone over a bench_scale.py run (WebDataset shards).

    python benchmarks/bench_rank_scale.py [--run .bench/scale/n1000000/run] [--rows N]

With an untrained small CNN (throughput does not depend on its weights),
times, in one process:
- scoring: `gpupipe.stages.rank.run_job` over every kept row, the code rank
  runs per job: DALI reads the members from the shards (external_source),
  decodes, resizes to 32x32, the model scores in batches of 1024, per-sample
  results copied back;
- the bare forward: the same model on the same number of 32x32 inputs
  already in memory, batches of 1024, torch's CPU threads.
Target (issue 9): scoring >= 80% of the bare forward's images/s.  Peak RSS of
the process is reported (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import torch

    from gpupipe import schema
    from gpupipe.models import nets
    from gpupipe.models.train import TrainConfig
    from gpupipe.stages import rank as rank_stage
    from gpupipe.table import Ledger

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=".bench/scale/n1000000/run")
    ap.add_argument("--rows", type=int, default=None, help="score only the first N kept rows")
    args = ap.parse_args()
    from gpupipe.device import cpu_device

    ledger = Ledger(cpu_device())
    frame = ledger.read(Path(args.run) / "ledger.parquet")
    n = len(frame)
    none = (np.full(n, None, object), np.zeros(n, bool))
    frame = ledger.assign(frame, {schema.REVIEW_STATUS: none, schema.REVIEW_LABEL: none,
                                  schema.REVIEW_HOLDOUT: (np.zeros(n, bool), np.zeros(n, bool))})
    rows = rank_stage.rows_of(frame, ledger)
    elig = np.flatnonzero(rows.eligible)
    if args.rows:
        elig = elig[:args.rows]
    k = len(rows.classes)
    cfg = TrainConfig(augment=None)
    model = nets.build(nets.resolve_model("small-cnn"), k, 1, seed=0)   # throughput does not depend on weights
    state = {name: v.detach().clone() for name, v in model.state_dict().items()}
    warm = rank_stage.Job("cpu", cfg, k, 1, 0, rows.y, elig[:2048], list(rows.paths[elig[:2048]]), 1024, state=state)
    rank_stage.run_job(warm)                                # DALI and torch warmed up

    t = time.perf_counter()
    job = rank_stage.Job("cpu", cfg, k, 1, 0, rows.y, elig, list(rows.paths[elig]), 1024, state=state)
    res = rank_stage.run_job(job)
    t_score = time.perf_counter() - t
    assert len(res.scores.rows) == len(elig)

    model.eval()
    x = torch.rand(1024, 1, 32, 32)
    n_batches = -(-len(elig) // 1024)
    with torch.inference_mode():
        model(x)
        t = time.perf_counter()
        for _ in range(n_batches):
            model(x)
        t_fwd = time.perf_counter() - t
    out = {"machine": f"{platform.node()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
           "command": " ".join(sys.argv), "rows_scored": len(elig),
           "score_s": round(t_score, 1), "score_images_per_s": round(len(elig) / t_score),
           "bare_forward_images_per_s": round(n_batches * 1024 / t_fwd),
           "score_vs_forward": round(t_fwd / t_score * len(elig) / (n_batches * 1024), 3),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
           "torch_threads": torch.get_num_threads()}
    print(json.dumps(out, indent=2))
    Path(args.run).parent.joinpath("RESULTS-rank-scale.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
