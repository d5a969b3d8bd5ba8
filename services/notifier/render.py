"""What a notification says: one subject line, a plain-text and an HTML body (email), Slack Block
Kit blocks. Every alert lists job, run id, state, attempt, error, output tail and a link to the
run in the dashboard."""

from __future__ import annotations

import html
from typing import Any

from shared.events import Alert, Notification

STATUS_WORD = {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED", "test": "TEST"}
DETAIL_FIELDS = ("state", "attempt", "exit_code", "error", "reason")


def subject(n: Notification) -> str:
    first = n.alerts[-1] if n.alerts else None
    what = first.summary if first else n.group_key
    more = f" (+{n.total - 1} more)" if n.total > 1 else ""
    prefix = f"[cropcron {STATUS_WORD[n.status]}]"
    if n.escalated_from:
        prefix += f" [via {n.channel}: {n.escalated_from} failed]"
    level = first.level.upper() if first and n.status != "resolved" else ""
    return f"{prefix} {level + ' ' if level else ''}{what}{more}"[:250]


def run_link(dashboard_url: str, alert: Alert) -> str | None:
    return f"{dashboard_url.rstrip('/')}/runs/{alert.run_id}" if alert.run_id else None


def _facts(alert: Alert) -> list[tuple[str, str]]:
    facts = [("level", alert.level), ("kind", alert.kind)]
    if alert.job:
        facts.append(("job", alert.job + (f" ({alert.job_type})" if alert.job_type else "")))
    if alert.run_id:
        facts.append(("run id", alert.run_id))
    for key in DETAIL_FIELDS:
        value = alert.details.get(key)
        if value is not None and value != "":
            facts.append((key.replace("_", " "), str(value)))
    facts.append(("at", alert.at.isoformat(timespec="seconds")))
    facts.append(("source", alert.source))
    return facts


def _tail(alert: Alert) -> str:
    tail = alert.details.get("output_tail")
    return str(tail) if tail else ""


def _intro(n: Notification) -> str:
    if n.status == "resolved":
        return f"Resolved: {n.group_key} is no longer firing."
    if n.status == "test":
        return "This is a test message from `cropcron notify-test`: the channel settings work."
    shown = len(n.alerts)
    head = f"{n.total} alert(s) for {n.group_key}" + (f" (showing the last {shown})" if shown < n.total else "")
    if n.status == "repeat":
        head = "Still firing. " + head
    if n.escalated_from:
        head = f"Delivery via '{n.escalated_from}' failed permanently ({n.escalation_reason}); sent here instead. " + head
    return head


def text_body(n: Notification, dashboard_url: str) -> str:
    lines = [_intro(n), ""]
    for alert in n.alerts:
        lines.append(f"* {alert.summary}")
        lines += [f"    {k}: {v}" for k, v in _facts(alert)]
        link = run_link(dashboard_url, alert)
        if link:
            lines.append(f"    run: {link}")
        if alert.text:
            lines += ["    " + line for line in alert.text.splitlines()]
        if _tail(alert):
            lines.append("    output (last lines):")
            lines += ["      | " + line for line in _tail(alert).splitlines()]
        lines.append("")
    lines.append(f"notification {n.id}")
    return "\n".join(lines)


def html_body(n: Notification, dashboard_url: str) -> str:
    e = html.escape
    parts = [f"<p>{e(_intro(n))}</p>"]
    for alert in n.alerts:
        rows = "".join(f"<tr><th align='left'>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _facts(alert))
        link = run_link(dashboard_url, alert)
        if link:
            rows += f"<tr><th align='left'>run</th><td><a href='{e(link)}'>{e(link)}</a></td></tr>"
        parts.append(f"<h3>{e(alert.summary)}</h3><table>{rows}</table>")
        if alert.text:
            parts.append(f"<p>{e(alert.text)}</p>")
        if _tail(alert):
            parts.append(f"<pre>{e(_tail(alert))}</pre>")
    parts.append(f"<p><small>notification {e(n.id)}</small></p>")
    return "<html><body>" + "".join(parts) + "</body></html>"


def _mrkdwn(text: str) -> str:
    # Slack mrkdwn treats &, < and > as control characters
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(n: Notification, dashboard_url: str) -> dict[str, Any]:
    """A readable Block Kit message, with `text` as the notification fallback."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": subject(n)[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(_intro(n))}},
    ]
    for alert in n.alerts[:10]:  # Slack allows 50 blocks; keep a storm readable
        fields = [{"type": "mrkdwn", "text": f"*{_mrkdwn(k)}*\n{_mrkdwn(v)[:300]}"} for k, v in _facts(alert)[:10]]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*{_mrkdwn(alert.summary)}*"},
                       "fields": fields})
        if _tail(alert):
            blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                       "text": "```" + _mrkdwn(_tail(alert))[-2500:] + "```"}})
        link = run_link(dashboard_url, alert)
        if link:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{link}|Open the run>"}]})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"notification `{n.id}`"}]})
    return {"text": subject(n), "blocks": blocks}
