"""Merge runs from several ``run_peers.py`` invocations into one report (JSON, Markdown, plots).

    .venv/bin/python bench/peers/combine.py OUT_DIR NAME RUNS.json[:LABEL,...] [...]

Each input is a ``run_peers.py`` JSON file written with its records; ``:label,label`` keeps only
those runs. The summaries are taken as measured (they hold the engines' own hit rate and KV
usage, which records cannot give back); the records drive the TTFT and throughput plots and
are left out of the merged JSON, as committed results carry no per-request data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sluice.bench.metrics import RequestRecord, Summary
from sluice.bench.report import RunReport, write_all


def load_runs(spec: str) -> list[RunReport]:
    path, _, wanted = spec.partition(":")
    keep = set(wanted.split(",")) if wanted else None
    runs = []
    for item in json.loads(Path(path).read_text()):
        if keep is not None and item["label"] not in keep:
            continue
        if "records" not in item:
            raise SystemExit(f"{path}: run {item['label']!r} has no records to plot")
        runs.append(_report(item))
    return runs


def _report(item: dict[str, Any]) -> RunReport:
    records = [RequestRecord(**r) for r in item["records"]]
    return RunReport(
        item["label"], Summary(**item["summary"]), records, [], item["endpoints"], item["meta"]
    )


def main() -> None:
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    out, name, *specs = sys.argv[1:]
    runs = [run for spec in specs for run in load_runs(spec)]
    print(write_all(out, runs, name, records=False).read_text())


if __name__ == "__main__":
    main()
