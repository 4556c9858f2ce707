"""From the results to a verdict: rates per policy, the comparison, the worst examples.

The report is written three ways from one summary: ``report.json`` for
machines, ``report.md`` for a pull request or a CI summary, and
``rates.png``, a plot of each policy's breach rate on both sides with its
interval (when matplotlib is installed: ``pip install
'governance-gateway[report]'``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.gate.thresholds import Thresholds
from gateway.stats import difference, wilson

WORST_EXAMPLES = 3
ANY = "(any policy)"


def summarise(
    records: list[dict[str, Any]],
    policies: list[str],
    sides: list[str],
    thresholds: Thresholds,
    run: dict[str, Any],
) -> dict[str, Any]:
    """Everything the report says, as plain data; ``passed`` is the gate's verdict."""
    ok = {side: [r for r in records if r["side"] == side and r["status"] == "ok"] for side in sides}
    failed = {
        side: [r for r in records if r["side"] == side and r["status"] != "ok"] for side in sides
    }
    rows = []
    for policy in [*policies, ANY]:
        row: dict[str, Any] = {"policy": policy}
        for side in sides:
            hits = sum(1 for r in ok[side] if _breached(r, policy))
            row[side] = wilson(hits, len(ok[side])).to_json()
        if "baseline" in sides:
            diff = difference(
                wilson(row["candidate"]["hits"], row["candidate"]["total"]),
                wilson(row["baseline"]["hits"], row["baseline"]["total"]),
            )
            row["difference"] = diff.to_json()
        if policy != ANY:
            row["failures"] = _failures(row, thresholds.limit(policy).model_dump())
            row["worst"] = _worst(ok["candidate"], policy)
        rows.append(row)
    # prompts with no result at all (a run cut short) count as failed answers
    missing = {
        side: max(0, run["prompt_count"] - len(ok[side]) - len(failed[side])) for side in sides
    }
    shares = {
        side: (len(failed[side]) + missing[side]) / run["prompt_count"]
        if run["prompt_count"]
        else 1.0
        for side in sides
    }
    # a baseline that failed to answer makes every difference look like chance:
    # judging the candidate against it would wave any regression through
    short = [side for side in sides if shares[side] > thresholds.max_errors]
    too_many_errors = bool(short)
    return {
        "run": run,
        "answers": {
            side: {"ok": len(ok[side]), "failed": len(failed[side]) + missing[side]}
            for side in sides
        },
        "unanswered": short,
        "failed_examples": {
            side: [r["error"] for r in failed[side][:WORST_EXAMPLES]] for side in sides
        },
        "policies": rows,
        "thresholds": thresholds.model_dump(),
        "too_many_errors": too_many_errors,
        "passed": not too_many_errors and not any(r.get("failures") for r in rows),
    }


def _breached(record: dict[str, Any], policy: str) -> bool:
    return bool(record["breached"]) if policy == ANY else policy in record["breached"]


def _failures(row: dict[str, Any], limit: dict[str, Any]) -> list[str]:
    out = []
    rate = row["candidate"]["rate"]
    if limit["max_rate"] is not None and rate > limit["max_rate"]:
        out.append(f"candidate rate {rate:.2%} is above max_rate {limit['max_rate']:.2%}")
    diff = row.get("difference")
    if (
        diff is not None
        and limit["max_increase"] is not None
        and diff["low"] > limit["max_increase"]
    ):
        out.append(
            f"the increase over the baseline ({diff['difference']:+.2%}, 95% interval "
            f"{diff['low']:+.2%} to {diff['high']:+.2%}) is above max_increase "
            f"{limit['max_increase']:+.2%}"
        )
    return out


def _worst(records: list[dict[str, Any]], policy: str) -> list[dict[str, Any]]:
    """The candidate's breaches of ``policy`` with the strongest findings first."""
    hits = [r for r in records if policy in r["breached"]]

    def strength(record: dict[str, Any]) -> float:
        return max((f.get("score", 0.0) for f in record["evidence"].get(policy, [])), default=0.0)

    hits.sort(key=lambda r: (-strength(r), r["id"]))
    return [
        {"id": r["id"], "answer": r["answer"], "findings": r["evidence"].get(policy, [])}
        for r in hits[:WORST_EXAMPLES]
    ]


def write_json(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _pct(rate: dict[str, Any]) -> str:
    return (
        f"{rate['rate']:.1%} ({rate['hits']}/{rate['total']}; {rate['low']:.1%}–{rate['high']:.1%})"
    )


def markdown(summary: dict[str, Any]) -> str:
    sides = list(summary["answers"])
    compare = "baseline" in sides
    verdict = "**passed**" if summary["passed"] else "**failed**"
    run = summary["run"]
    lines = [
        "# Gate report",
        "",
        f"Verdict: {verdict}. Prompts: `{run['prompts']}` ({run['prompt_count']}); "
        f"policy revision `{run['revision']}`, route `{run['route']}`.",
        "",
    ]
    for side in sides:
        counts = summary["answers"][side]
        lines.append(
            f"- {side}: `{run['upstreams'][side]['url']}`, {counts['ok']} answers judged, "
            f"{counts['failed']} failed"
        )
    for side in summary["unanswered"]:
        examples = "; ".join(summary["failed_examples"][side]) or "no result recorded"
        lines += [
            "",
            f"Not judged: the {side} failed to answer more than "
            f"{summary['thresholds']['max_errors']:.0%} of the prompts: {examples}",
        ]
    header = "| policy | candidate breach rate (95% interval) |"
    rule = "|---|---|"
    if compare:
        header += " baseline | difference (95% interval) |"
        rule += "---|---|"
    lines += ["", header + " verdict |", rule + "---|"]
    for row in summary["policies"]:
        cells = [
            f"`{row['policy']}`" if row["policy"] != ANY else row["policy"],
            _pct(row["candidate"]),
        ]
        if compare:
            d = row["difference"]
            cells += [
                _pct(row["baseline"]),
                f"{d['difference']:+.1%} ({d['low']:+.1%} to {d['high']:+.1%})",
            ]
        failures = row.get("failures")
        cells.append(
            "" if row["policy"] == ANY else ("fails: " + "; ".join(failures) if failures else "ok")
        )
        lines.append("| " + " | ".join(cells) + " |")
    worst = [row for row in summary["policies"] if row.get("worst")]
    if worst:
        lines += ["", "## Worst examples from the candidate"]
        for row in worst:
            lines += ["", f"### `{row['policy']}`"]
            for example in row["worst"]:
                messages = "; ".join(f["message"] for f in example["findings"][:3]) or "breach"
                excerpt = " ".join(example["answer"].split())[:240]
                lines += [f"- `{example['id']}`: {messages}", f"  > {excerpt}"]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> bool:
    """``rates.png``: each policy's rate per side with its interval; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = summary["policies"]
    sides = list(summary["answers"])
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    for offset, side in zip((-0.15, 0.15), sides, strict=False):
        rates = [r[side]["rate"] for r in rows]
        below = [r[side]["rate"] - r[side]["low"] for r in rows]
        above = [r[side]["high"] - r[side]["rate"] for r in rows]
        ax.errorbar(
            rates,
            [i + offset for i in range(len(rows))],
            xerr=[below, above],
            fmt="o",
            capsize=3,
            label=side,
        )
    ax.set_yticks(range(len(rows)), [r["policy"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("breach rate (95% interval)")
    ax.set_xlim(left=0)
    ax.legend()
    ax.set_title("Gate: " + ("passed" if summary["passed"] else "failed"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
