"""What a run directory's summary says: `RunSummary` (summary.json, written by
dedup) and the counts per stage the HTML report and the CLI show."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from gpupipe import __version__, schema
from gpupipe.rundir import SUMMARY


@dataclass
class RunSummary:
    source: str
    run_dir: str
    device: str
    executor: str
    device_note: str
    layout: str
    rows: int
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    max_distance: int = 0
    shift_distance: int = 0
    verify: dict[str, Any] = field(default_factory=dict)
    recall: dict[str, Any] = field(default_factory=dict)    # per kind, from the probes
    versions: dict[str, Any] = field(default_factory=dict)

    def images_per_second(self) -> dict[str, float]:
        return {k: (self.rows / v if v > 0 else float("inf")) for k, v in self.seconds.items()}


def counts(t: pa.Table) -> dict[str, Any]:
    import pyarrow.compute as pc

    def col(name):
        return t.column(name)

    kinds = pc.value_counts(col(schema.DEDUP_KIND)).to_pylist()
    reasons = pc.value_counts(col(schema.INVALID_REASON)).to_pylist()
    non_unique = pc.and_(pc.greater(col(schema.DEDUP_GROUP_SIZE), 1), col(schema.DEDUP_KEEP))
    return {
        "invalid": int(pc.sum(col(schema.IS_INVALID)).as_py() or 0),
        "invalid_by_reason": {r["values"]: r["counts"] for r in reasons if r["values"] is not None},
        "kept": int(pc.sum(col(schema.DEDUP_KEEP)).as_py() or 0),
        "duplicates": int(pc.sum(pc.is_valid(col(schema.DEDUP_DUPLICATE_OF))).as_py() or 0),
        "duplicate_groups": int(pc.sum(non_unique).as_py() or 0),
        "duplicates_by_kind": {k["values"]: k["counts"] for k in kinds if k["values"] is not None},
        "label_conflict_groups": int(pc.sum(pc.and_(col(schema.DEDUP_LABEL_CONFLICT), col(schema.DEDUP_KEEP))).as_py() or 0),
        "split_leak_groups": int(pc.sum(pc.and_(col(schema.DEDUP_SPLIT_LEAK), col(schema.DEDUP_KEEP))).as_py() or 0),
    }


def recall_summary(per_kind: dict, sample: int) -> dict[str, Any]:
    if not per_kind:
        return {}
    from gpupipe.transforms import COMPOSITE_KIND

    single = {k: v for k, v in per_kind.items() if k != COMPOSITE_KIND}
    copies = sum(v["copies"] for v in single.values())
    found = sum(v["found"] for v in single.values())
    comp = per_kind.get(COMPOSITE_KIND)
    return {"sample": sample, "copies": copies, "recall": round(found / copies, 4) if copies else None,
            "composite_recall": comp["recall"] if comp else None,
            "false_matches": sum(v["false_matches"] for v in per_kind.values()), "by_kind": per_kind}


def versions() -> dict[str, Any]:
    from gpupipe.dali.decode import dali_version

    return {"gpupipe": __version__, "python": sys.version.split()[0], "dali": dali_version(),
            "pyarrow": pa.__version__}


def brief(stage: str, stats) -> str:
    if stage == "balance":
        kept = sum(c["kept"] for c in stats.classes.values())
        surplus = sum(c["surplus"] for c in stats.classes.values())
        counts = [c["kept"] for c in stats.classes.values()] or [0]
        per = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
        target = "no target" if stats.target is None else f"target {stats.target}"
        return (f"{kept} kept ({per} per class, {target}), {surplus} surplus, "
                f"excluded {stats.excluded}")
    return f"test {stats.test}, train {stats.train} in {len(stats.folds)} folds {stats.folds}"


def report_counts(run_dir: Path, done: dict) -> dict[str, dict]:
    summary = json.loads((run_dir / SUMMARY).read_text())
    c = summary["counts"]
    out = {"ingest": {"images": summary["rows"], "layout": summary["layout"]},
              "dedup": {"invalid": c["invalid"], **{f"invalid: {k}": v for k, v in c["invalid_by_reason"].items()},
                        "duplicates": c["duplicates"], "duplicate groups": c["duplicate_groups"],
                        "label-conflict groups": c["label_conflict_groups"],
                        "split-leak groups": c["split_leak_groups"]}}
    recall = summary.get("recall") or {}
    if recall:
        out[f"dedup recall, measured on {recall['sample']} of these images"] = {
            "all kinds": f"{recall['recall']:.3f}", "false matches": recall["false_matches"],
            **{k: f"{v['recall']:.2f} ({v['found']}/{v['copies']})" for k, v in recall["by_kind"].items()}}
    if "rank" in done:
        out["rank / review"] = dict(done["rank"].get("stats", {}))
    if "balance" in done:
        b = done["balance"]["stats"]
        out["balance"] = {"target per class": "none" if b["target"] is None else b["target"],
                             "kept": sum(v["kept"] for v in b["classes"].values()),
                             "surplus": sum(v["surplus"] for v in b["classes"].values()),
                             **{f"excluded: {k}": v for k, v in b["excluded"].items()}}
    if "split" in done:
        s = done["split"]["stats"]
        out["split"] = {"test": s["test"], "train": s["train"], "folds": len(s["folds"]),
                           "validation rows per fold": ", ".join(map(str, s["folds"]))}
    return out
