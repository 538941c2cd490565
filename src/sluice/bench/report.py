"""Reports: JSON (records + summaries), a Markdown table, and PNG plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sluice.bench.metrics import RequestRecord, Summary, throughput_series


@dataclass(slots=True)
class RunReport:
    """One labelled run: its summary, its records, and per-endpoint load over time."""

    label: str
    summary: Summary
    records: list[RequestRecord]
    load_series: list[tuple[float, list[float]]] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)
    meta: dict[str, object] = field(default_factory=dict)


def _num(x: float | None, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, fmt)


COLUMNS = (
    "run",
    "ok/total",
    "TTFT p50 (s)",
    "TTFT p99 (s)",
    "ITL p50 (ms)",
    "TPOT p50 (ms)",
    "out tok/s",
    "goodput (req/s)",
    "SLO met",
    "prefix hit",
    "KV usage",
    "late steps",
)


def summary_row(label: str, s: Summary) -> list[str]:
    return [
        label,
        f"{s.ok}/{s.requests}",
        _num(s.ttft_p50, ".3f"),
        _num(s.ttft_p99, ".3f"),
        _num(s.itl_p50 * 1000 if s.itl_p50 == s.itl_p50 else None, ".1f"),
        _num(s.tpot_p50 * 1000 if s.tpot_p50 == s.tpot_p50 else None, ".1f"),
        _num(s.output_throughput, ".0f"),
        _num(s.goodput, ".2f"),
        _num(s.slo_attainment * 100 if s.slo_attainment == s.slo_attainment else None, ".0f") + "%",
        _percent(s.prefix_hit_rate),
        _num(s.extra.get("kv_usage_mean"), ".2f"),
        _percent(s.extra.get("late_step_share")),
    ]


def _percent(share: float | None) -> str:
    return _num(None, "") if share is None else f"{share * 100:.1f}%"


def markdown_table(rows: Sequence[tuple[str, Summary]]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    lines += ["| " + " | ".join(summary_row(label, s)) + " |" for label, s in rows]
    return "\n".join(lines) + "\n"


def write_json(path: str | Path, runs: Sequence[RunReport], include_records: bool = True) -> None:
    out = []
    for run in runs:
        item: dict[str, object] = {
            "label": run.label,
            "summary": run.summary.to_dict(),
            "meta": run.meta,
            "endpoints": run.endpoints,
        }
        if include_records:
            item["records"] = [
                {k: v for k, v in asdict(r).items() if k != "itls"} for r in run.records
            ]
        out.append(item)
    Path(path).write_text(json.dumps(out, indent=1, default=str))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ttft_cdf(runs: Sequence[RunReport], path: str | Path, title: str = "") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    for run in runs:
        ttfts = sorted(t for r in run.records if r.ok and (t := r.ttft) is not None)
        if ttfts:
            ys = [(i + 1) / len(ttfts) for i in range(len(ttfts))]
            ax.plot([max(t, 1e-3) for t in ttfts], ys, label=run.label, lw=1.3)
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (simulated s, log)")
    ax.set_ylabel("fraction of requests")
    ax.axvline(2.0, color="grey", ls=":", lw=1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "TTFT distribution", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_throughput(
    runs: Sequence[RunReport], path: str | Path, bucket: float = 10.0, title: str = ""
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    for run in runs:
        xs, ys = throughput_series(run.records, bucket)
        ax.plot(xs, ys, label=run.label, lw=1.1)
    ax.set_xlabel("time (simulated s)")
    ax.set_ylabel("output tokens/s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or f"throughput over time ({bucket:g} s buckets)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_load(run: RunReport, path: str | Path, title: str = "") -> None:
    """Per-endpoint outstanding requests over time (at most 16 endpoints drawn)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    if run.load_series:
        xs = [t for t, _ in run.load_series]
        width = len(run.load_series[0][1])
        for j in range(min(width, 16)):
            name = run.endpoints[j] if j < len(run.endpoints) else f"endpoint-{j}"
            ax.plot(xs, [v[j] for _, v in run.load_series], lw=0.9, label=name)
        ax.legend(fontsize=6, ncol=2)
    ax.set_xlabel("time (simulated s)")
    ax.set_ylabel("requests on the endpoint")
    ax.grid(alpha=0.3)
    ax.set_title(title or f"per-endpoint load: {run.label}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_all(
    out_dir: str | Path, runs: Sequence[RunReport], name: str = "run", records: bool = True
) -> Path:
    """JSON, Markdown and the plots into ``out_dir``; returns the Markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", runs, include_records=records)
    md = out / f"{name}.md"
    md.write_text(markdown_table([(r.label, r.summary) for r in runs]))
    plot_ttft_cdf(runs, out / f"{name}-ttft.png")
    plot_throughput(runs, out / f"{name}-throughput.png")
    for r in runs:
        if r.load_series:
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in r.label)
            plot_load(r, out / f"{name}-load-{safe}.png")
    return md
