"""`gpupipe bench` on real images (the demo's digits, with its invalid files):
every stage's row is there and positive, the JSON is what the table says,
and SRC is left as it was.  No timing is asserted."""

from __future__ import annotations

import hashlib
import json
import os
import re

from gpupipe.bench import format_table
from gpupipe.cli import main

STAGES = ["ceiling", "hash", "probe", "search", "check", "rest", "dedup", "decode", "score", "score_files", "forward",
          "train"]


def _tree_state(root) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = ""
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def test_bench_rows_json_and_source_untouched(digits_planted, tmp_path, capsys):
    root, truth = digits_planted
    before = _tree_state(root)
    parent_before = sorted(os.listdir(root.parent))
    out = tmp_path / "bench.json"
    assert main(["bench", str(root), "--device", "cpu", "--limit", "400", "--train-limit", "256",
                 "--repeat", "2", "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())

    # every stage, in the pipeline's order, measured twice (repeat) and positive
    assert [r["key"] for r in result["rows"]] == STAGES
    for r in result["rows"]:
        assert r["seconds"] > 0 and r["per_s"] > 0 and r["of_decode_ceiling"] > 0, r
        assert r["items"] > 0 and r["peak_host_bytes"] > 0, r
        assert len(r["rounds"]) == (1 if r["key"] in ("decode", "train") else 2), r
    by = {r["key"]: r for r in result["rows"]}
    assert result["sample"] == {**result["sample"], "images": 400, "seed": 0}
    # the ceiling decodes only what decodes: the sample's invalid files are not in it
    assert by["ceiling"]["items"] < 400 and by["hash"]["items"] == 400
    assert by["train"]["items"] == 256
    assert by["score"]["items"] == by["score_files"]["items"] == by["decode"]["items"] == by["ceiling"]["items"]
    assert result["ratios"]["dedup_vs_ceiling"] == by["dedup"]["of_decode_ceiling"]
    assert result["machine"]["cores"] >= 1 and result["machine"]["versions"]["dali"]

    # the JSON is what the table says: the same rendering, and each row's numbers in the printed table
    assert format_table(result) in printed
    table = [ln for ln in printed.splitlines() if ln.startswith("| ") and not ln.startswith("| stage")]
    assert len(table) == len(STAGES)
    for line, r in zip(table, result["rows"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == r["stage"]
        assert int(cells[1].split()[0].replace(",", "")) == r["items"]
        assert float(cells[2]) == round(r["seconds"], 2)
        assert re.sub(r"[^0-9]", "", cells[3].split()[0]) == f"{r['per_s']:.0f}"

    # SRC unchanged, nothing written beside it
    assert _tree_state(root) == before
    assert sorted(os.listdir(root.parent)) == parent_before


def test_bench_bad_source_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", str(tmp_path), "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
