"""What a notification says: one subject line, a plain-text and an HTML body (email), Slack Block
Kit blocks. Every alert lists job, run id, state, attempt, error, output tail and a link to the
run in the dashboard. Words are in the farm's language and times in its zone (`Look`, from the
applied system section); the alerts themselves stay as raised (their `summary` is English), so a
Korean message says what cropcron's own alerts mean from their kind and fields, and shows an
alert raised by another program as written."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from shared.events import Alert, Notification
from shared.i18n import N_, Translator, translator

STATUS_WORD = {"firing": N_("FIRING"), "repeat": N_("STILL FIRING"), "resolved": N_("RESOLVED"), "test": N_("TEST")}
DETAIL_FIELDS = ("state", "attempt", "exit_code", "error", "reason")
# the facts' labels, and the words for the values that are ids
LABELS = {"level": N_("level"), "kind": N_("kind"), "job": N_("job"), "run id": N_("run id"), "state": N_("state"),
          "attempt": N_("attempt"), "exit_code": N_("exit code"), "error": N_("error"), "reason": N_("reason"),
          "at": N_("at"), "source": N_("source")}
WORDS = {"info": N_("info"), "warning": N_("warning"), "error": N_("error"), "critical": N_("critical"),
         "dead": N_("dead"), "failed": N_("failed"), "timeout": N_("timeout"), "missed": N_("missed"),
         "overdue": N_("overdue"), "succeeded": N_("succeeded"), "service_down": N_("service_down"),
         "component_restarted": N_("component_restarted"), "disk_full": N_("disk_full"), "test": N_("test"),
         "started": N_("started"), "retrying": N_("retrying"), "skipped": N_("skipped"),
         "no_uploads": N_("no_uploads"), "incomplete_flight": N_("incomplete_flight")}


@dataclass(frozen=True)
class Look:
    """How a message reads: the language (shared/i18n.py) and the farm's time zone."""

    locale: str = "en"
    timezone: str = "UTC"

    @property
    def words(self) -> Translator:
        return translator(self.locale)


PLAIN = Look()


def _word(value: str, _: Translator) -> str:
    return _(WORDS[value]) if value in WORDS else value


def summary(alert: Alert, look: Look = PLAIN) -> str:
    """The alert's one line. cropcron's own alerts (from the notifier's rules and dead-man switch)
    are said again from their fields in a language other than English."""
    _ = look.words
    if look.locale == "en" or alert.source != "notifier":
        return alert.summary
    d = alert.details
    job = alert.job or ""
    if alert.kind == "service_down":
        service = str(d.get("service", ""))
        if alert.resolved:
            return _("service %(service)s is back", service=service)
        return _("service %(service)s silent", service=service)
    if alert.kind in ("no_uploads", "incomplete_flight"):
        return _data_summary(alert, _)
    if alert.resolved:
        return _("%(job)s: succeeded again (%(kind)s resolved)", job=job, kind=_word(alert.kind, _))
    error = f": {d['error']}" if d.get("error") else ""
    if alert.kind == "dead":
        return _("%(job)s: dead after %(attempt)s attempt(s)", job=job, attempt=d.get("attempt", "?")) + error
    if alert.kind == "timeout":
        return _("%(job)s: attempt %(attempt)s timed out", job=job, attempt=d.get("attempt", "?"))
    if alert.kind == "failed":
        return _("%(job)s: attempt %(attempt)s failed", job=job, attempt=d.get("attempt", "?")) + error
    if alert.kind == "missed":
        return _("%(job)s: scheduled run missed", job=job) + (f" ({d['reason']})" if d.get("reason") else "")
    if alert.kind == "succeeded":
        return _("%(job)s: succeeded", job=job)
    if alert.kind == "overdue":
        return _("%(job)s: no successful run since its %(at)s instant", job=job,
                 at=_.when(str(d.get("expected_at") or alert.at.isoformat()), look.timezone))
    return alert.summary


def _data_summary(alert: Alert, _: Translator) -> str:
    """The data alarms' lines (services/notifier/expect.py), from their details."""
    d = alert.details
    if alert.kind == "no_uploads":
        what = alert.job or str(d.get("watch", ""))
        if alert.resolved:
            return _("%(what)s: uploads arrived (%(seen)s of %(expected)s flight(s))", what=what, seen=d.get("seen"),
                     expected=d.get("expected"))
        return _("%(what)s: no uploads by %(by)s (%(seen)s of %(expected)s flight(s))", what=what, by=d.get("by"),
                 seen=d.get("seen"), expected=d.get("expected"))
    job = alert.job or ""
    where = "/".join(str(p) for p in (d.get("watch"), d.get("folder")) if p)
    if alert.resolved:
        return _("%(job)s: a complete flight arrived (%(files)s files in %(where)s)", job=job, files=d.get("files"),
                 where=where)
    if d.get("partial"):
        return _("%(job)s: flight %(where)s closed partial with %(files)s files", job=job, where=where,
                 files=d.get("files"))
    return _("%(job)s: flight %(where)s has %(files)s of %(min)s expected files", job=job, where=where,
             files=d.get("files"), min=d.get("min_files"))


def subject(n: Notification, look: Look = PLAIN) -> str:
    _ = look.words
    first = n.alerts[-1] if n.alerts else None
    what = summary(first, look) if first else n.group_key
    more = _(" (+%(count)s more)", count=n.total - 1) if n.total > 1 else ""
    prefix = f"[cropcron {_(STATUS_WORD[n.status])}]"
    if n.escalated_from:
        prefix += " " + _("[via %(channel)s: %(failed)s failed]", channel=n.channel, failed=n.escalated_from)
    level = ((first.level.upper() if look.locale == "en" else _word(first.level, _))
             if first and n.status != "resolved" else "")
    return f"{prefix} {level + ' ' if level else ''}{what}{more}"[:250]


def run_link(dashboard_url: str, alert: Alert) -> str | None:
    return f"{dashboard_url.rstrip('/')}/runs/{alert.run_id}" if alert.run_id else None


def _facts(alert: Alert, look: Look) -> list[tuple[str, str]]:
    _ = look.words
    facts = [(_(LABELS["level"]), _word(alert.level, _)), (_(LABELS["kind"]), _word(alert.kind, _))]
    if alert.job:
        facts.append((_(LABELS["job"]), alert.job + (f" ({alert.job_type})" if alert.job_type else "")))
    if alert.run_id:
        facts.append((_(LABELS["run id"]), alert.run_id))
    for key in DETAIL_FIELDS:
        value = alert.details.get(key)
        if value is not None and value != "":
            facts.append((_(LABELS[key]), _word(str(value), _) if key == "state" else str(value)))
    at = (_.when(alert.at, look.timezone) if look.locale != "en"
          else alert.at.astimezone(ZoneInfo(look.timezone)).isoformat(timespec="seconds"))
    facts.append((_(LABELS["at"]), at))
    facts.append((_(LABELS["source"]), alert.source))
    return facts


def _tail(alert: Alert) -> str:
    tail = alert.details.get("output_tail")
    return str(tail) if tail else ""


def _text(alert: Alert, look: Look) -> str:
    # cropcron's own explanations are in the catalog; another program's text is shown as written
    return look.words.gettext(alert.text) if alert.source == "notifier" else alert.text


def _intro(n: Notification, look: Look) -> str:
    _ = look.words
    if n.status == "resolved":
        return _("Resolved: %(group)s is no longer firing.", group=n.group_key)
    if n.status == "test":
        return _("This is a test message from `cropcron notify-test`: the channel settings work.")
    shown = len(n.alerts)
    head = _("%(count)s alert(s) for %(group)s", count=n.total, group=n.group_key)
    if shown < n.total:
        head += " " + _("(showing the last %(shown)s)", shown=shown)
    if n.status == "repeat":
        head = _("Still firing.") + " " + head
    if n.escalated_from:
        head = _("Delivery via '%(channel)s' failed permanently (%(reason)s); sent here instead.",
                 channel=n.escalated_from, reason=n.escalation_reason) + " " + head
    return head


def text_body(n: Notification, dashboard_url: str, look: Look = PLAIN) -> str:
    _ = look.words
    lines = [_intro(n, look), ""]
    for alert in n.alerts:
        lines.append(f"* {summary(alert, look)}")
        lines += [f"    {k}: {v}" for k, v in _facts(alert, look)]
        link = run_link(dashboard_url, alert)
        if link:
            lines.append("    " + _("run") + f": {link}")
        if alert.text:
            lines += ["    " + line for line in _text(alert, look).splitlines()]
        if _tail(alert):
            lines.append("    " + _("output (last lines):"))
            lines += ["      | " + line for line in _tail(alert).splitlines()]
        lines.append("")
    lines.append(_("notification %(id)s", id=n.id))
    return "\n".join(lines)


def html_body(n: Notification, dashboard_url: str, look: Look = PLAIN) -> str:
    _ = look.words
    e = html.escape
    parts = [f"<p>{e(_intro(n, look))}</p>"]
    for alert in n.alerts:
        rows = "".join(f"<tr><th align='left'>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _facts(alert, look))
        link = run_link(dashboard_url, alert)
        if link:
            label = e(_("run"))
            rows += f"<tr><th align='left'>{label}</th><td><a href='{e(link)}'>{e(link)}</a></td></tr>"
        parts.append(f"<h3>{e(summary(alert, look))}</h3><table>{rows}</table>")
        if alert.text:
            parts.append(f"<p>{e(_text(alert, look))}</p>")
        if _tail(alert):
            parts.append(f"<pre>{e(_tail(alert))}</pre>")
    footer = e(_("notification %(id)s", id=n.id))
    parts.append(f"<p><small>{footer}</small></p>")
    lang = "ko" if look.locale == "ko" else "en"
    return f"<html lang='{lang}'><body>" + "".join(parts) + "</body></html>"


def _mrkdwn(text: str) -> str:
    # Slack mrkdwn treats &, < and > as control characters
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(n: Notification, dashboard_url: str, look: Look = PLAIN) -> dict[str, Any]:
    """A readable Block Kit message, with `text` as the notification fallback."""
    _ = look.words
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": subject(n, look)[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(_intro(n, look))}},
    ]
    for alert in n.alerts[:10]:  # Slack allows 50 blocks; keep a storm readable
        fields = [{"type": "mrkdwn", "text": f"*{_mrkdwn(k)}*\n{_mrkdwn(v)[:300]}"} for k, v in _facts(alert, look)[:10]]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*{_mrkdwn(summary(alert, look))}*"},
                       "fields": fields})
        if _tail(alert):
            blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                       "text": "```" + _mrkdwn(_tail(alert))[-2500:] + "```"}})
        link = run_link(dashboard_url, alert)
        if link:
            label = _("Open the run")
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{link}|{label}>"}]})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn",
                                                    "text": _("notification `%(id)s`", id=n.id)}]})
    return {"text": subject(n, look), "blocks": blocks}
