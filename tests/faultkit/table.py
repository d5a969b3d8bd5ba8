"""The fault table in markdown (docs/reliability.md), from the scenarios' reports."""

from __future__ import annotations

from faultkit.check import Report
from faultkit.scenario import Scenario

HEADER = ("| scenario | due | run | missed / skipped (reason) | lost | duplicate effects | re-executed | "
          "late p90 (s) | recovery (s) | caught up (s) | verdict |\n"
          "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")


def verdict(scenario: Scenario, report: Report) -> str:
    """ok: nothing lost, the cross-checks clean, repeated effects only where at-least-once allows."""
    problems = []
    if report.lost:
        problems.append(f"{len(report.lost)} lost")
    if report.anomalies:
        problems.append(f"{len(report.anomalies)} anomalies")
    if report.duplicate_effects and not scenario.duplicates_allowed and report.mid_job:
        problems.append("unexplained duplicates")
    if report.notes:
        problems.append("did not settle")
    if problems:
        return "FAIL: " + ", ".join(problems)
    # a fault that found some job between its effect and its report may repeat that effect
    return "ok" if report.mid_job else "ok (not mid-job)"


def row(scenario: Scenario, report: Report) -> str:
    reasons = "<br>".join(f"{n} {text.replace('<t>', '…')}" for text, n in report.not_run.items()) or "0"

    def secs(value: float | None, digits: int = 1) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    return (f"| {scenario.name} | {report.due} | {report.run} | {reasons} | {len(report.lost)} | "
            f"{report.duplicate_effects} | {report.rerun} | {secs(report.late_p90_s, 2)} | {secs(report.recovery_s)} | "
            f"{secs(report.caught_up_s)} | "
            f"{verdict(scenario, report)} |")


def markdown(results: list[tuple[Scenario, Report]]) -> str:
    return "\n".join([HEADER, *(row(s, r) for s, r in results)])
