"""One self-contained HTML report of a curation run (images inlined as data: URIs).

Sections: counts per stage, duplicate groups as thumbnail rows, the most
suspicious samples with given and suggested labels, the loss distribution,
class balance before and after, split and fold sizes.  A small script sets
``data-images-loaded`` / ``data-images-total`` on ``<body>`` once the page
has loaded, so a headless browser can check that every image decoded.
Served by ``gpupipe review --serve`` (at ``/report``), every image links to
the review page at that sample (`gpupipe.serve`).
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from gpupipe import schema
from gpupipe.table import write_text_atomic

THUMB = 64
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}.row{display:flex;gap:6px;align-items:flex-end;margin:6px 0}
figure{margin:0;text-align:center;font-size:11px}figure img{display:block;border:1px solid #ccc;image-rendering:pixelated}
.bar{display:inline-block;height:10px;background:#4a7}.bar.b{background:#c84}.muted{color:#777}
.grid{display:flex;flex-wrap:wrap;gap:8px}
"""
SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', String(ok));
  document.body.setAttribute('data-images-total', String(imgs.length));
  // Served by `gpupipe review --serve` (at /report): each image opens the review page at that item.
  if (location.protocol.indexOf('http') === 0 && location.pathname === '/report') {
    document.querySelectorAll('figure[data-review]').forEach(function (f) {
      if (!f.dataset.review) return;
      var a = document.createElement('a');
      a.href = '/#' + f.dataset.review;
      a.title = 'open in the review page';
      f.parentNode.insertBefore(a, f);
      a.appendChild(f);
    });
  }
});
"""


def _img(path: str, caption: str, locator: str | None = None, link: str = "") -> str:
    from gpupipe.sheets import scaled_image

    try:
        im = scaled_image(path, locator, THUMB)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    except Exception:
        return (f'<figure data-review="{html.escape(link)}"><div class="muted">unreadable</div>'
                f'{html.escape(caption)}</figure>')
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<figure data-review="{html.escape(link)}"><img src="data:image/png;base64,{data}" width="{im.width}" '
            f'height="{im.height}" alt="{html.escape(caption)}"><figcaption>{caption}</figcaption></figure>')


def _table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                   for r in df.itertuples(index=False))
    return f"<table><tr>{head}</tr>{body}</table>"


def _histogram(values: np.ndarray, flagged: np.ndarray, bins: int = 40) -> str:
    """An inline SVG histogram: all scored rows, flagged ones stacked in orange."""
    if len(values) == 0:
        return '<p class="muted">no scored rows</p>'
    edges = np.linspace(0, max(float(values.max()), 1e-6), bins + 1)
    a, _ = np.histogram(values[~flagged], edges)
    b, _ = np.histogram(values[flagged], edges)
    top = np.log1p(max(int((a + b).max()), 1))
    w, h = 720, 180
    bw = w / bins
    rects = []
    for i in range(bins):                 # log scale: the clean mass would flatten the tail
        both = h * np.log1p(a[i] + b[i]) / top
        ha = both * a[i] / max(a[i] + b[i], 1)
        hb = both - ha
        rects.append(f'<rect x="{i * bw:.1f}" y="{h - ha:.1f}" width="{bw - 1:.1f}" height="{ha:.1f}" fill="#4a7"/>')
        rects.append(f'<rect x="{i * bw:.1f}" y="{h - ha - hb:.1f}" width="{bw - 1:.1f}" height="{hb:.1f}" fill="#c84"/>')
    return (f'<svg width="{w}" height="{h + 20}" role="img" aria-label="loss histogram">{"".join(rects)}'
            f'<text x="0" y="{h + 15}" font-size="11">0</text><text x="{w - 60}" y="{h + 15}" font-size="11">'
            f'{edges[-1]:.2f} nats</text></svg><p class="muted">green: scored rows; orange: flagged '
            f'<code>is_mislabeled_issue</code>; bar height: log(1 + rows); fullest bin {int((a + b).max())} rows</p>')


def _similarity(row) -> str:
    """' 0.993' for a near duplicate (its same-picture similarity to the kept row), else ''."""
    v = row.get(schema.DEDUP_SIMILARITY)
    if row.get(schema.DEDUP_KIND) != schema.KIND_NEAR or v is None or pd.isna(v):
        return ""
    return f" {float(v):.3f}"


def _locator(r) -> str | None:
    v = r.get(schema.LOCATOR)
    return v if isinstance(v, str) else None


def build(ledger: pd.DataFrame, *, title: str, stages: dict[str, dict], groups: int = 12,
          suspicious: int = 40) -> str:
    """The report's HTML from a pandas ledger and per-stage summaries."""
    d = ledger
    parts = [f"<h1>{html.escape(title)}</h1>"]

    parts.append("<h2>Counts per stage</h2>")
    rows = [(stage, k, v) for stage, kv in stages.items() for k, v in kv.items()]
    parts.append(_table(pd.DataFrame(rows, columns=["stage", "count", "value"])))

    parts.append("<h2>Duplicate groups</h2>")
    multi = d[d[schema.DEDUP_GROUP_SIZE].fillna(1) > 1]
    order = multi.groupby(schema.DEDUP_GROUP)[schema.DEDUP_GROUP_SIZE].first().sort_values(ascending=False, kind="stable")
    if order.empty:
        parts.append('<p class="muted">no duplicate groups</p>')
    for g in order.index[:groups]:
        members = multi[multi[schema.DEDUP_GROUP] == g].sort_values(schema.DEDUP_KEEP, ascending=False, kind="stable")
        cells = [_img(r[schema.PATH], f"{html.escape(str(r[schema.LABEL]))} · {r[schema.DEDUP_KIND]}{_similarity(r)}",
                      _locator(r), f"sample={r[schema.SAMPLE_ID]}")
                 for _, r in members.head(8).iterrows()]
        parts.append(f'<div class="row">{"".join(cells)}<span class="muted">{len(members)} images</span></div>')

    parts.append("<h2>Most suspicious samples</h2>")
    if schema.RANK_LOSS in d.columns and d[schema.RANK_LOSS].notna().any():
        from gpupipe.stages.review import FAR, label_suspicion, suspicion

        scored = d[d[schema.RANK_LOSS].notna()]
        outlier = (scored[schema.RANK_OUTLIER].to_numpy(float) if schema.RANK_OUTLIER in scored.columns
                   else np.full(len(scored), np.nan))
        key = label_suspicion(scored[schema.RANK_LOSS].to_numpy(float), scored[schema.RANK_PROB_GIVEN].to_numpy(float),
                              scored[schema.RANK_VOTE_GIVEN].to_numpy(float)
                              if schema.RANK_VOTE_GIVEN in scored.columns else None,
                              scored[schema.RANK_TRAIN_MARGIN].to_numpy(float)
                              if schema.RANK_TRAIN_MARGIN in scored.columns else None)
        order = np.argsort(-suspicion(key, outlier), kind="stable")
        s = scored.iloc[order[:suspicious]]
        cells = []
        for _, r in s.iterrows():
            status = r.get(schema.REVIEW_STATUS)
            final = r.get(schema.REVIEW_LABEL)
            cap = (f"{html.escape(str(r[schema.LABEL]))} → {html.escape(str(r[schema.RANK_PRED]))}<br>"
                   f"loss {r[schema.RANK_LOSS]:.2f}"
                   + (f", outlier {r[schema.RANK_OUTLIER]:.1f}" if pd.notna(r.get(schema.RANK_OUTLIER)) else "")
                   + (f"<br>{status}" + (f": {html.escape(str(final))}" if status == schema.STATUS_RELABELED else "")
                      if isinstance(status, str) else ""))
            cells.append(_img(r[schema.PATH], cap, _locator(r), f"sample={r[schema.SAMPLE_ID]}"))
        parts.append(f'<div class="grid">{"".join(cells)}</div><p class="muted">given → suggested label, '
                     f'in the review order (loss, or outlier score where that is {FAR:g} or more); then the '
                     f'review decision</p>')
        parts.append("<h2>Loss distribution</h2>")
        scored = d[d[schema.RANK_LOSS].notna()]
        parts.append(_histogram(scored[schema.RANK_LOSS].to_numpy(float),
                                scored[schema.RANK_FLAG].fillna(False).to_numpy(bool)))
    else:
        parts.append('<p class="muted">not ranked</p>')

    if schema.BALANCE_STATUS in d.columns:
        parts.append("<h2>Class balance</h2>")
        before = d[~d[schema.IS_INVALID] & d[schema.DEDUP_KEEP]].groupby(schema.LABEL).size()
        after = d[d[schema.BALANCE_STATUS] == schema.BAL_KEPT].groupby(schema.BALANCE_LABEL).size()
        surplus = d[d[schema.BALANCE_STATUS] == schema.BAL_SURPLUS].groupby(schema.BALANCE_LABEL).size()
        classes = sorted(set(before.index) | set(after.index))
        top = max(int(before.max()) if len(before) else 1, 1)
        rows = []
        for c in classes:
            b, a, sp = int(before.get(c, 0)), int(after.get(c, 0)), int(surplus.get(c, 0))
            rows.append(f"<tr><td>{html.escape(str(c))}</td><td>{b}</td><td>{a}</td><td>{sp}</td><td style='text-align:left'>"
                        f"<span class='bar b' style='width:{200 * b / top:.0f}px'></span><br>"
                        f"<span class='bar' style='width:{200 * a / top:.0f}px'></span></td></tr>")
        parts.append("<table><tr><th>class</th><th>before (valid, unique, given label)</th><th>after (kept)</th>"
                     f"<th>surplus</th><th>before / after</th></tr>{''.join(rows)}</table>")
    if schema.SPLIT_SET in d.columns:
        parts.append("<h2>Split and fold sizes</h2>")
        k = d[d[schema.BALANCE_STATUS] == schema.BAL_KEPT]
        folds = sorted(int(f) for f in k[schema.SPLIT_FOLD].dropna().unique())
        table = pd.DataFrame({"class": sorted(k[schema.BALANCE_LABEL].unique())})
        table["test"] = [int(((k[schema.BALANCE_LABEL] == c) & (k[schema.SPLIT_SET] == schema.SET_TEST)).sum())
                         for c in table["class"]]
        for f in folds:
            table[f"fold {f} val"] = [int(((k[schema.BALANCE_LABEL] == c) & (k[schema.SPLIT_FOLD] == f)).sum())
                                      for c in table["class"]]
        total = {"class": "all", **{c: int(table[c].sum()) for c in table.columns[1:]}}
        parts.append(_table(pd.concat([table, pd.DataFrame([total])], ignore_index=True)))
        parts.append('<p class="muted">fold f trains on the train rows of every other fold</p>')

    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>{''.join(parts)}</body></html>")


def write(ledger: pd.DataFrame, path: str | os.PathLike, **kw) -> Path:
    return write_text_atomic(build(ledger, **kw), path)
