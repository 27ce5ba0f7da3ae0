"""The check's 16 px step: how low do the copies the stage accepts score there?

    python benchmarks/studies/bench_coarse_floor.py --dataset digits|fashion [bench_verify_roc.py's options]
    python benchmarks/studies/bench_coarse_floor.py --run RUN [--verify pixels|photo]

Runs `benchmarks/bench_verify_roc.py` (planted copies of 12 kinds vs candidate
pairs of different originals) with each pair's coarse score (`verify.COARSE_MIN`
applies to it: the 16 px correlation over shifts of up to 4 px) recorded, and
prints, per kind, the lowest coarse score among the copies the stage accepts
(0.99 / 0.995 on the full 32 px search), and how many accepted copies and gated
negatives a higher coarse floor would keep.  A floor no accepted copy falls
below only saves work (the 32 px step for the pairs it stops); measured, not
adopted (RESULTS.md §27).

With ``--run``: the same over the pairs the dedup stage scores on a finished
run directory (through `benchmarks/bench_dedup_step.py`): the coarse score of
the pairs the pixel check accepts, and the share of scored pairs past each floor.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))

from gpupipe.hashing import verify  # noqa: E402
from gpupipe.transforms import EXTRA_KINDS, NEAR_KINDS  # noqa: E402

FLOORS = (0.8, 0.85, 0.88, 0.9, 0.92)


def on_run(run: str, mode: str) -> int:
    rec = []
    score = verify.PairCheck._score

    def recorded(self, i, j, full=False):
        out = score(self, i, j, full)
        (ci,), (cj,) = self._coarse.get(i), self._coarse.get(j)
        surf = verify.correlations(ci, cj, verify.COARSE_SHIFT, verify.COARSE_SHIFT, self.xp)
        coarse = verify._peak_anywhere(surf, surf.reshape(len(i), -1).argmax(axis=1), self.xp)
        rec.append(np.stack([coarse, out, self.unmoved(i, j).astype(np.float32)], 1))
        return out

    verify.PairCheck._score = recorded
    import bench_dedup_step

    with contextlib.redirect_stdout(io.StringIO()):
        bench_dedup_step.main(["--run", run, "--verify", mode])
    r = np.concatenate(rec)
    coarse, sim, unmoved = r[:, 0], r[:, 1], r[:, 2] > 0
    acc = sim >= np.where(unmoved, verify.DEFAULT_MIN_SIMILARITY, verify.DEFAULT_MIN_SIMILARITY + verify.MOVED_MARGIN)
    print(f"{run}: {len(r)} pairs scored, {int(acc.sum())} accepted by the pixel check; "
          f"lowest coarse score among them {coarse[acc].min() if acc.any() else float('nan'):.4f}")
    for t in FLOORS:
        print(f"coarse floor {t}: {int((coarse >= t).sum())} pairs past it ({(coarse >= t).mean():.3f}), "
              f"accepted kept {int((acc & (coarse >= t)).sum())}")
    return 0


def main() -> int:
    if "--run" in sys.argv:
        at = sys.argv.index("--run")
        mode = sys.argv[sys.argv.index("--verify") + 1] if "--verify" in sys.argv else "pixels"
        return on_run(sys.argv[at + 1], mode)
    calls = []
    similarity = verify.PairCheck.similarity

    def recorded(self, i, j, gate=True, full=False):
        (ci,), (cj,) = self._coarse.get(i), self._coarse.get(j)
        surf = verify.correlations(ci, cj, verify.COARSE_SHIFT, verify.COARSE_SHIFT, self.xp)
        coarse = verify._peak_anywhere(surf, surf.reshape(len(i), -1).argmax(axis=1), self.xp)
        out = similarity(self, i, j, gate=gate, full=full)
        calls.append((coarse, out, self.unmoved(i, j), self.gate(i, j)))
        return out

    verify.PairCheck.similarity = recorded
    import bench_verify_roc

    with contextlib.redirect_stdout(io.StringIO()):
        bench_verify_roc.main()
    (cp, sp, up, gp), (cn, _, _, gn) = calls[0], calls[1]
    kinds = NEAR_KINDS + EXTRA_KINDS
    kind = np.array([k for _ in range(len(cp) // len(kinds)) for k in kinds])
    acc = gp & (sp >= np.where(up, verify.DEFAULT_MIN_SIMILARITY, verify.DEFAULT_MIN_SIMILARITY + verify.MOVED_MARGIN))
    print(f"copies accepted by the stage's decision: {int(acc.sum())} of {len(acc)}")
    for k in kinds:
        a = acc & (kind == k)
        low = f"{cp[a].min():.4f}" if a.any() else "-"
        print(f"  {k:14s} accepted {int(a.sum()):4d}, lowest coarse score among them {low}")
    for t in FLOORS:
        print(f"coarse floor {t}: accepted copies kept {int((acc & (cp >= t)).sum())} of {int(acc.sum())}; "
              f"gated negatives past it {int(((cn >= t) & gn).sum())} of {int(gn.sum())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
