"""The message catalogs (shared/locales/*.po) are complete: every message the code, the dashboard's
templates and its script use has a translation, with the same placeholders; no catalog keeps a
message nothing uses. Also: times and words come out in the configured language.

`python3 tests/test_i18n.py` prints the entries missing from ko.po, ready to translate."""

from __future__ import annotations

import io
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from babel.messages.extract import extract
from babel.messages.pofile import read_po
from jinja2.ext import babel_extract

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.dashboard.words import JS_MESSAGES, cron_words  # noqa: E402
from shared.i18n import LOCALES, messages, resolve_locale, translator  # noqa: E402

KEYWORDS: dict[str, Any] = {"_": None, "N_": None, "gettext": None, "pgettext": ((1, "c"), 2)}
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")
JS_CALL = re.compile(r"""\bt\("((?:[^"\\]|\\.)*)"[,)]""")


def used_messages() -> dict[str, str]:
    """msgid -> where it is first used, across Python, templates and the dashboard's script."""
    found: dict[str, str] = {}
    for package in ("shared", "services", "cropcron"):
        for path in sorted((ROOT / package).rglob("*.py")):
            with path.open("rb") as handle:
                for lineno, message, _comments, context in extract("python", handle, KEYWORDS):
                    if isinstance(message, str):
                        key = f"{context}\x04{message}" if context else message
                        found.setdefault(key, f"{path.relative_to(ROOT)}:{lineno}")
    for path in sorted((ROOT / "services/dashboard/templates").glob("*.html")):
        with path.open("rb") as handle:
            for lineno, _func, message, _comments in babel_extract(handle, KEYWORDS, [], {}):
                message = message[0] if isinstance(message, tuple) else message  # _("...", name=...)
                if isinstance(message, str):
                    found.setdefault(message, f"{path.relative_to(ROOT)}:{lineno}")
    for message in JS_MESSAGES:
        found.setdefault(message, "services/dashboard/words.py: JS_MESSAGES")
    return found


def catalog(locale: str) -> dict[str, str]:
    with (ROOT / "shared/locales" / f"{locale}.po").open("rb") as handle:
        return {(f"{m.context}\x04" if m.context else "") + str(m.id): str(m.string) for m in read_po(handle) if m.id}


@pytest.mark.parametrize("locale", [loc for loc in LOCALES if loc != "en"])
def test_every_message_is_translated_with_its_placeholders(locale: str) -> None:
    used = used_messages()
    assert len(used) > 150, "extraction found too little: is the extractor looking in the right places?"
    have = catalog(locale)
    missing = [f"{where}: {msgid!r}" for msgid, where in used.items() if not have.get(msgid, "").strip()]
    assert not missing, f"{len(missing)} message(s) without a {locale} translation:\n" + "\n".join(missing)
    wrong = [msgid for msgid in used
             if sorted(PLACEHOLDER.findall(msgid)) != sorted(PLACEHOLDER.findall(have[msgid]))]
    assert not wrong, "translations whose %(name)s placeholders differ from the message's: " + repr(wrong)
    unused = sorted(set(have) - set(used))
    assert not unused, f"{locale}.po keeps messages nothing uses (remove them): {unused}"


def test_the_script_asks_only_for_messages_the_server_sends() -> None:
    script = (ROOT / "services/dashboard/static/app.js").read_text(encoding="utf-8")
    literal = set(JS_CALL.findall(script))
    assert literal, "no t(\"...\") call found in app.js"
    assert literal <= set(JS_MESSAGES), f"add to JS_MESSAGES: {sorted(literal - set(JS_MESSAGES))}"


def test_locale_setting_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CROPCRON_LOCALE", raising=False)
    assert resolve_locale(None) == "en" and resolve_locale("ko") == "ko" and resolve_locale("fr") == "en"
    monkeypatch.setenv("CROPCRON_LOCALE", "ko")
    assert resolve_locale("en") == "ko"
    monkeypatch.setenv("CROPCRON_LOCALE", "xx")  # an unknown override is no override
    assert resolve_locale("en") == "en"


def test_words_and_times_in_korean() -> None:
    ko, en = translator("ko"), translator("en")
    assert messages("en") == {}
    at = datetime(2026, 12, 4, 6, 5, tzinfo=UTC)
    assert ko.when(at, "Asia/Seoul") == "2026년 12월 4일 오후 3:05:00"
    assert ko.when(at, "Asia/Seoul", short=True) == "12월 4일 오후 3:05"
    assert en.when(at, "Asia/Seoul") == "2026-12-04 15:05:00"
    assert cron_words("0 6 * * *", ko) == "매일 06:00"
    assert cron_words("0 7 * * 1", ko) == "매주 월요일 07:00"
    assert cron_words("0 3 1 * *", ko) == "매월 1일 03:00"
    assert cron_words("*/5 * * * *", ko) == "5분마다"
    assert cron_words("0 6 * * *", en) == "every day at 06:00"


if __name__ == "__main__":  # the missing entries, as .po text to translate
    have = catalog("ko")
    out = io.StringIO()
    for key, where in used_messages().items():
        if not have.get(key):
            context, _, msgid = key.rpartition("\x04")
            escaped = msgid.replace("\\", "\\\\").replace('"', '\\"')
            out.write(f"#: {where}\n" + (f"msgctxt \"{context}\"\n" if context else "")
                      + f"msgid \"{escaped}\"\nmsgstr \"\"\n\n")
    sys.stdout.write(out.getvalue())
