"""The review page (`gpupipe review --serve`) in a real headless Chromium,
driven with the keyboard by Playwright: decisions persist across a reload,
land in the ledger exactly as the same decisions through the CSV do, group
corrections hold over a new dedup, and the server refuses requests without
its token and non-local addresses."""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from gpupipe import schema
from gpupipe.loop import DECISIONS, RankOptions, run_rank, run_review
from gpupipe.models.train import TrainConfig
from gpupipe.serve import ReviewServer, ReviewSession, check_host

QUICK = TrainConfig(max_epochs=6, epoch_samples=1024, patience=3)
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
#: Where the test saves its screenshots for the README (`make screenshots`); else the test's tmp dir.
SHOTS = os.environ.get("GPUPIPE_SCREENSHOTS")


@pytest.fixture(scope="module")
def queued(digits_noisy, tmp_path_factory):
    """A run directory whose round-1 queue (12 worst, 20 best) awaits a person,
    and an untouched copy of it for the CSV route."""
    run = tmp_path_factory.mktemp("page") / "run"
    shutil.copytree(digits_noisy["run"], run)
    res = run_rank(run, RankOptions(device="cpu", train=QUICK, trust_seed=True, worst=12, best=20))
    assert res.stopped == "awaiting review"
    twin = run.parent / "twin"
    shutil.copytree(run, twin)
    return run, twin


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "Chromium is needed (Debian package 'chromium'; `make install` installs it)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


class Serving:
    def __init__(self, run_dir: Path):
        self.server = ReviewServer(ReviewSession(run_dir))
        self.images = 0
        real = self.server.session.image

        def counted(*a, **kw):
            self.images += 1
            return real(*a, **kw)

        self.server.session.image = counted
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _page(browser, url: str, **kw):
    page = browser.new_page(viewport={"width": 1280, "height": 900}, **kw)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    return page, errors


def _decided(page, n: int) -> None:
    page.wait_for_function(f"document.body.dataset.decided === '{n}'")


def _shot(page, tmp_path, name: str) -> Path:
    path = Path(SHOTS) / name if SHOTS else tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    return path


def test_keyboard_review_persists_and_equals_the_csv_route(queued, browser, tmp_path):
    run, twin = queued
    q = pd.read_csv(run / "review" / "round-001.csv", dtype=str, keep_default_na=False)
    worst = q[q["queue"] == "worst"].reset_index(drop=True)
    classes = json.loads((run / "rank.json").read_text())["classes"]
    expect: dict[str, tuple[str, str]] = {}          # sample_id -> (decision, new_label)
    serving = Serving(run)
    try:
        page, errors = _page(browser, serving.url)
        assert page.evaluate("document.body.dataset.current") == worst["sample_id"][0]
        page.keyboard.press("c")                                         # confirm the first
        expect[worst["sample_id"][0]] = ("confirm", "")
        _decided(page, 1)
        other = next(c for c in classes if c != worst["label"][1] and c != worst["suggested_label"][1])
        page.keyboard.press("r")                                         # relabel the second, typed
        page.keyboard.type(other)
        page.keyboard.press("Enter")
        expect[worst["sample_id"][1]] = ("relabel", other)
        _decided(page, 2)
        page.keyboard.press("x")                                         # remove the third
        expect[worst["sample_id"][2]] = ("remove", "")
        _decided(page, 3)
        page.keyboard.press("c")                                         # confirm the fourth ...
        _decided(page, 4)
        page.keyboard.press("u")                                         # ... and undo it
        _decided(page, 3)
        assert page.evaluate("document.body.dataset.current") == worst["sample_id"][3]
        digit = next(i for i, c in enumerate(classes[:10]) if c != worst["label"][3])
        page.keyboard.press(str(digit))                                  # relabel the fourth by its digit
        expect[worst["sample_id"][3]] = ("relabel", classes[digit])
        _decided(page, 4)
        shot = _shot(page, tmp_path, "review-page.png")

        page.reload()                                                    # saved as made
        page.wait_for_selector("body[data-ready='1']")
        assert page.evaluate("document.body.dataset.decided") == "4"
        serving.stop()                                                   # and a new server has them
        serving = Serving(run)
        page.goto(serving.url)
        page.wait_for_selector("body[data-ready='1']")
        assert page.evaluate("document.body.dataset.decided") == "4"
        for sid, (decision, new) in expect.items():
            assert page.get_attribute(f"#s-{sid}", "data-decision") == decision
        assert page.evaluate("document.body.dataset.current") == worst["sample_id"][4]   # first undecided

        for _ in range(len(worst) - 4):                                  # take the suggestion for the rest
            sid = page.evaluate("document.body.dataset.current")
            row = worst[worst["sample_id"] == sid].iloc[0]
            n = int(page.evaluate("document.body.dataset.decided"))
            page.keyboard.press("Enter")
            _decided(page, n + 1)
            action = row["suggested_action"]
            expect[sid] = (action, row["suggested_label"] if action == "relabel" else "")
        page.keyboard.press("Shift+C")                                   # confirm all shown of the best
        _decided(page, len(q))
        expect.update({sid: ("confirm", "") for sid in q.loc[q["queue"] == "best", "sample_id"]})
        assert page.evaluate("document.body.dataset.pending") == "0"
        page.keyboard.press("Shift+A")                                   # apply
        page.wait_for_selector("body[data-applied='1']")
        assert not errors, errors
    finally:
        serving.stop()

    # The same decisions through the CSV route, on the untouched twin.
    filled = q.copy()
    filled["decision"] = [expect[s][0] for s in q["sample_id"]]
    filled["new_label"] = [expect[s][1] for s in q["sample_id"]]
    filled.to_csv(tmp_path / "by-hand.csv", index=False)
    run_review(twin, tmp_path / "by-hand.csv", device="cpu")
    pd.testing.assert_frame_equal(pq.read_table(run / "ledger.parquet").to_pandas(),
                                  pq.read_table(twin / "ledger.parquet").to_pandas())
    a = pq.read_table(run / DECISIONS).to_pandas().drop(columns="unix_time")
    b = pq.read_table(twin / DECISIONS).to_pandas().drop(columns="unix_time")
    pd.testing.assert_frame_equal(a, b)
    mine = a[a["round"] == 1]
    assert (mine["source"] == "person").all() and len(mine) == len(q)
    tally = pd.Series([d for d, _ in expect.values()]).value_counts().to_dict()
    assert mine["action"].value_counts().to_dict() == tally
    assert json.loads((run / "rank.json").read_text()) == json.loads((twin / "rank.json").read_text())
    assert shot.stat().st_size > 20_000


def test_requests_without_the_token_are_refused(noisy_run):
    run = noisy_run                # deduplicated, no queue: the groups can be reviewed, labels cannot
    serving = Serving(run)
    base = serving.url.split("/?")[0]
    token = serving.server.token
    try:
        def status(path, *, data=None, headers=None):
            req = urllib.request.Request(base + path, data=data, headers=headers or {})
            try:
                with urllib.request.urlopen(req) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        body = json.dumps({"sample_id": 1, "decision": "confirm"}).encode()
        assert status("/") == 403 and status("/api/state") == 403 and status("/api/state?token=wrong") == 403
        assert status("/api/decide", data=body) == 403
        # A cookie alone cannot change anything (another site's form would send it): the header is needed.
        assert status("/api/decide", data=body, headers={"Cookie": f"gpupipe_token={token}"}) == 403
        assert status("/api/undo", data=b"{}", headers={"X-Gpupipe-Token": "x" * len(token)}) == 403
        assert status(f"/api/state?token={token}") == 200
        assert status("/api/state", headers={"Cookie": f"gpupipe_token={token}"}) == 200
        # With the token, a decision without a queue or a bad group action is refused, and nothing is saved.
        assert status("/api/decide", data=body, headers={"X-Gpupipe-Token": token}) == 409
        bad = json.dumps({"sample_id": 1, "action": "merge"}).encode()
        assert status("/api/group", data=bad, headers={"X-Gpupipe-Token": token}) == 400
        assert not (run / "review" / "draft.jsonl").exists()
    finally:
        serving.stop()
    check_host("127.0.0.1", False)
    check_host("localhost", False)
    with pytest.raises(ValueError, match="not a loopback address"):
        check_host("0.0.0.0", False)
    with pytest.raises(ValueError, match="--allow-remote"):
        ReviewServer(ReviewSession(run), "0.0.0.0", 0)
    from gpupipe.cli import main

    assert main(["review", str(run), "--serve", "--host", "0.0.0.0"]) == 2


def _dedup_ledger(run: Path) -> pd.DataFrame:
    """The ledger by sample_id, its id columns as nullable integers (not floats)."""
    import pyarrow as pa

    return pq.read_table(run / "ledger.parquet").to_pandas(
        types_mapper={pa.int64(): pd.Int64Dtype()}.get).set_index(schema.SAMPLE_ID)


def test_group_corrections_apply_and_hold_over_a_new_dedup(digits_planted, digits_run, browser, tmp_path):
    from gpupipe.rundir import GROUP_DECISIONS
    from gpupipe.runner import DedupOptions, run_dedup

    root, _ = digits_planted
    run = tmp_path / "run"
    shutil.copytree(digits_run[1].run_dir, run)
    before = _dedup_ledger(run)
    multi = before[before[schema.DEDUP_GROUP_SIZE].fillna(1) > 1]
    sizes = multi.groupby(schema.DEDUP_GROUP).size().sort_values(ascending=False, kind="stable")
    g1, g2 = sizes.index[0], sizes.index[1]
    assert sizes[g1] >= 2 and sizes[g2] >= 2
    m1 = multi[(multi[schema.DEDUP_GROUP] == g1) & ~multi[schema.DEDUP_KEEP]].index[0]   # wrongly merged
    m2 = multi[(multi[schema.DEDUP_GROUP] == g2) & ~multi[schema.DEDUP_KEEP]].index[0]   # the better one to keep

    serving = Serving(run)
    try:
        groups = serving.server.session.payload()["groups"]
        order = [(not g["label_conflict"], -g["size"]) for g in groups]
        assert order == sorted(order) and len(groups) == multi[schema.DEDUP_GROUP].nunique()
        page, errors = _page(browser, f"{serving.url}#sample={m1}")
        assert page.evaluate("document.body.dataset.current") == str(m1)
        page.keyboard.press("s")
        page.wait_for_function("document.getElementById('n-groups').textContent === '1'")
        page.evaluate(f"location.hash = '#sample={m2}'")
        page.wait_for_function(f"document.body.dataset.current === '{m2}'")
        page.keyboard.press("p")
        page.wait_for_function("document.getElementById('n-groups').textContent === '2'")
        assert page.get_attribute(f"#m-{m1}", "data-state") == "split"
        assert page.get_attribute(f"#m-{m2}", "data-state") == "keep"
        _shot(page, tmp_path, "review-groups.png")
        # The run's report, served at /report, links each image to the page at that sample.
        from gpupipe import report

        report.write(before.reset_index(), run / "report.html", title="t", stages={})
        page.goto(serving.url.replace("/?", "/report?"))
        link = page.locator("a[href^='/#sample=']").first
        target = link.get_attribute("href").split("=", 1)[1]
        link.click()
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_function(f"document.body.dataset.current === '{target}'")
        assert page.evaluate("S.view") == "groups" and page.inner_text("#n-groups") == "2"   # the draft is kept
        page.keyboard.press("Shift+A")
        page.wait_for_selector("body[data-applied='1']")
        assert not errors, errors
    finally:
        serving.stop()

    after = _dedup_ledger(run)
    r1 = after.loc[m1]
    assert (r1[schema.DEDUP_KIND], r1[schema.DEDUP_GROUP_SIZE], r1[schema.DEDUP_GROUP]) == (schema.KIND_UNIQUE, 1, m1)
    assert r1[schema.DEDUP_KEEP] and pd.isna(r1[schema.DEDUP_DUPLICATE_OF])
    rest1 = after[after[schema.DEDUP_GROUP] == g1]
    assert len(rest1) == sizes[g1] - 1 and (rest1[schema.DEDUP_GROUP_SIZE] == sizes[g1] - 1).all()
    assert rest1[schema.DEDUP_KEEP].sum() == 1 and rest1.loc[g1, schema.DEDUP_KEEP]
    if sizes[g1] == 2:
        assert rest1.loc[g1, schema.DEDUP_KIND] == schema.KIND_UNIQUE
    group2 = after[after[schema.DEDUP_GROUP] == m2]
    assert len(group2) == sizes[g2] and group2[schema.DEDUP_KEEP].sum() == 1 and group2.loc[m2, schema.DEDUP_KEEP]
    assert (group2.drop(index=m2)[schema.DEDUP_DUPLICATE_OF] == m2).all()
    assert after.loc[m2, schema.DEDUP_KIND] == schema.KIND_REPRESENTATIVE
    assert not after.loc[g2, schema.DEDUP_KEEP]
    untouched = ~after[schema.DEDUP_GROUP].isin([g1, m1, m2]) & after[schema.DEDUP_GROUP].notna()
    dedup_cols = schema.names("dedup")
    pd.testing.assert_frame_equal(after.loc[untouched, dedup_cols], before.loc[untouched, dedup_cols])
    log = pq.read_table(run / GROUP_DECISIONS).to_pandas()
    assert log[["sample_id", "action", "group_before"]].values.tolist() == [[m1, "split", g1], [m2, "keep", g2]]

    # A new dedup of the same source holds the corrections.
    run_dedup(root, run, DedupOptions(device="cpu"))
    again = _dedup_ledger(run)
    pd.testing.assert_frame_equal(again[dedup_cols], after[dedup_cols])


def test_a_5000_item_queue_stays_responsive_and_loads_thumbnails_lazily(tmp_path, capsys):
    """The timings are printed, not asserted (benchmarks/bench_review_page.py records them)."""
    from review_load import build_queue, measure

    assert CHROMIUM, "Chromium is needed (Debian package 'chromium'; `make install` installs it)"
    m = measure(build_queue(tmp_path), CHROMIUM)
    with capsys.disabled():
        print(f"\nreview page, 5,000 queued items: {m}")
    assert m["items"] == 5000 and m["last_is_current"]
    assert m["thumbnails_sent_after_load"] < 300          # about a screenful, not 5,000
    assert m["thumbnails_sent"] < 600                     # End jumps: the middle is never fetched
