"""A sweep's results as one self-contained HTML page and a CSV (no network needed to view it).

    facegan sweep-report runs/sweeps/dcgan_lr_labels       # -> report.html, trials.csv in that folder
    write_report("runs/sweeps/dcgan_lr_labels")

The page holds a sortable table of trials (inline JS; `report.html#sort=COLUMN:asc|desc` picks the
initial order, else the objective), the best configuration, the objective against each
hyperparameter and the learning curves (inline SVG from matplotlib), and the best trials' latest
sample grids (inline PNG). It reads only the files `facegan.launch.tune` writes (sweep_spec.json,
sweep.json, trials/<id>/{trial.json,starts.jsonl,results.jsonl,done.json,samples/latest.png}),
so it also works on a sweep that is still running or was interrupted. Trials that report dlib's
face-identity scores (eval.face: true or eval.features: face) get a column for each of them, their
last reported value (facegan.metrics.face.FACE_SCORES).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPORT_HTML = "report.html"
# Sample-quality metrics (lower is better), most telling first: with one of them as the objective,
# the page ranks by the first that any trial reports: the face-identity FID where the trials
# measure it, else the attribute classifier's.
PREFERRED_FIDS = ("fid_face", "fid_attr")
TRIALS_CSV = "trials.csv"


@dataclass
class Trial:
    trial_id: str
    params: dict[str, Any]
    rows: list[dict[str, Any]]                # every report, in order
    starts: int
    done: bool
    error: str = ""
    samples: Path | None = None
    last: dict[str, Any] = field(default_factory=dict)

    def objective(self, metric: str) -> float | None:
        value = self.last.get(metric)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def best(self, metric: str, mode: str) -> float | None:
        values = [float(r[metric]) for r in self.rows if isinstance(r.get(metric), (int, float))
                  and math.isfinite(r[metric])]
        return (min if mode == "min" else max)(values) if values else None

    def status(self, total_kimg: float) -> str:
        if self.error:
            return "error"
        if self.done:
            return "finished"
        if not self.rows:
            return "not started"
        return "stopped" if self.last.get("kimg", 0) < total_kimg else "finished"


@dataclass
class SweepResults:
    folder: Path
    spec: dict[str, Any]
    summary: dict[str, Any]
    trials: list[Trial]

    @property
    def metric(self) -> str:
        return self.spec["spec"]["objective"]["metric"]

    @property
    def mode(self) -> str:
        return self.spec["spec"]["objective"]["mode"]

    @property
    def keys(self) -> list[str]:
        return list(self.spec["spec"]["space"])

    @property
    def total_kimg(self) -> float:
        return float(self.spec["base"].get("train", {}).get("total_kimg", math.inf))

    @property
    def rank_metric(self) -> str:
        """The metric trials are ranked by: the objective, or the preferred FID the trials report
        when the objective is one of PREFERRED_FIDS."""
        if self.metric in PREFERRED_FIDS:
            for name in PREFERRED_FIDS:
                if any(t.objective(name) is not None for t in self.trials):
                    return name
        return self.metric

    @property
    def rank_mode(self) -> str:
        return "min" if self.rank_metric != self.metric else self.mode

    def ranked(self) -> list[Trial]:
        """Trials with a value of rank_metric, best first."""
        metric = self.rank_metric
        scored = [t for t in self.trials if t.objective(metric) is not None]
        return sorted(scored, key=lambda t: t.objective(metric), reverse=self.rank_mode == "max")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written when the sweep was interrupted
    return rows


def load_results(folder: str | Path) -> SweepResults:
    folder = Path(folder)
    spec_path = folder / "sweep_spec.json"
    if not spec_path.is_file():
        from facegan.config import ConfigError

        raise ConfigError(f"{folder}: not a facegan sweep folder (no sweep_spec.json)")
    spec = json.loads(spec_path.read_text())
    summary = json.loads((folder / "sweep.json").read_text()) if (folder / "sweep.json").is_file() else {}
    errors = {t["trial_id"]: t.get("error", "") for t in summary.get("trials", [])}
    trials = []
    for trial_dir in sorted((folder / "trials").glob("*/")):
        info_path = trial_dir / "trial.json"
        if not info_path.is_file():
            continue
        info = json.loads(info_path.read_text())
        rows = _jsonl(trial_dir / "results.jsonl")
        samples = trial_dir / "samples" / "latest.png"
        trials.append(Trial(trial_id=info["trial_id"], params=info["params"], rows=rows,
                            starts=len(_jsonl(trial_dir / "starts.jsonl")), done=(trial_dir / "done.json").is_file(),
                            error=errors.get(info["trial_id"], ""), samples=samples if samples.is_file() else None,
                            last=rows[-1] if rows else {}))
    return SweepResults(folder=folder, spec=spec, summary=summary, trials=trials)


# ============================================================================ table and CSV

def _face_columns(res: SweepResults) -> list[str]:
    """The face-identity scores some trial reported (not the objective, which has its own column)."""
    from facegan.metrics.face import FACE_SCORES

    return [k for k in FACE_SCORES if k != res.metric and any(k in r for t in res.trials for r in t.rows)]


def _columns(res: SweepResults) -> list[tuple[str, str]]:
    """(name, kind) of the table's columns; kind num or str."""
    metric = res.metric
    return ([("trial", "str"), ("status", "str")] + [(k, "num") for k in res.keys]
            + [(metric, "num"), (f"best {metric}", "num")] + [(k, "num") for k in _face_columns(res)]
            + [("kimg", "num"), ("starts", "num"), ("img_per_sec", "num"), ("error", "str")])


def _row(res: SweepResults, t: Trial) -> dict[str, Any]:
    row: dict[str, Any] = {"trial": t.trial_id, "status": t.status(res.total_kimg)}
    for key in res.keys:
        row[key] = t.params.get(key)
    row[res.metric] = t.objective(res.metric)
    row[f"best {res.metric}"] = t.best(res.metric, res.mode)
    from facegan.metrics.face import FACE_SCORES

    for key in FACE_SCORES:   # the last value reported (periodic evaluations skip some ticks)
        if key != res.metric:
            row[key] = next((r[key] for r in reversed(t.rows) if isinstance(r.get(key), (int, float))), None)
    row["kimg"] = t.last.get("kimg")
    row["starts"] = t.starts
    row["img_per_sec"] = t.last.get("img_per_sec")
    row["error"] = t.error
    return row


def write_csv(res: SweepResults, path: Path) -> Path:
    cols = [name for name, _ in _columns(res)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        for t in res.trials:
            row = _row(res, t)
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in cols})
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table_html(res: SweepResults, best_id: str | None) -> str:
    cols = _columns(res)
    head = "".join(f'<th data-col="{i}" data-type="{kind}" data-key="{html.escape(name)}" title="sort">'
                   f"{html.escape(name)}</th>" for i, (name, kind) in enumerate(cols))
    body = []
    for t in res.trials:  # in trial order; the script sorts on load
        row = _row(res, t)
        cells = []
        for name, kind in cols:
            value = row[name]
            sort_value = "" if value is None else (value if kind == "num" else str(value))
            cells.append(f'<td data-value="{html.escape(str(sort_value))}">{html.escape(_fmt(value))}</td>')
        cls = ' class="best"' if t.trial_id == best_id else ""
        body.append(f'<tr data-trial="{html.escape(t.trial_id)}"{cls}>{"".join(cells)}</tr>')
    return (f'<table id="trials" data-default-sort="{html.escape(res.metric)}:{"asc" if res.mode == "min" else "desc"}">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


# ============================================================================ plots

def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    # No metadata block: it only carries a date and RDF namespace URLs.
    fig.savefig(buf, format="svg", bbox_inches="tight",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _objective_plots(res: SweepResults, best_id: str | None) -> str:
    import matplotlib.pyplot as plt

    trials = [t for t in res.trials if t.objective(res.metric) is not None]
    if not trials or not res.keys:
        return "<p>No trial has reported the objective yet.</p>"
    # Keys every trial shares say nothing about the objective: no panel for them.
    keys = [k for k in res.keys if len({str(t.params.get(k)) for t in trials}) > 1] or res.keys[:1]
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    space = res.spec["spec"]["space"]
    for ax, key in zip(axes.flat, keys):
        xs = [t.params.get(key) for t in trials]
        ys = [t.objective(res.metric) for t in trials]
        categorical = not _numeric(xs)   # e.g. augment.kind: one tick per value, labelled
        if categorical:
            labels = sorted({str(x) for x in xs})
            xs = [labels.index(str(x)) for x in xs]
            ax.set_xticks(range(len(labels)), labels)
        elif space[key].get("loguniform") or (min(xs) > 0 and max(xs) / min(xs) >= 10):
            ax.set_xscale("log")
        colors = ["tab:red" if t.trial_id == best_id else
                  ("tab:blue" if t.status(res.total_kimg) == "finished" else "tab:gray") for t in trials]
        ax.scatter(xs, ys, c=colors, s=28)
        ax.tick_params(axis="x", labelrotation=30)
        if ax.get_xscale() == "linear" and not categorical:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        ax.set_xlabel(key)
        ax.set_ylabel(res.metric)
    fig.suptitle(f"{res.metric} (last report) against each hyperparameter; red: best, gray: stopped early")
    fig.tight_layout()
    return _svg(fig)


def _curve_plots(res: SweepResults, best_id: str | None) -> str:
    import matplotlib.pyplot as plt

    curves = [(t, [(r["kimg"], r[res.metric]) for r in t.rows
                   if isinstance(r.get(res.metric), (int, float)) and isinstance(r.get("kimg"), (int, float))])
              for t in res.trials]
    curves = [(t, pts) for t, pts in curves if pts]
    if not curves:
        return "<p>No learning curves yet.</p>"
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for t, pts in curves:
        best = t.trial_id == best_id
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=2.2 if best else 0.9,
                color="tab:red" if best else None, alpha=1.0 if best else 0.7,
                label=t.trial_id + (" (best)" if best else ""), zorder=3 if best else 2)
    ax.set_xlabel("kimg")
    ax.set_ylabel(res.metric)
    if len(curves) <= 12:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _svg(fig)


def _samples_html(res: SweepResults, top: int) -> str:
    shown = [t for t in res.ranked() if t.samples is not None][:top]
    if not shown:
        return "<p>No sample grids found (trials/&lt;id&gt;/samples/latest.png).</p>"
    parts = []
    for rank, t in enumerate(shown, 1):
        data = base64.b64encode(t.samples.read_bytes()).decode()
        params = ", ".join(f"{k}={_fmt(t.params.get(k))}" for k in res.keys)
        parts.append(f'<figure><img class="samples" alt="samples of {html.escape(t.trial_id)}" '
                     f'src="data:image/png;base64,{data}"><figcaption>#{rank} {html.escape(t.trial_id)}: '
                     f"{html.escape(res.rank_metric)}={_fmt(t.objective(res.rank_metric))}<br>{html.escape(params)}"
                     "</figcaption></figure>")
    return "".join(parts)


_SCRIPT = """
(function () {
  var table = document.getElementById('trials');
  var heads = table.tHead.rows[0].cells;
  function sortBy(key, dir) {
    var col = -1, type = 'str';
    for (var i = 0; i < heads.length; i++) {
      if (heads[i].dataset.key === key) { col = i; type = heads[i].dataset.type; }
    }
    if (col < 0) { return false; }
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
      if (x === '' && y === '') { return 0; }
      if (x === '') { return 1; }          /* empty cells last, whatever the direction */
      if (y === '') { return -1; }
      var c = type === 'num' ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return dir === 'desc' ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var j = 0; j < heads.length; j++) { heads[j].removeAttribute('aria-sort'); }
    heads[col].setAttribute('aria-sort', dir === 'desc' ? 'descending' : 'ascending');
    table.dataset.sortedBy = key + ':' + dir;
    return true;
  }
  for (var i = 0; i < heads.length; i++) {
    heads[i].addEventListener('click', function (ev) {
      var key = ev.currentTarget.dataset.key;
      var now = table.dataset.sortedBy || '';
      sortBy(key, now === key + ':asc' ? 'desc' : 'asc');
    });
  }
  var m = /sort=([^&]+)/.exec(decodeURIComponent(location.hash));
  var want = m ? m[1] : table.dataset.defaultSort;
  var k = want.lastIndexOf(':');
  if (!sortBy(want.slice(0, k), want.slice(k + 1))) {
    var d = table.dataset.defaultSort, dk = d.lastIndexOf(':');
    sortBy(d.slice(0, dk), d.slice(dk + 1));
  }
})();
"""

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #eee; cursor: pointer; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
tr.best { background: #fde8e8; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
img.samples { width: 256px; image-rendering: pixelated; }
.note { color: #666; font-size: 0.85em; }
"""


def render_html(res: SweepResults, *, top: int = 4) -> str:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"   # text stays text: smaller, searchable
    spec = res.spec["spec"]
    ranked = res.ranked()
    best = ranked[0] if ranked else None
    best_id = best.trial_id if best else None
    counts: dict[str, int] = {}
    for t in res.trials:
        counts[t.status(res.total_kimg)] = counts.get(t.status(res.total_kimg), 0) + 1
    if best:
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(best.params.get(k)))}</td></tr>"
                       for k in res.keys)
        best_html = (f"<p>Trial <b>{html.escape(best.trial_id)}</b>: {html.escape(res.rank_metric)} = "
                     f"{_fmt(best.objective(res.rank_metric))} ({res.rank_mode}) at {_fmt(best.last.get('kimg'))} "
                     "kimg.</p>"
                     f'<table id="best">{rows}</table>'
                     f"<p class=note>Full run config: {html.escape(str(res.folder / 'trials' / best.trial_id / 'trial.json'))}</p>")
    else:
        best_html = "<p>No trial has reported the objective yet.</p>"
    seconds = res.summary.get("seconds")
    ranked_by = f", ranked by {res.rank_metric}" if res.rank_metric != res.metric else ""
    header = (f"{html.escape(spec['family'])} sweep, objective {html.escape(res.metric)} ({res.mode}){ranked_by}; "
              f"{spec['search']['algorithm']} search, {spec['scheduler']['kind']} scheduler; "
              f"{len(res.trials)} trials (" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")"
              + (f"; {seconds / 60:.1f} min" if isinstance(seconds, (int, float)) else ""))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sweep {html.escape(spec['name'])}</title>
<style>{_STYLE}</style></head>
<body>
<h1>Sweep {html.escape(spec['name'])}</h1>
<p>{html.escape(spec.get('description', ''))}</p>
<p>{header}</p>
<h2>Best configuration</h2>
{best_html}
<h2>Trials</h2>
<p class=note>Click a column to sort. Objective: the last reported value; "best": the best value over the run.</p>
{_table_html(res, best_id)}
<h2>Objective against each hyperparameter</h2>
<div id="objective-plots">{_objective_plots(res, best_id)}</div>
<h2>Learning curves</h2>
<div id="curves">{_curve_plots(res, best_id)}</div>
<h2>Samples of the best trials</h2>
<div id="samples">{_samples_html(res, top)}</div>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_report(folder: str | Path, *, out: str | Path | None = None, top: int = 4) -> Path:
    """Write report.html (or `out`) and trials.csv beside it; returns the HTML path."""
    res = load_results(folder)
    path = Path(out) if out else res.folder / REPORT_HTML
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(res, top=top))
    write_csv(res, path.with_name(TRIALS_CSV))
    return path


def text_table(folder: str | Path, *, limit: int = 20) -> str:
    """The trials table as plain text, best first (for the terminal)."""
    res = load_results(folder)
    cols = [name for name, _ in _columns(res) if name != "error"]
    ranked = res.ranked()
    rest = [t for t in res.trials if t not in ranked]
    rows = [[_fmt(_row(res, t)[c]) for c in cols] for t in (ranked + rest)[:limit]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)

