"""The review loop: a person's decisions apply exactly, bad decision files
change nothing, a run resumes from its ledger, and the oracle loop reaches a
clean set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gpupipe import schema
from gpupipe.cli import main
from gpupipe.loop import DECISIONS, RANK_STATE, PendingReview, RankOptions, run_rank, run_review
from gpupipe.models.train import TrainConfig

QUICK = TrainConfig(max_epochs=6, epoch_samples=1024, patience=3)


def _ledger(run) -> pd.DataFrame:
    return pq.read_table(run / "ledger.parquet").to_pandas()


def test_a_persons_decisions_apply_exactly_and_the_next_round_resumes(noisy_run):
    res = run_rank(noisy_run, RankOptions(device="cpu", train=QUICK))
    assert res.stopped == "awaiting review" and res.queue.endswith("round-000.csv")
    q = pd.read_csv(res.queue, dtype=str, keep_default_na=False)
    assert len(q) == 200 and set(q["queue"]) == {"seed"}
    assert (noisy_run / "review" / "round-000.png").stat().st_size > 10_000
    with pytest.raises(PendingReview):
        run_rank(noisy_run, RankOptions(device="cpu", train=QUICK))

    q["decision"] = "confirm"
    q.loc[0, ["decision", "new_label"]] = ["relabel", "7" if q.loc[0, "label"] != "7" else "1"]
    q.loc[1, "decision"] = "remove"
    q.loc[2, "decision"] = ""                                       # not reviewed
    q.to_csv(noisy_run / "decisions.csv", index=False)
    out = run_review(noisy_run, noisy_run / "decisions.csv", device="cpu")
    assert out == {**out, "applied": 199, "confirm": 197, "relabel": 1, "remove": 1, "round": 0}

    d = _ledger(noisy_run).set_index(schema.SAMPLE_ID)
    ids = q[schema.SAMPLE_ID].astype(np.int64)
    r0, r1, r2 = d.loc[ids[0]], d.loc[ids[1]], d.loc[ids[2]]
    assert (r0[schema.REVIEW_STATUS], r0[schema.REVIEW_LABEL]) == (schema.STATUS_RELABELED, q.loc[0, "new_label"])
    assert r0[schema.LABEL] == q.loc[0, "label"]                    # the given label is kept
    assert r1[schema.REVIEW_STATUS] == schema.STATUS_REMOVED and pd.isna(r2[schema.REVIEW_STATUS])
    rest = d.loc[ids[3:]]
    assert (rest[schema.REVIEW_STATUS] == schema.STATUS_CERTIFIED).all()
    assert (rest[schema.REVIEW_LABEL] == rest[schema.LABEL]).all()
    assert (d.loc[ids[:3].tolist() + ids[3:].tolist()][schema.REVIEW_SOURCE].dropna() == "person").all()
    assert d[schema.REVIEW_STATUS].notna().sum() == 199
    # The seed set's stratified holdout survives the person's review (20 chosen, minus any removed).
    assert 18 <= d[schema.REVIEW_HOLDOUT].fillna(False).sum() <= 20
    log = pq.read_table(noisy_run / DECISIONS).to_pandas()
    assert len(log) == 199 and set(log["round"]) == {0} and set(log["source"]) == {"person"}
    assert log.loc[log["action"] == "relabel", "label_after"].tolist() == [q.loc[0, "new_label"]]

    # The next call resumes: trains on the 197 + 1 certified, scores the rest, queues them.
    res = run_rank(noisy_run, RankOptions(device="cpu", train=QUICK, worst=30, best=50))
    assert res.queue.endswith("round-001.csv")
    state = json.loads((noisy_run / RANK_STATE).read_text())
    assert state["rounds"][0]["trained_on"] + state["rounds"][0]["validated_on"] == 198
    q1 = pd.read_csv(res.queue, dtype=str, keep_default_na=False)
    assert list(q1["queue"]).count("worst") == 30 and list(q1["queue"]).count("best") == 50
    loss = q1["loss"].astype(float).to_numpy()
    assert (np.diff(loss[:30]) <= 0).all() and loss[:30].min() >= loss[30:].max()
    d = _ledger(noisy_run)
    open_ = d[d[schema.DEDUP_KEEP] & d[schema.REVIEW_STATUS].isna()]
    assert open_[schema.RANK_LOSS].notna().all() and (open_[schema.RANK_ROUND] == 1).all()


def test_bad_decision_files_change_nothing(noisy_run, capsys):
    run_rank(noisy_run, RankOptions(device="cpu", review="auto", max_rounds=0, train=QUICK))
    before = (noisy_run / "ledger.parquet").read_bytes()
    d = _ledger(noisy_run)
    some = d[d[schema.DEDUP_KEEP]].head(3)
    cases = {
        "unknown id": pd.DataFrame({"sample_id": [12345], "decision": ["confirm"]}),
        "bad action": pd.DataFrame({"sample_id": some[schema.SAMPLE_ID], "decision": ["confirm", "maybe", "remove"]}),
        "unknown class": pd.DataFrame({"rel_path": some[schema.REL_PATH], "decision": ["relabel"] * 3,
                                       "new_label": ["1", "cat", "2"]}),
        "no id column": pd.DataFrame({"decision": ["confirm"]}),
    }
    for name, df in cases.items():
        path = noisy_run / f"{name}.csv"
        df.to_csv(path, index=False)
        assert main(["review", str(noisy_run), str(path)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("gpupipe: error: ") and "Traceback" not in err
    assert (noisy_run / "ledger.parquet").read_bytes() == before
    assert not (noisy_run / DECISIONS).exists() or len(pq.read_table(noisy_run / DECISIONS)) == 200


def test_the_oracle_loop_reaches_a_clean_set(noisy_run, digits_noisy):
    truth = digits_noisy["truth"]
    res = run_rank(noisy_run, RankOptions(device="cpu", oracle=str(digits_noisy["oracle"]), review="oracle",
                                          worst=150, best=600, max_rounds=8, train=QUICK))
    assert res.stopped == "all eligible rows decided", res
    d = _ledger(noisy_run)
    kept = d[d[schema.DEDUP_KEEP]]
    assert kept[schema.REVIEW_STATUS].notna().all()
    final = kept[schema.REVIEW_LABEL]
    true = kept[schema.REL_PATH].map(truth)
    assert (final == true).all()                                      # every kept label is now right
    flipped = kept[schema.REL_PATH].isin(digits_noisy["flipped"])
    assert (kept.loc[flipped, schema.REVIEW_STATUS] == schema.STATUS_RELABELED).all()
    assert (kept.loc[~flipped, schema.REVIEW_STATUS] == schema.STATUS_CERTIFIED).all()
    # Each round's queue came from a retrained model; the rounds are in rank.json.
    assert len(res.rounds) >= 2 and all(r["source"] == "oracle" for r in res.rounds)


def test_rank_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["rank", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    assert "run `gpupipe dedup" in capsys.readouterr().err
    assert main(["rank", str(tmp_path), "--model", "vgg"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["rank", str(tmp_path), "--review", "oracle"]) == 2
    assert "--oracle" in capsys.readouterr().err


def test_augment_grid_cli(noisy_run, tmp_path):
    from PIL import Image

    out = tmp_path / "grid.png"
    assert main(["augment", str(noisy_run), "--out", str(out), "--samples", "4", "--variants", "5",
                 "--device", "cpu"]) == 0
    with Image.open(out) as im:
        assert im.size == (6 * (64 + 2), 4 * (64 + 2))


def test_a_directory_of_known_good_images_certifies_its_matches(noisy_run, digits_noisy, tmp_path):
    import shutil

    d = _ledger(noisy_run)
    kept = d[d[schema.DEDUP_KEEP]].head(40)
    good = tmp_path / "good"
    truth = digits_noisy["truth"]
    for r in kept.itertuples():
        true = truth[getattr(r, schema.REL_PATH)]
        (good / true).mkdir(parents=True, exist_ok=True)
        shutil.copy(getattr(r, schema.PATH), good / true / Path(getattr(r, schema.REL_PATH)).name)
    res = run_rank(noisy_run, RankOptions(device="cpu", seed_dir=str(good), review="auto", max_rounds=0))
    assert res.counts["certified"] + res.counts["relabeled"] == 40
    d = _ledger(noisy_run).set_index(schema.SAMPLE_ID).loc[kept[schema.SAMPLE_ID]]
    assert (d[schema.REVIEW_SOURCE] == schema.SOURCE_SEED_DIR).all()
    assert (d[schema.REVIEW_LABEL] == d[schema.REL_PATH].map(truth)).all()
    wrong = d[schema.LABEL] != d[schema.REL_PATH].map(truth)
    assert (d.loc[wrong, schema.REVIEW_STATUS] == schema.STATUS_RELABELED).all()
    with pytest.raises(ValueError, match="matches"):
        run_rank(_fresh_copy(digits_noisy, tmp_path),
                 RankOptions(device="cpu", seed_dir=str(tmp_path / "empty_good"), review="auto", max_rounds=0))


def _fresh_copy(digits_noisy, tmp_path):
    import shutil

    from PIL import Image

    (tmp_path / "empty_good" / "0").mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "empty_good" / "0" / "unknown.png")      # in no dataset
    dst = tmp_path / "run2"
    shutil.copytree(digits_noisy["run"], dst)
    return dst
