"""A digest (the `digest` chore, shared/digest.py) as each channel shows it, in the farm's language
and zone: a subject line, plain text, HTML with the chart inline (cid:), Slack blocks (a Slack
webhook cannot carry an image: the chart becomes a line of bar characters)."""

from __future__ import annotations

import html
from email.message import EmailMessage
from typing import Any

from services.notifier.chart import stacked_bars
from services.notifier.render import WORDS, Look
from shared.digest import DigestReport
from shared.events import Notification
from shared.i18n import Translator

# states in the order the table and the chart show them
STATES = ("succeeded", "dead", "failed", "retrying", "started", "skipped", "missed")
COLOURS = {"succeeded": (46, 160, 67), "dead": (214, 69, 65), "failed": (240, 140, 60),
           "retrying": (240, 190, 60), "started": (90, 140, 220), "skipped": (170, 170, 170),
           "missed": (120, 120, 120)}
CHART_CID = "digest-chart"
SPARK = " ▁▂▃▄▅▆▇█"


def _report(n: Notification) -> DigestReport:
    if n.digest is None:
        raise ValueError(f"notification {n.id} carries no digest")
    return n.digest


def _state(state: str, _: Translator) -> str:
    return _(WORDS[state]) if state in WORDS else state


def _size(value: int | None) -> str:
    amount = float(value or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def _when(value: Any, look: Look) -> str:
    return look.words.when(value, look.timezone)


def totals(r: DigestReport) -> tuple[int, int]:
    """(runs, dead runs) over the period."""
    return sum(sum(s.values()) for s in r.by_job.values()), sum(s.get("dead", 0) for s in r.by_job.values())


def columns(r: DigestReport) -> list[str]:
    seen = {state for states in r.by_job.values() for state, count in states.items() if count}
    return [s for s in STATES if s in seen] + sorted(seen - set(STATES))


def subject(n: Notification, look: Look) -> str:
    _ = look.words
    r = _report(n)
    runs, dead = totals(r)
    what = r.title or r.job
    counts = _("%(runs)s runs, %(dead)s dead", runs=runs, dead=dead)
    word = _("DIGEST")
    prefix = f"[cropcron {word}]"
    if n.escalated_from:
        prefix += " " + _("[via %(channel)s: %(failed)s failed]", channel=n.channel, failed=n.escalated_from)
    return f"{prefix} {what}: {counts}"[:250]


def _lines(r: DigestReport, dashboard_url: str, look: Look) -> dict[str, list[str]]:
    """Each section's lines as plain text (the text body and Slack build on them)."""
    _ = look.words
    base = dashboard_url.rstrip("/")
    out: dict[str, list[str]] = {}
    files = [_("%(watch)s: %(files)s file(s), %(flights)s flight(s)", watch=w, files=r.files.get(w, 0),
               flights=r.flights.get(w, 0)) for w in sorted(set(r.files) | set(r.flights))]
    out["files"] = files or [_("none")]
    out["failures"] = [f"{_when(f.at, look)}  {f.job}  {_state(f.state, _)}  {(f.error or '')[:200]}  "
                       f"{base}/runs/{f.run_id}" for f in r.failures] or [_("none")]
    if r.failures_total > len(r.failures):
        out["failures"].append(_("(%(shown)s of %(total)s shown)", shown=len(r.failures), total=r.failures_total))
    disks = []
    for d in r.disks:
        if d.error or d.free is None or not d.total:
            disks.append(_("%(path)s: cannot read (%(error)s)", path=d.path, error=d.error or "?"))
        else:
            disks.append(_("%(path)s: %(free)s free of %(total)s (%(percent)s%%)", path=d.path, free=_size(d.free),
                           total=_size(d.total), percent=round(100 * d.free / d.total)))
    out["disks"] = disks or [_("none")]
    out["overdue"] = [(_("%(job)s: overdue at %(at)s, succeeded since", job=o.job, at=_when(o.at, look))
                       if o.resolved else _("%(job)s: overdue since %(at)s", job=o.job, at=_when(o.at, look)))
                      for o in r.overdue] or [_("none")]
    return out


def _heads(look: Look) -> dict[str, str]:
    _ = look.words
    return {"jobs": _("Runs by job"), "failures": _("Failures"), "files": _("Files and flights received"),
            "disks": _("Disk space"), "overdue": _("Overdue jobs")}


def _intro(r: DigestReport, look: Look) -> str:
    _ = look.words
    return _("Runs from %(since)s to %(until)s", since=_when(r.since, look), until=_when(r.until, look))


def text_body(n: Notification, dashboard_url: str, look: Look) -> str:
    _ = look.words
    r = _report(n)
    heads = _heads(look)
    sections = _lines(r, dashboard_url, look)
    cols = columns(r)
    lines = [_intro(r, look), "", heads["jobs"]]
    if not r.by_job:
        lines.append("  " + _("No runs in this period."))
    for job in sorted(r.by_job):
        states = r.by_job[job]
        parts = ", ".join(f"{_state(s, _)} {states.get(s, 0)}" for s in cols if states.get(s))
        lines.append(f"  {job}: {parts}")
    for key in ("failures", "files", "disks", "overdue"):
        lines += ["", heads[key], *("  " + line for line in sections[key])]
    lines += ["", _("notification %(id)s", id=n.id)]
    return "\n".join(lines)


def chart(r: DigestReport) -> bytes:
    return stacked_bars([(r.series.get(s, []), COLOURS[s]) for s in STATES])


def html_body(n: Notification, dashboard_url: str, look: Look) -> str:
    _ = look.words
    e = html.escape
    r = _report(n)
    heads = _heads(look)
    sections = _lines(r, dashboard_url, look)
    cols = columns(r)
    runs, dead = totals(r)
    parts = [f"<h2>{e(r.title or r.job)}</h2><p>{e(_intro(r, look))}: "
             f"<b>{e(_('%(runs)s runs, %(dead)s dead', runs=runs, dead=dead))}</b></p>"]
    per = _("Runs per hour") if r.bucket == "hour" else _("Runs per day")
    legend = " ".join(f"<span style='color:rgb{COLOURS[s]}'>&#9632;</span> {e(_state(s, _))}" for s in STATES
                      if any(r.series.get(s, [])))
    first = _when(r.buckets[0], look) if r.buckets else ""
    parts.append(f"<p><img src='cid:{CHART_CID}' alt='{e(per)}' width='560' height='160'><br>"
                 f"<small>{e(per)} ({e(first)} &rarr;) {legend}</small></p>")
    parts.append(f"<h3>{e(heads['jobs'])}</h3>")
    if r.by_job:
        head = "".join(f"<th>{e(_state(s, _))}</th>" for s in cols)
        rows = "".join(f"<tr><td>{e(job)}</td>" + "".join(f"<td align='right'>{r.by_job[job].get(s, 0)}</td>"
                                                           for s in cols) + "</tr>" for job in sorted(r.by_job))
        parts.append(f"<table border='0' cellpadding='3'><tr><th align='left'>{e(_('job'))}</th>{head}</tr>"
                     f"{rows}</table>")
    else:
        parts.append(f"<p>{e(_('No runs in this period.'))}</p>")
    base = dashboard_url.rstrip("/")
    parts.append(f"<h3>{e(heads['failures'])}</h3>")
    if r.failures:
        items = "".join(f"<li>{e(_when(f.at, look))} <b>{e(f.job)}</b> {e(_state(f.state, _))}: "
                        f"{e((f.error or '')[:200])} <a href='{e(base)}/runs/{e(f.run_id)}'>{e(_('Open the run'))}</a>"
                        "</li>" for f in r.failures)
        parts.append(f"<ul>{items}</ul>")
        if r.failures_total > len(r.failures):
            parts.append(f"<p>{e(sections['failures'][-1])}</p>")
    else:
        parts.append(f"<p>{e(_('none'))}</p>")
    for key in ("files", "disks", "overdue"):
        items = "".join(f"<li>{e(line)}</li>" for line in sections[key])
        parts.append(f"<h3>{e(heads[key])}</h3><ul>{items}</ul>")
    parts.append(f"<p><small>{e(_('notification %(id)s', id=n.id))}</small></p>")
    lang = "ko" if look.locale == "ko" else "en"
    return f"<html lang='{lang}'><body>" + "".join(parts) + "</body></html>"


def email(n: Notification, dashboard_url: str, look: Look) -> EmailMessage:
    """text/plain and text/html alternatives; the HTML part is multipart/related with the chart."""
    msg = EmailMessage()
    msg["Subject"] = subject(n, look)
    msg.set_content(text_body(n, dashboard_url, look))
    msg.add_alternative(html_body(n, dashboard_url, look), subtype="html")
    html_part = msg.get_payload()[1]  # type: ignore[index]
    assert isinstance(html_part, EmailMessage)
    html_part.add_related(chart(_report(n)), "image", "png", cid=f"<{CHART_CID}>", filename="runs.png")
    return msg


def _spark(r: DigestReport) -> str:
    totals_ = [sum(r.series.get(s, [0] * len(r.buckets))[i] for s in STATES) for i in range(len(r.buckets))]
    peak = max(totals_, default=0)
    if not peak:
        return ""
    return "".join(SPARK[min(round(8 * t / peak), 8) if t else 0] for t in totals_[-60:])


def _mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(n: Notification, dashboard_url: str, look: Look) -> dict[str, Any]:
    _ = look.words
    r = _report(n)
    heads = _heads(look)
    sections = _lines(r, dashboard_url, look)
    cols = columns(r)
    jobs = [f"*{_mrkdwn(job)}*: " + ", ".join(f"{_state(s, _)} {r.by_job[job][s]}" for s in cols
                                               if r.by_job[job].get(s)) for job in sorted(r.by_job)[:30]]
    per = _("Runs per hour") if r.bucket == "hour" else _("Runs per day")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": subject(n, look)[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(_intro(r, look))
                                     + (f"\n{_mrkdwn(per)}: `{_spark(r)}`" if _spark(r) else "")}},
        {"type": "section", "text": {"type": "mrkdwn", "text": (f"*{_mrkdwn(heads['jobs'])}*\n" + "\n".join(
            jobs or [_mrkdwn(_("No runs in this period."))]))[:2900]}},
    ]
    base = dashboard_url.rstrip("/")
    failures = [f"{_mrkdwn(_when(f.at, look))} *{_mrkdwn(f.job)}* {_mrkdwn((f.error or '')[:150])} "
                f"<{base}/runs/{f.run_id}|{_mrkdwn(_('Open the run'))}>" for f in r.failures[:10]]
    if r.failures_total > len(failures):
        failures.append(_mrkdwn(_("(%(shown)s of %(total)s shown)", shown=len(failures), total=r.failures_total)))
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": (
        f"*{_mrkdwn(heads['failures'])}*\n" + "\n".join(failures or [_mrkdwn(_("none"))]))[:2900]}})
    for key in ("files", "disks", "overdue"):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": (
            f"*{_mrkdwn(heads[key])}*\n" + "\n".join(_mrkdwn(line) for line in sections[key]))[:2900]}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _("notification `%(id)s`", id=n.id)}]})
    return {"text": subject(n, look), "blocks": blocks}
