"""Linear heads on a backbone's features, varied: does a softer head make the
automatic policy safe on CIFAR-10N?  (Measured, not adopted: RESULTS.md §25.)

    python benchmarks/studies/bench_head_variants.py --part choose \
        --backbone gpupipe.models.nets:small_cnn_features --backbone-weights .bench/ssl-choose-e100.pt \
        [--weight-decay 1e-3 1e-2] [--clip 0 3]

For each (weight decay, clip) pair: `benchmarks/bench_cifar10n.py` with its
backbone round, the heads (`gpupipe.models.backbone.linear_head`) fitted with
that weight decay and their standardised features clipped to +-clip (0: no
clip) when scoring; prints its accuracy, flags and gated-policy lines.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpupipe.models import backbone as bb  # noqa: E402

ORIGINAL = bb.linear_head


class _Clipped:
    def __init__(self, head, clip: float):
        self.head, self.clip = head, clip

    def logits(self, x):
        with torch.inference_mode():
            z = (torch.as_tensor(x, dtype=torch.float32) - self.head.mean) / self.head.std
            return self.head.linear(z.clamp(-self.clip, self.clip))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cifar", default="/tmp/cifar10")
    ap.add_argument("--part", default="choose")
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--backbone-weights", required=True)
    ap.add_argument("--weight-decay", type=float, nargs="+", default=[1e-3, 1e-2])
    ap.add_argument("--clip", type=float, nargs="+", default=[0.0, 3.0])
    args = ap.parse_args()
    import bench_cifar10n

    for wd in args.weight_decay:
        for clip in args.clip:
            def head(x, y, k, *, weight_decay=1e-3, iterations=200, _wd=wd, _clip=clip):
                h = ORIGINAL(x, y, k, weight_decay=_wd, iterations=iterations)
                return _Clipped(h, _clip) if _clip > 0 else h

            bb.linear_head = head
            sys.argv = ["bench_cifar10n.py", "--cifar", args.cifar, "--part", args.part, "--backbone", args.backbone,
                        "--backbone-weights", args.backbone_weights, "--tag", "head-variant"]
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                bench_cifar10n.main()
            keep = [ln for ln in buf.getvalue().splitlines()
                    if "accuracy" in ln or "flags" in ln or "policy (default)" in ln]
            print(f"weight decay {wd:g}, clip {clip:g}:", *keep, sep="\n  ")
    bb.linear_head = ORIGINAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
