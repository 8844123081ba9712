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
#: the columns that are not peers (baselines measured in the same run), in table order, and
#: what each is; ``{threads}``: the run's ``meta.memcpy_threads``
BASELINES = {
    "memcpy": "numpy copyto in one thread into a pre-faulted buffer (numpy's: 2 MiB "
    "transparent huge pages where the kernel gives them)",
    "memcpy-shm": "the same into a pre-faulted shared mapping of a memfd (a segment's kind "
    "of memory: 4 KiB pages unless the host enables huge pages for shared memory)",
    "memcpy-mt": "the same split over {threads} threads",
    "memcpy-fresh": "one thread into a fresh mapping (the copy faults its pages in)",
    "echo": "round trip of a Contains-sized frame through a bare trio echo server, "
    "from plasma-coord's worker, interleaved with its calls",
    "c-consumer": "plasma-coord's hand-off with its consumers written in C (clients/c), "
    "right after the Python consumers' run, same producer",
    "python-floor": "the same hand-off with Python consumers that only view and read one byte "
    "of a buffer they mapped before (no store: what waking the interpreter costs)",
}


def format_param(scenario: Scenario, param: int) -> str:
    if param in scenario.labels:
        return scenario.labels[param]
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
    if peer not in BASELINES and not row["scenario"].runs_on(peer):
        return "n/a"
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
    measured = {c["peer"] for c in results["cases"]}
    baselines = [name for name in BASELINES if name in measured]
    columns = list(results["peers"]) + baselines
    status = {name: info["status"] for name, info in results["peers"].items()}
    status |= dict.fromkeys(baselines, "ok")
    threads = meta.get("memcpy_threads", "N")
    legend = "".join(f" {name} = {BASELINES[name].format(threads=threads)}." for name in baselines)
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
        f" ahead); n/a = the peer does not run that scenario.{legend}",
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
    """One chart per scenario and metric (log scale): bars, or for a scenario with ``lines``
    one line per peer over the parameter; ``[]`` without matplotlib."""
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
            if scenario.lines:
                _lines(ax, scenario, mine, peers)
            else:
                _bars(ax, scenario, mine, peers)
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


def _bars(ax: Any, scenario: Scenario, rows: list[dict[str, Any]], peers: list[str]) -> None:
    """One group of bars per row (parameter), one bar per peer."""
    width = 0.8 / len(peers)
    for i, peer in enumerate(peers):
        heights = [r["values"].get(peer, 0.0) for r in rows]
        heights = [h if _is_number(h) else 0.0 for h in heights]
        xs = [j + i * width for j in range(len(rows))]
        ax.bar(xs, heights, width, label=peer)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
    ax.set_xticklabels([format_param(scenario, r["param"]) for r in rows])


def _lines(ax: Any, scenario: Scenario, rows: list[dict[str, Any]], peers: list[str]) -> None:
    """One line per peer through its values, over the parameter on a log axis."""
    for peer in peers:
        points = [
            (r["param"], r["values"][peer]) for r in rows if _is_number(r["values"].get(peer))
        ]
        ax.plot(*zip(*points, strict=True), marker="o", label=peer)
    ax.set_xscale("log")
    ax.set_xlabel(scenario.param_name)


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
