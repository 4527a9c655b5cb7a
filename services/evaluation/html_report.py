"""The HTML page of an evaluation report: one self-contained file, plots inline as PNG.

Drawn with matplotlib's Agg canvas directly (no pyplot), so rendering needs no display and
changes no global backend of the process that calls it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from services.evaluation.metrics import METRICS

MODE_KEYS = (("models", "repeats allowed"), ("models_excluding_bought", "train purchases excluded"))
PLOTTED = ("ndcg", "recall", "precision", "hit_rate")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; }
td.best { font-weight: bold; }
pre { background: #f7f7f7; padding: 0.5em; font-size: 0.8em; overflow-x: auto; }
img { max-width: 100%; }
"""


def render(report: Mapping[str, Any]) -> str:
    """The whole page for a report dict made by `report.evaluate`."""
    parts = [
        _heading(report),
        _skipped(report),
        *(_metric_table(report, k) for k in report["ks"]),
        _timings(report),
        _section("Metrics by k", _image(_metrics_by_k(report))),
        _segments(report),
        _long_tail(report),
        _curves(report),
        _record(report),
    ]
    body = "\n".join(part for part in parts if part)
    title = html.escape(f"recofleet evaluation: {report['dataset'].get('name', '')}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _esc(value: object) -> str:
    return html.escape(str(value))


def _section(title: str, content: str) -> str:
    return f"<h2>{_esc(title)}</h2>\n{content}" if content else ""


def _heading(report: Mapping[str, Any]) -> str:
    data, split = report["dataset"], report["split"]
    return (
        f"<h1>Offline evaluation: {_esc(data.get('name'))}</h1>\n<p>{_esc(split['name'])} split "
        f"{_esc(json.dumps(split.get('params', {})))}: {split['train_interactions']:,} train and "
        f"{split['test_interactions']:,} test interactions, {split['test_members']:,} test "
        f"members. Created {_esc(report.get('created_at', ''))}.</p>"
    )


def _skipped(report: Mapping[str, Any]) -> str:
    skipped = report.get("skipped") or {}
    items = "".join(f"<li><b>{_esc(n)}</b>: {_esc(r)}</li>" for n, r in skipped.items())
    return _section("Skipped models", f"<ul>{items}</ul>") if items else ""


def _modes(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(key, label) for key, label in MODE_KEYS if key in report]


def _model_names(report: Mapping[str, Any]) -> list[str]:
    names: dict[str, None] = {}
    for key, _ in _modes(report):
        names.update(dict.fromkeys(report[key]))
    return list(names)


def _metric_table(report: Mapping[str, Any], k: int) -> str:
    modes = _modes(report)
    names = _model_names(report)
    if not names:
        return ""
    head = "".join(f'<th colspan="{len(modes)}">{_esc(m)}@{k}</th>' for m in METRICS)
    sub = "".join(f"<th>{_esc(label)}</th>" for _ in METRICS for _, label in modes)
    rows = []
    for name in names:
        cells = []
        for metric in METRICS:
            for key, _ in modes:
                values = [report[key].get(n, {}).get(f"{metric}@{k}") for n in names]
                cells.append(_cell(report[key].get(name, {}).get(f"{metric}@{k}"), values))
        rows.append(f"<tr><td>{_esc(name)}</td>{''.join(cells)}</tr>")
    table = (
        f'<table><thead><tr><th rowspan="2">model</th>{head}</tr><tr>{sub}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return _section(f"Metrics at k = {k}", table)


def _cell(value: float | None, column: Sequence[float | None]) -> str:
    if value is None:
        return "<td>-</td>"
    best = max(v for v in column if v is not None)
    mark = ' class="best"' if value == best else ""
    return f"<td{mark}>{value:.4f}</td>"


def _timings(report: Mapping[str, Any]) -> str:
    modes = _modes(report)
    head = "<th>fit s</th>" + "".join(
        f"<th>recommend s ({_esc(label)})</th><th>score s ({_esc(label)})</th>"
        for _, label in modes
    )
    rows = []
    for name in _model_names(report):
        first = next(report[key][name] for key, _ in modes if name in report[key])
        cells = [f"<td>{first.get('fit_seconds', 0.0):.2f}</td>"]
        for key, _ in modes:
            entry = report[key].get(name, {})
            for field in ("recommend_seconds", "score_seconds"):
                cells.append(f"<td>{entry.get(field, 0.0):.2f}</td>")
        rows.append(f"<tr><td>{_esc(name)}</td>{''.join(cells)}</tr>")
    if not rows:
        return ""
    table = f"<table><thead><tr><th>model</th>{head}</tr></thead><tbody>{''.join(rows)}"
    return _section("Timings", table + "</tbody></table>")


# --------------------------------------------------------------------------- plots


def _image(figure: Figure | None) -> str:
    if figure is None:
        return ""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{encoded}">'


def _metrics_by_k(report: Mapping[str, Any]) -> Figure | None:
    names, ks = _model_names(report), report["ks"]
    if not names:
        return None
    figure = Figure(figsize=(4 * len(PLOTTED) + 2, 3.4), layout="constrained")
    axes = figure.subplots(1, len(PLOTTED), squeeze=False)[0]
    for axis, metric in zip(axes, PLOTTED, strict=True):
        for (key, label), style in zip(_modes(report), ("-", "--"), strict=False):
            for index, name in enumerate(names):
                values = [report[key].get(name, {}).get(f"{metric}@{k}") for k in ks]
                if None not in values:
                    tag = f"{name} ({label})"
                    axis.plot(ks, values, style, marker="o", color=f"C{index}", label=tag)
        axis.set_title(metric)
        axis.set_xlabel("k")
        axis.set_xticks(ks)
    # One legend beside the panels: inside one it hid that panel's lines.
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    return figure


def _segments(report: Mapping[str, Any]) -> str:
    segments = report.get("segments") or {}
    labels = segments.get("labels") or []
    names = list((segments.get("models") or {}).keys())
    if not labels or not names:
        return ""
    metric = segments["metric"]
    head = "".join(f"<th>{_esc(lab)} ({segments['members'][lab]:,})</th>" for lab in labels)
    rows = []
    for key, label in _modes(report):
        for name in segments.get(key, {}):
            values = segments[key][name]
            cells = "".join(f"<td>{values.get(lab, 0.0):.4f}</td>" for lab in labels)
            rows.append(f"<tr><td>{_esc(name)} ({_esc(label)})</td>{cells}</tr>")
    table = (
        f"<p>{_esc(metric)} of test members by {_esc(segments['by'])} "
        f"(members per segment in brackets).</p><table><thead><tr><th>model</th>{head}</tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )
    return _section(f"{metric} by member history", table + _image(_segment_bars(segments)))


def _segment_bars(segments: Mapping[str, Any]) -> Figure:
    labels, values = segments["labels"], segments["models"]
    figure = Figure(figsize=(8, 3.4))
    axis = figure.subplots()
    axis.set_title("repeats allowed")
    width = 0.8 / max(len(values), 1)
    for index, (name, by_label) in enumerate(values.items()):
        xs = [i + index * width for i in range(len(labels))]
        axis.bar(xs, [by_label.get(lab, 0.0) for lab in labels], width, label=name)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels)
    axis.set_xlabel("train baskets")
    axis.set_ylabel(segments["metric"])
    axis.legend(fontsize="x-small")
    return figure


def _long_tail(report: Mapping[str, Any]) -> str:
    tail = report.get("long_tail") or {}
    if not tail.get("models"):
        return ""
    figure = Figure(figsize=(8, 3.4))
    axis = figure.subplots()
    ticks = [*tail["deciles"], "not in train"]
    axis.plot(ticks, tail["train_interactions"], "k:", marker=".", label="train interactions")
    for name, shares in tail["models"].items():
        axis.plot(ticks, shares, marker="o", label=name)
    axis.set_xlabel("item popularity decile (1 = most popular)")
    axis.set_ylabel(f"share of top-{tail['k']} slots")
    axis.legend(fontsize="x-small")
    text = (
        f"<p>Where recommendations fall in the train popularity distribution "
        f"({_esc(tail['mode'])} mode, top {tail['k']}); {_esc(tail['note'])}.</p>"
    )
    return _section("Coverage and long tail", text + _image(figure))


def _curves(report: Mapping[str, Any]) -> str:
    curves = report.get("curves") or {}
    images = []
    for name, series in curves.items():
        figure = Figure(figsize=(6, 3))
        axis = figure.subplots()
        for label, values in series.items():
            axis.plot(range(1, len(values) + 1), values, marker=".", label=label)
        axis.set_title(name)
        axis.set_xlabel("epoch / step")
        axis.legend(fontsize="x-small")
        images.append(_image(figure))
    return _section("Training curves", "".join(images))


# --------------------------------------------------------------------------- the record


def _record(report: Mapping[str, Any]) -> str:
    blocks = []
    for key in ("dataset", "split", "hyperparameters", "versions", "machine", "recommendations"):
        if report.get(key) is not None:
            blocks.append(f"<h3>{_esc(key)}</h3>{_key_values(report[key])}")
    blocks.append(f"<p>excluded mode: {_esc(report.get('excluded_items', ''))}</p>")
    return _section("Record", "\n".join(blocks))


def _key_values(values: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{_esc(k)}</td><td>{_esc(_text(v))}</td></tr>" for k, v in values.items()
    )
    return f"<table><tbody>{rows}</tbody></table>"


def _text(value: Any) -> str:
    if isinstance(value, Mapping | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)
