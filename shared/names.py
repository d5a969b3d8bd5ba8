"""Names people give jobs and folder watches, and the keys they travel under.

A name is what the farm writes: any Unicode text of 1-64 characters once NFC-normalised, spaces
included ("아침 드론 영상 처리"). NATS subjects and KV keys take a much smaller alphabet, so each
name has a *subject key*, derived from it alone (docs/events.md "Job and watch keys"):

- a name that is ASCII-safe ([A-Za-z0-9_-], not starting with '_') is its own key: the subjects
  and KV keys of existing deployments are unchanged;
- any other name is "_" + the lowercase RFC 4648 base32 of its NFC UTF-8 bytes, unpadded.

The two forms cannot meet (only the second starts with '_'), base32 is one-to-one, so two
different normalised names never share a key, and a key can be read back (name_of_key). Keys use
only [a-z0-9_A-Z-]: a single subject token (no '.', '*', '>' or whitespace) and a valid KV key.
The reserved KV key "_system" is none of them: base32 of whole bytes never has 6 characters.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import unicodedata
from typing import Final

from shared.i18n import _

MAX_NAME_CHARS: Final = 64
# names that are their own key; also what channel names (email/Slack) are held to
SAFE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9_-]{0,63}$")
KEY_PREFIX: Final = "_"
# characters a name may not hold: C0/C1 controls, line/paragraph separators, surrogates, and the
# bidirectional overrides and isolates that make a name display as something else
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def normalise_name(name: str) -> str:
    """NFC: the same text typed on two keyboards (composed or decomposed Hangul) is one name."""
    return unicodedata.normalize("NFC", name)


def fold_name(name: str) -> str:
    """What two names must not share: NFC, case folded, NFC again (folding can decompose)."""
    return unicodedata.normalize("NFC", normalise_name(name).casefold())


def name_problem(name: str) -> str | None:
    """Why `name` (already normalised) cannot name a job or watch; None if it can. In the
    language of the config being read (shared/i18n.py: using)."""
    if not name:
        return _("must not be empty")
    if len(name) > MAX_NAME_CHARS:
        return _("is %(count)d characters long; at most %(max)d", count=len(name), max=MAX_NAME_CHARS)
    for char in name:
        if unicodedata.category(char) in _REFUSED_CATEGORIES or char in _BIDI:
            code = f"U+{ord(char):04X}"
            return _("must not contain control characters (found %(code)s)", code=code)
    if name != name.strip():
        return _("must not start or end with a space")
    if name.startswith(KEY_PREFIX):
        return _("must not start with '_' (reserved for cropcron's own keys)")
    return None


def check_name(value: str) -> str:
    """A pydantic validator's body: the normalised name, or ValueError saying what is wrong."""
    name = normalise_name(value)
    problem = name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


@functools.lru_cache(maxsize=100_000)  # the timer derives a subject per job per instant
def subject_key(name: str) -> str:
    """The name's key in subjects and KV (see the module docstring); normalises first."""
    name = normalise_name(name)
    if SAFE_NAME_RE.match(name):
        return name
    return KEY_PREFIX + base64.b32encode(name.encode()).decode("ascii").rstrip("=").lower()


def name_of_key(key: str) -> str | None:
    """The name a key stands for; None for a key no name has (a reserved or foreign key)."""
    if SAFE_NAME_RE.match(key):
        return key
    if not key.startswith(KEY_PREFIX):
        return None
    body = key[len(KEY_PREFIX):].upper()
    try:
        name = base64.b32decode(body + "=" * (-len(body) % 8)).decode()
    except (binascii.Error, ValueError):
        return None
    return name if name_problem(name) is None and subject_key(name) == key else None
