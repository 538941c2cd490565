"""``sluice bench``: cluster simulation and HTTP load runs, with JSON/Markdown/PNG reports."""

from __future__ import annotations

import asyncio
import datetime as dt
import platform
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help=__doc__.splitlines()[0])

WorkloadOpt = Annotated[
    str,
    typer.Option(
        "--workload", "-w", help="mooncake | multi_turn | shared_prefix | long_doc_qa | random"
    ),
]
OptsOpt = Annotated[list[str] | None, typer.Option("--opt", "-o", help="workload key=value")]
TraceOpt = Annotated[Path, typer.Option("--trace", help="Mooncake trace (JSONL)")]
OutOpt = Annotated[Path, typer.Option("--out", help="report directory")]
_DEFAULT_TRACE = Path("../shared/traces/mooncake_conversation.jsonl")


def _meta(kind: str, **extra: object) -> dict[str, object]:
    return {
        "kind": kind,
        "command": "sluice " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.system()}, python {platform.python_version()}",
        **extra,
    }


def _workload(name: str, opts: list[str] | None, trace: Path):
    from sluice.bench.workloads import build_workload
    from sluice.bench.workloads.registry import parse_options

    return build_workload(name, parse_options(opts or []), trace=trace)


@app.command("sim")
def sim_cmd(
    workload: WorkloadOpt = "mooncake",
    opt: OptsOpt = None,
    trace: TraceOpt = _DEFAULT_TRACE,
    engines: Annotated[int, typer.Option(help="simulated engines")] = 8,
    policy: Annotated[list[str] | None, typer.Option(help="routing policy (repeatable)")] = None,
    gpu: Annotated[str | None, typer.Option(help="GPU profile (engine default if unset)")] = None,
    model: Annotated[str | None, typer.Option(help="model profile")] = None,
    engine_opt: Annotated[
        list[str] | None, typer.Option("--engine-opt", help="EngineConfig key=value")
    ] = None,
    scrape_interval: Annotated[float, typer.Option(help="engine-state staleness (sim s)")] = 0.0,
    hashes: Annotated[
        str, typer.Option(help="block hashes in facts: auto | tokens | none")
    ] = "auto",
    out: OutOpt = Path("bench/out/sim"),
    name: Annotated[str, typer.Option(help="report file name stem")] = "sim",
    plots: Annotated[bool, typer.Option(help="write PNG plots")] = True,
    records: Annotated[bool, typer.Option(help="per-request records in the JSON")] = True,
) -> None:
    """Discrete-event cluster simulation (virtual time, no HTTP) of one or more policies."""
    from rich.console import Console
    from rich.progress import Progress

    import sluice.routing  # noqa: F401 - registers every policy
    from sluice.bench.cluster import default_facts, simulate
    from sluice.bench.cluster.config import engine_config
    from sluice.bench.cluster.facts import token_block_facts
    from sluice.bench.report import RunReport, markdown_table, write_all, write_json

    console = Console(stderr=True)
    cfg = engine_config(gpu, model, engine_opt or [])
    served = "sim-model"
    reports = []
    for pol in policy or ["round_robin", "least_load"]:
        wl = _workload(workload, opt, trace)
        use_hashes = hashes == "tokens" or (
            hashes == "auto" and pol not in ("round_robin", "least_load")
        )
        facts = (
            token_block_facts(served, int(getattr(cfg, "block_size", 16)))
            if use_hashes
            else default_facts(served)
        )
        total = len(wl) if isinstance(wl, list) else None
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"{pol}", total=total)
            result = simulate(
                wl,
                engines=engines,
                policy=pol,
                engine_config=cfg,
                facts_builder=facts,
                model=served,
                scrape_interval=scrape_interval,
                load_sample_interval=1.0,
                progress=lambda n, t=task: bar.update(t, completed=n),
            )
        summary = result.summary()
        console.print(
            f"[bold]{pol}[/]: {summary.requests} requests, {result.sim_time:.1f} simulated s "
            f"in {result.wall_time:.1f} wall s, {result.cpu_time:.1f} CPU s "
            f"({result.events} events)"
        )
        reports.append(
            RunReport(
                label=pol,
                summary=summary,
                records=result.records,
                load_series=[(t, [float(v) for v in vals]) for t, vals in result.load_series],
                endpoints=[e.endpoint for e in result.engines],
                meta=_meta("cluster-sim", engines=engines, workload=workload, opts=opt or []),
            )
        )
    table = markdown_table([(r.label, r.summary) for r in reports])
    if plots:
        write_all(out, reports, name, records)
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / f"{name}.json", reports, include_records=False)
        (out / f"{name}.md").write_text(table)
    typer.echo(table)


@app.command("http")
def http_cmd(
    url: Annotated[str, typer.Option(help="gateway / router / engine base URL")],
    workload: WorkloadOpt = "multi_turn",
    opt: OptsOpt = None,
    trace: TraceOpt = _DEFAULT_TRACE,
    model: Annotated[str, typer.Option(help="model name to request")] = "sim-model",
    engine_url: Annotated[
        list[str] | None, typer.Option(help="engine URLs to scrape (prefix hits, load)")
    ] = None,
    time_scale: Annotated[
        float, typer.Option(help="wall s per simulated s (the engines' --time-scale)")
    ] = 1.0,
    label: Annotated[str, typer.Option(help="run label in the report")] = "http",
    out: OutOpt = Path("bench/out/http"),
    name: Annotated[str, typer.Option(help="report file name stem")] = "http",
    endpoint_header: Annotated[str | None, typer.Option(help="response header: engine")] = None,
    records: Annotated[bool, typer.Option(help="per-request records in the JSON")] = True,
) -> None:
    """Open-loop streaming load over HTTP; reports in simulated seconds."""
    from rich.console import Console
    from rich.progress import Progress

    from sluice.bench.metrics import summarize
    from sluice.bench.report import RunReport, write_all
    from sluice.bench.runner import HttpOptions, run_http

    wl = list(_workload(workload, opt, trace))
    opts = HttpOptions(
        base_url=url,
        model=model,
        time_scale=time_scale,
        engine_urls=engine_url or [],
        endpoint_header=endpoint_header,
    )
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(label, total=len(wl))
        result = asyncio.run(
            run_http(wl, opts, len(wl), lambda done, _t: bar.update(task, completed=done))
        )
    summary = summarize(result.records, prefix_hit_rate=result.prefix_hit_rate)
    summary.extra.update(wall_time_s=result.wall_time, time_scale=time_scale)
    report = RunReport(
        label=label,
        summary=summary,
        records=result.records,
        load_series=result.load_series,
        endpoints=list(engine_url or []),
        meta=_meta("http", url=url, workload=workload, opts=opt or [], time_scale=time_scale),
    )
    md = write_all(out, [report], name, records)
    failed = [r for r in result.records if not r.ok]
    if failed:
        console.print(f"[red]{len(failed)} failed[/], first: {failed[0].error}")
    typer.echo(md.read_text())


@app.command("workload")
def workload_cmd(
    workload: WorkloadOpt = "mooncake",
    opt: OptsOpt = None,
    trace: TraceOpt = _DEFAULT_TRACE,
) -> None:
    """Print a workload's shape: requests, tokens, duration, shared-prefix potential."""
    from sluice.bench.workloads.stats import workload_stats

    typer.echo(workload_stats(_workload(workload, opt, trace)))


@app.command("crosscheck")
def crosscheck_cmd(
    workload: WorkloadOpt = "multi_turn",
    opt: OptsOpt = None,
    trace: TraceOpt = _DEFAULT_TRACE,
    engines: Annotated[int, typer.Option(help="simulated engines")] = 2,
    policy: Annotated[str, typer.Option(help="gateway and simulator policy")] = "round_robin",
    time_scale: Annotated[float, typer.Option(help="engines' wall s per simulated s")] = 2.0,
    out: OutOpt = Path("bench/out/crosscheck"),
    name: Annotated[str, typer.Option(help="report file name stem")] = "crosscheck",
) -> None:
    """The same workload via the cluster simulator and via HTTP (gateway + sim engines)."""
    from sluice.bench.crosscheck import run_crosscheck
    from sluice.bench.report import RunReport, write_all

    wl = list(_workload(workload, opt, trace))
    out.mkdir(parents=True, exist_ok=True)
    check = run_crosscheck(
        wl, engines=engines, policy=policy, time_scale=time_scale,
        log_path=out / f"{name}-gateway.log",
    )  # fmt: skip
    meta = _meta("crosscheck", engines=engines, policy=policy, time_scale=time_scale)
    http_label, sim_label = f"http {policy}", f"cluster-sim {policy}"
    runs = [
        RunReport(http_label, check.http, check.http_result.records, meta=meta),
        RunReport(sim_label, check.sim, check.sim_records, meta=meta),
    ]
    md = write_all(out, runs, name, records=False)
    verdict = (
        f"\nTTFT p50 differs by {check.ttft_p50_diff:.1%}, output throughput by "
        f"{check.throughput_diff:.1%} (target: within 10%)\n"
    )
    with open(md, "a") as f:
        f.write(verdict)
    typer.echo(md.read_text())


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="bench")
