"""People's words in the farm's language: `system.locale` (en | ko, default en), overridden by
CROPCRON_LOCALE. English is written in the code (the message ids); every other language has one
gettext catalog, shared/locales/<locale>.po, read at run time with Babel (nothing to compile, so
`pip install -e .` is enough). tests/test_i18n.py fails when a message used in the code, the
dashboard's templates or its script has no translation.

Two ways to ask for a message: a Translator for a known locale (the dashboard, the notifier, the
CLI: `_ = translator(locale)` then `_("...")`), or `_()` from this module, which follows the locale
set with `using()` (config validation, whose messages are built deep inside pydantic validators).
Messages take named values gettext-style: `_("job %(name)s", name=...)`. Logs stay in English.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from babel.messages.pofile import read_po

LOCALES: Final = ("en", "ko")
DEFAULT_LOCALE: Final = "en"
LOCALE_ENV: Final = "CROPCRON_LOCALE"
CATALOGS: Final = Path(__file__).resolve().parent / "locales"

# How times read in each language (in the farm's zone). English keeps the ISO-like 24-hour form
# the dashboard always had; Korean reads "2026년 12월 4일 오후 3:05:00", as Chromium's
# Intl.DateTimeFormat("ko-KR") writes it, so the pages' live rows match the server's.
_FULL = {"ko": "y년 M월 d일 a h:mm:ss"}
_SHORT = {"ko": "M월 d일 a h:mm"}


def resolve_locale(configured: str | None) -> str:
    """The locale in force: CROPCRON_LOCALE when it names a known one, else the configured one."""
    forced = os.environ.get(LOCALE_ENV, "").strip().lower()
    if forced in LOCALES:
        return forced
    return configured if configured in LOCALES else DEFAULT_LOCALE


@functools.cache
def messages(locale: str) -> dict[str, str]:
    """msgid -> translation of one catalog (empty for English, the language of the ids)."""
    path = CATALOGS / f"{locale}.po"
    if locale == DEFAULT_LOCALE or not path.exists():
        return {}
    with path.open("rb") as handle:
        catalog = read_po(handle, locale=locale)
    # a message with a context ("column" for a table header) is keyed "<context>\x04<id>", as gettext does
    return {(f"{m.context}\x04" if m.context else "") + str(m.id): str(m.string)
            for m in catalog if m.id and isinstance(m.id, str) and m.string and not m.fuzzy}


class Translator:
    def __init__(self, locale: str) -> None:
        self.locale = locale if locale in LOCALES else DEFAULT_LOCALE
        self._messages = messages(self.locale)

    def gettext(self, msgid: str) -> str:
        return self._messages.get(msgid) or msgid

    def pgettext(self, context: str, msgid: str) -> str:
        """A word that reads differently where it stands ("started": a state, or a column)."""
        return self._messages.get(f"{context}\x04{msgid}") or msgid

    def __call__(self, msgid: str, **values: Any) -> str:
        text = self.gettext(msgid)
        return text % values if values else text

    def when(self, value: datetime | str | None, tz: str, short: bool = False) -> str:
        """A time for people, in the farm's zone and this language ("—" for none)."""
        if not value:
            return "—"
        when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        zone = ZoneInfo(tz)
        pattern = (_SHORT if short else _FULL).get(self.locale)
        if pattern is None:
            return when.astimezone(zone).strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")
        return str(format_datetime(when, pattern, tzinfo=zone, locale=self.locale))


@functools.cache
def translator(locale: str) -> Translator:
    return Translator(locale)


_current: ContextVar[str] = ContextVar("cropcron_locale", default=DEFAULT_LOCALE)


def _(msgid: str, **values: Any) -> str:
    """The message in the locale set by `using()` (English outside one)."""
    return translator(_current.get())(msgid, **values)


def N_(msgid: str) -> str:
    """Marks a message for the catalog where it is defined; translated where it is shown."""
    return msgid


@contextmanager
def using(locale: str) -> Iterator[None]:
    token = _current.set(locale)
    try:
        yield
    finally:
        _current.reset(token)
