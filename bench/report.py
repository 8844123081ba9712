"""Turn a results dict (what ``bench.run`` writes as results.json) into Markdown and PNG plots.

A results dict has ``meta`` (command, date, machine), ``peers`` (name -> ``status`` "ok" |
"missing" | "failed", ``reason``, ``facts``) and ``cases``: one entry per scenario, parameter
and peer with the median ``metrics`` over ``runs`` (or an ``error``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.scenarios import SCENARIOS, Scenario, Target

BASELINE = "plasma-coord"
CEILING = "memcpy"


def format_param(scenario: Scenario, param: int) -> str:
    if scenario.param_name != "size":
        return f"{scenario.param_name}={param:,}"
    for unit, factor in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if param >= factor and param % factor == 0:
            return f"{param // factor} {unit}"
    return f"{param} B"


def format_value(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def advantage(scenario: Scenario, metric: str, baseline: float, other: float) -> float:
    """How many times better the baseline is than ``other`` (> 1: baseline ahead)."""
    higher_is_better = scenario.metrics[metric][1]
    return baseline / other if higher_is_better else other / baseline


def _values(cases: Iterable[dict[str, Any]], name: str, param: int, metric: str) -> dict[str, Any]:
    """peer -> value (float) or error text, for one row of the table."""
    row: dict[str, Any] = {}
    for case in cases:
        if case["scenario"] == name and case["param"] == param:
            if "error" in case:
                row[case["peer"]] = f"error: {case['error']}"
            elif metric in case["metrics"]:
                row[case["peer"]] = case["metrics"][metric]
    return row


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in values.items() if isinstance(v, float | int)}


def _target(scenario: Scenario, param: int, metric: str) -> Target | None:
    return next((t for t in scenario.targets if t.param == param and t.metric == metric), None)


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per scenario, parameter and metric, in scenario order."""
    rows = []
    seen = {(c["scenario"], c["param"]) for c in results["cases"]}
    for name, scenario in SCENARIOS.items():
        for param in sorted(p for n, p in seen if n == name):
            for metric in scenario.metrics:
                values = _values(results["cases"], name, param, metric)
                target = _target(scenario, param, metric)
                met = None
                if target is not None:
                    base = {}
                    if target.vs_param is not None:
                        base = _values(results["cases"], name, target.vs_param, metric)
                    met = target.check(_numbers(values), _numbers(base))
                rows.append(
                    {
                        "scenario": scenario,
                        "param": param,
                        "metric": metric,
                        "values": values,
                        "target": target.text if target else "",
                        "met": met,
                    }
                )
    return rows


def _cell(row: dict[str, Any], peer: str, status: str) -> str:
    if status != "ok":
        return status
    value = row["values"].get(peer)
    if value is None:
        return "-"
    if isinstance(value, str):
        return value.replace("|", "/")[:60]
    text = format_value(value)
    base = row["values"].get(BASELINE)
    if peer != BASELINE and isinstance(base, float | int) and base > 0 and value > 0:
        text += f" ({advantage(row['scenario'], row['metric'], base, value):.2f}x)"
    return text


def markdown(results: dict[str, Any]) -> str:
    """The report: peers, then the peer-by-scenario table with ratios and targets."""
    meta = results["meta"]
    peers = list(results["peers"])
    has_ceiling = any(c["peer"] == CEILING for c in results["cases"])
    columns = peers + ([CEILING] if has_ceiling else [])
    status = {name: info["status"] for name, info in results["peers"].items()} | {CEILING: "ok"}
    lines = [
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; machine: {meta['machine']}; "
        f"{meta['repeats']} repeat(s), medians{' (quick mode)' if meta['quick'] else ''}.",
        "",
        "| peer | status | version | batch create |",
        "| --- | --- | --- | --- |",
    ]
    for name, info in results["peers"].items():
        facts = info.get("facts", {})
        state = info["status"] + (f": {info['reason']}" if info.get("reason") else "")
        lines.append(
            f"| {name} | {state.replace('|', '/')} | {facts.get('version', '')} "
            f"| {facts.get('batch', 'loop of single creates')} |"
        )
    lines += [
        "",
        "(N.NNx) = how many times better plasma-coord is than that peer (> 1: plasma-coord"
        f" ahead). {CEILING} = numpy copyto into a pre-faulted buffer, same run.",
        "",
        "| scenario | " + " | ".join(columns) + " | target | met |",
        "| --- | " + " | ".join("---:" for _ in columns) + " | --- | --- |",
    ]
    for row in table_rows(results):
        scenario: Scenario = row["scenario"]
        unit = scenario.metrics[row["metric"]][0]
        metric = row["metric"].split("_")[0] + " " if len(scenario.metrics) > 1 else ""
        label = f"{scenario.title}, {format_param(scenario, row['param'])} ({metric}{unit})"
        cells = [_cell(row, peer, status[peer]) for peer in columns]
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['target']} | {met} |")
    return "\n".join(lines) + "\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool)


def plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """One bar chart per scenario and metric (log scale); ``[]`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[report] matplotlib is not installed: no plots (pip install '.[bench]')")
        return []
    written = []
    rows = table_rows(results)
    for name, scenario in SCENARIOS.items():
        for metric, (unit, _) in scenario.metrics.items():
            mine = [r for r in rows if r["scenario"].name == name and r["metric"] == metric]
            peers = sorted({p for r in mine for p, v in r["values"].items() if _is_number(v)})
            if not mine or not peers:
                continue
            fig, ax = plt.subplots(figsize=(8, 4))
            width = 0.8 / len(peers)
            for i, peer in enumerate(peers):
                heights = [r["values"].get(peer, 0.0) for r in mine]
                heights = [h if _is_number(h) else 0.0 for h in heights]
                xs = [j + i * width for j in range(len(mine))]
                ax.bar(xs, heights, width, label=peer)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(mine))])
            ax.set_xticklabels([format_param(scenario, r["param"]) for r in mine])
            ax.set_yscale("log")
            ax.set_ylabel(unit)
            ax.set_title(f"{scenario.title} ({metric})")
            ax.legend(fontsize="small")
            fig.tight_layout()
            path = out_dir / f"{name}_{metric}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written.append(path)
    return written


README_START, README_END = "<!-- results -->", "<!-- /results -->"


def update_readme(readme: Path, text: str) -> None:
    """Replace what lies between the results markers of ``readme`` with ``text``."""
    content = readme.read_text()
    start, end = content.find(README_START), content.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} lacks the {README_START} ... {README_END} markers")
    head, tail = content[: start + len(README_START)], content[end:]
    readme.write_text(f"{head}\n{text}{tail}")


def write(
    results: dict[str, Any], out_dir: Path, *, with_plots: bool = True, readme: Path | None = None
) -> list[Path]:
    """Write results.json, results.md, the PNG plots and the README's table (if given)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    md_path.write_text(text)
    written = [json_path, md_path, *(plots(results, out_dir) if with_plots else [])]
    if readme is not None:
        update_readme(readme, text)
        written.append(readme)
    return written
