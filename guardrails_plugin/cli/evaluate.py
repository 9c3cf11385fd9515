"""`guardrails-plugin eval` and `calibrate`: a guard's metrics on labelled data (or saved completions)
and the block threshold that meets a target."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ..config import GuardConfig
from ..errors import GuardConfigError
from ..types import Stage
from .common import (
    BaseUrlOpt,
    ConfigOpt,
    EngineChoice,
    EngineOpt,
    Family,
    ModelDirOpt,
    ModelOpt,
    ScriptedOpt,
    _err_console,
    _handle,
    _out,
    app,
)
from .guards import build_config, build_guard, preflight


def _load_data(data: Path | None, predictions: Path | None, stage: Stage | None, limit: int | None) -> Any:
    from ..eval import EvaluationError, attach_predictions, load_dataset

    if data is None and predictions is None:
        raise EvaluationError("give a labelled DATA file, or --predictions FILE")
    if data is not None:
        ds = load_dataset(data, stage)
        if predictions is not None:
            attach_predictions(ds, predictions)
    else:
        assert predictions is not None
        ds = load_dataset(predictions, stage)
    if limit is not None:
        ds.examples = ds.examples[: max(0, limit)]
    return ds


def _score(
    *,
    data: Path | None,
    predictions: Path | None,
    stage: Stage | None,
    family: Family,
    config: Path | None,
    model: str | None,
    model_dir: Path | None,
    engine: EngineChoice | None,
    base_url: str | None,
    batch_size: int,
    limit: int | None,
    scripted: Path | None,
    quiet: bool,
) -> tuple[Any, list[Any], GuardConfig, str, float]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..eval import run_guard, score_predictions

    ds = _load_data(data, predictions, stage, limit)
    stage = ds.stage
    if predictions is not None:
        cfg = GuardConfig.from_yaml(config) if config else GuardConfig()
        t0 = time.perf_counter()
        scored = score_predictions(ds, family=family.value, config=cfg, stage=stage)
        return ds, scored, cfg, "predictions", time.perf_counter() - t0
    cfg = build_config(config, stages=[stage], model=model, model_dir=model_dir, engine=engine,
                       base_url=base_url)
    guard = build_guard(cfg, scripted)
    try:
        with _err_console().status("loading guard models ..."):
            preflight(guard, cfg.stage(stage).guards)
        progress = Progress(
            TextColumn(f"[bold]{stage} guard"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=_err_console(), transient=True, disable=quiet,
        )
        with progress:
            task = progress.add_task("eval", total=len(ds.examples))
            t0 = time.perf_counter()
            scored = asyncio.run(run_guard(guard, ds, stage=stage, batch_size=batch_size,
                                           progress=lambda n: progress.advance(task, n)))
            wall = time.perf_counter() - t0
    finally:
        guard.close()
    return ds, scored, cfg, "guard", wall


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _metrics_table(report: dict[str, Any]) -> Table:
    t = Table(title=f"{report['dataset_name']}: {report['stage']} stage, positive = {report['positive_class']}, "
              f"n = {report['n']}, threshold {report['threshold']:g} ({report['source']})")
    # Short headers so the table fits 80 columns; the caption says what they mean.
    t.caption = ("P/R/F1/acc in %. configured: the policy as set; fail-closed: unparseable counted as "
                 "flagged; dropped: unparseable left out (as the GuardReasoner authors' script does)")
    for col in ("scoring", "n", "P", "R", "F1", "acc", "TP", "FP", "FN", "TN"):
        t.add_column(col, justify="right" if col != "scoring" else "left", no_wrap=True)
    for name, key in (("configured", "metrics"), ("fail-closed", "metrics_fail_closed"),
                      ("dropped", "metrics_unparseable_dropped")):
        m = report[key]
        t.add_row(name, str(m["n"]), _pct(m["precision"]), _pct(m["recall"]), _pct(m["f1"]),
                  _pct(m["accuracy"]), str(m["tp"]), str(m["fp"]), str(m["fn"]), str(m["tn"]))
    return t


def _print_report(report: dict[str, Any]) -> None:
    out = _out()
    out.print(_metrics_table(report))
    m = report["metrics"]
    pos = report["positive_class"]
    cm = Table(title="confusion matrix (as configured)")
    cm.add_column("")
    cm.add_column(f"predicted {pos}", justify="right")
    cm.add_column(f"predicted not {pos}", justify="right")
    cm.add_row(f"gold {pos}", str(m["tp"]), str(m["fn"]))
    cm.add_row(f"gold not {pos}", str(m["fp"]), str(m["tn"]))
    out.print(cm)
    pf = report["parse_failures"]
    out.print(f"parse failures / failed guard calls: {pf['count']} {pf['by_kind'] or ''}")
    lat = report.get("latency_ms")
    if lat:
        out.print(f"latency per example: mean {lat['mean']:.1f} ms, p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}, "
                  f"max {lat['max']:.1f}; {report['examples_per_s']:.2f} examples/s")
    cats = report.get("per_category") or {}
    if cats.get("predicted"):
        ct = Table(title="per guard category")
        for col in ("category", "tagged", "flagged", "true positives", "precision"):
            ct.add_column(col)
        for c, d in cats["predicted"].items():
            ct.add_row(c, str(d["tagged"]), str(d["flagged"]), str(d["true_positives"]), f"{100 * d['precision']:.2f}")
        out.print(ct)
    if cats.get("gold"):
        gt = Table(title="per gold category")
        for col in ("category", "n", "positives", "caught", "recall", "accuracy"):
            gt.add_column(col)
        for c, d in cats["gold"].items():
            rec = "-" if d["recall"] is None else f"{100 * d['recall']:.2f}"
            gt.add_row(c, str(d["n"]), str(d["positives"]), str(d["caught"]), rec, f"{100 * d['accuracy']:.2f}")
        out.print(gt)


DataArg = typer.Argument(None, help="Labelled JSONL / JSON / CSV (GuardReasoner benchmark files as shipped).")
StageOpt = typer.Option(None, "--stage", "-s", case_sensitive=False,
                        help="prompt | reasoning | response (default: inferred from the columns).")
PredOpt = typer.Option(None, "--predictions", help="Saved guard completions (JSONL with 'predict'); scored "
                       "without running a model. Labels from DATA when given, else from this file.")
FamilyOpt = typer.Option(Family.guardreasoner, "--family", case_sensitive=False,
                         help="Parser for --predictions completions.")
BatchOpt = typer.Option(8, "--batch-size", "-b", min=1, help="Concurrent guard checks.")
LimitOpt = typer.Option(None, "--limit", min=0, help="Only the first N rows.")


@app.command("eval")
def eval_cmd(
    data: Path | None = DataArg,
    stage: Stage | None = StageOpt,
    predictions: Path | None = PredOpt,
    family: Family = FamilyOpt,
    config: Path | None = ConfigOpt,
    model: str | None = ModelOpt,
    model_dir: Path | None = ModelDirOpt,
    engine: EngineChoice | None = EngineOpt,
    base_url: str | None = BaseUrlOpt,
    batch_size: int = BatchOpt,
    limit: int | None = LimitOpt,
    out: Path | None = typer.Option(None, "--out", "-o", help="Write results.json, results.md, "
                                    "predictions.jsonl and append to summary.md in this folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the report JSON to stdout."),
    scripted_responses: Path | None = ScriptedOpt,
) -> None:
    """Precision, recall, F1, accuracy, parse failures, latency and the confusion matrix of a guard
    on labelled data (or on saved completions with --predictions)."""
    from ..eval import evaluate, write_report

    def run() -> dict[str, Any]:
        ds, scored, cfg, source, wall = _score(
            data=data, predictions=predictions, stage=stage, family=family, config=config, model=model,
            model_dir=model_dir, engine=engine, base_url=base_url, batch_size=batch_size, limit=limit,
            scripted=scripted_responses, quiet=json_out)
        report = evaluate(scored, ds, config=cfg, source=source,
                          family=family.value if source == "predictions" else None,
                          wall_s=wall if source == "guard" else None)
        if out is not None:
            paths = write_report(report, out, scored=scored)
            report["written"] = {k: str(v) for k, v in paths.items()}
        return report

    report = _handle(run)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_report(report)
        if report.get("written"):
            _out().print(f"wrote {', '.join(report['written'].values())}")


@app.command()
def calibrate(
    data: Path | None = DataArg,
    stage: Stage | None = StageOpt,
    target: str = typer.Option("f1", "--target", "-t", help="f1 (best F1), precision=0.9 or recall=0.9 "
                               "(best F1 among thresholds meeting it)."),
    predictions: Path | None = PredOpt,
    family: Family = FamilyOpt,
    config: Path | None = ConfigOpt,
    model: str | None = ModelOpt,
    model_dir: Path | None = ModelDirOpt,
    engine: EngineChoice | None = EngineOpt,
    base_url: str | None = BaseUrlOpt,
    batch_size: int = BatchOpt,
    limit: int | None = LimitOpt,
    write_config: Path | None = typer.Option(None, "--write-config", help="Write the guard config with the "
                                             "chosen stage block_threshold to this YAML file."),
    plot: Path | None = typer.Option(None, "--plot", help="Save a PNG of precision / recall / F1 vs threshold."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write calibration.json into this folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the result JSON to stdout."),
    scripted_responses: Path | None = ScriptedOpt,
) -> None:
    """Sweep the block threshold over the guard's risks on labelled data and pick the best F1 (or the
    best F1 meeting a precision / recall target). Exit 1 when no threshold meets the target."""
    from ..eval import EvaluationError, parse_target, plot_sweep, sweep_to_dicts, write_config_threshold
    from ..eval import calibrate as do_calibrate

    def run() -> dict[str, Any]:
        parse_target(target)  # fail on a bad target before running a model
        ds, scored, cfg, source, _ = _score(
            data=data, predictions=predictions, stage=stage, family=family, config=config, model=model,
            model_dir=model_dir, engine=engine, base_url=base_url, batch_size=batch_size, limit=limit,
            scripted=scripted_responses, quiet=json_out)
        if ds.task != "harm":
            raise EvaluationError("calibrate sweeps harm risks; refusal labels have no threshold")
        closed = cfg.fail_mode_for(ds.stage) == "closed"
        try:
            best, points = do_calibrate(scored, target=target, fail_closed=closed)
        except EvaluationError as exc:
            if "no threshold reaches" in str(exc):
                _err_console().print(f"[red]{exc}[/red]")
                raise typer.Exit(1) from None
            raise
        result: dict[str, Any] = {
            "dataset": ds.path, "stage": str(ds.stage), "target": target, "n": len(scored),
            "source": source, "mode": cfg.mode, "guards": cfg.stage(ds.stage).guards if source == "guard"
            else [family.value], "fail_mode": cfg.fail_mode_for(ds.stage),
            "previous_threshold": cfg.threshold(ds.stage),
            "chosen": sweep_to_dicts([best])[0], "sweep": sweep_to_dicts(points),
        }
        if write_config is not None:
            write_config_threshold(ds.stage, best.threshold, write_config, config=cfg)
            result["config_written"] = str(write_config)
        if plot is not None:
            try:
                plot_sweep(points, plot, chosen=best,
                           title=f"{Path(ds.path).stem}: {ds.stage} stage ({', '.join(result['guards'])})")
            except ImportError:
                raise GuardConfigError("--plot needs matplotlib: pip install 'guardrails-plugin[eval]'") from None
            result["plot_written"] = str(plot)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "calibration.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            result["json_written"] = str(out / "calibration.json")
        return result

    result = _handle(run)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    c = result["chosen"]
    t = Table(title=f"threshold sweep ({result['stage']} stage, target {target}, n = {result['n']})")
    for col in ("threshold", "precision", "recall", "F1", "accuracy", "TP", "FP", "FN", "TN"):
        t.add_column(col, justify="right")
    for p in result["sweep"]:
        style = "bold green" if p["threshold"] == c["threshold"] else None
        t.add_row(f"{p['threshold']:.4g}", f"{100 * p['precision']:.2f}", f"{100 * p['recall']:.2f}",
                  f"{100 * p['f1']:.2f}", f"{100 * p['accuracy']:.2f}", str(p["tp"]), str(p["fp"]),
                  str(p["fn"]), str(p["tn"]), style=style)
    out_c = _out()
    out_c.print(t)
    out_c.print(f"chosen block_threshold for {result['stage']}: [bold]{c['threshold']:.4g}[/bold] "
                f"(F1 {100 * c['f1']:.2f}, precision {100 * c['precision']:.2f}, recall {100 * c['recall']:.2f}; "
                f"was {result['previous_threshold']:g})")
    for key in ("config_written", "plot_written", "json_written"):
        if key in result:
            out_c.print(f"wrote {result[key]}")

