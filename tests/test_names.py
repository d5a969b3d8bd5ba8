"""Job and watch names as people write them (issue 11): Unicode names, their subject keys, and the
config's refusals. Pure functions, no servers."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import wire
from shared.config import ConfigError, parse_config
from shared.events import RunEvent, Trigger, tick_run_id
from shared.names import MAX_NAME_CHARS, name_of_key, name_problem, normalise_name, subject_key

# a NATS subject token: no separators or wildcards, no whitespace, printable ASCII is enough here
TOKEN_RE = re.compile(r"^[!-~]+$")
# a NATS KV key (nats.js.kv VALID_KEY_RE), and never '.': a key must be one subject token
KV_KEY_RE = re.compile(r"^[-/_=a-zA-Z0-9]+$")

PROTOTYPE_NAMES = ["아침 드론 영상 처리", "일일 백업", "주간 리포트", "월간 데이터 정리", "드론_이미지_처리"]

# names of every shape: Hangul syllables and jamo (which NFC composes), mixed scripts, spaces,
# punctuation (including the subject specials . * >), combining marks, emoji, ASCII-safe names
_chars = st.one_of(
    st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),  # Hangul syllables
    st.characters(min_codepoint=0x1100, max_codepoint=0x11FF),  # conjoining jamo: NFC composes them
    st.characters(min_codepoint=0x0300, max_codepoint=0x036F),  # combining diacritics
    st.sampled_from(list("abcXYZ019_-. *>/=한글édrone")),
    st.characters(exclude_categories=("Cs",)),
)
names = st.text(_chars, min_size=1, max_size=MAX_NAME_CHARS).map(normalise_name).filter(
    lambda n: name_problem(n) is None)


def _valid_key(key: str) -> bool:
    return bool(TOKEN_RE.match(key)) and bool(KV_KEY_RE.match(key)) and "." not in key and key != wire.SYSTEM_KEY


@settings(max_examples=150, deadline=None)
@given(st.lists(names, min_size=2, max_size=6, unique=True))
def test_distinct_names_never_share_a_key(batch: list[str]) -> None:
    keys = [subject_key(n) for n in batch]
    assert len(set(keys)) == len(batch), dict(zip(batch, keys, strict=True))
    for name, key in zip(batch, keys, strict=True):
        assert _valid_key(key), (name, key)
        assert name_of_key(key) == name  # a key reads back as its name
        # one token: a subject built from it has exactly its fixed number of tokens
        assert len(wire.run_event_subject(name, "dead").split(".")) == 4
        assert len(wire.trigger_subject("high", name).split(".")) == 4


@settings(max_examples=200, deadline=None)
@given(names)
def test_the_same_text_in_any_normal_form_has_one_key(name: str) -> None:
    decomposed = unicodedata.normalize("NFD", name)
    assert subject_key(decomposed) == subject_key(name)
    assert Trigger(run_id="r", job=decomposed, kind="manual", created_at=datetime.now(UTC)).job == name


def test_ascii_safe_names_are_their_own_key_and_keep_their_ids() -> None:
    for name in ("nightly_backup", "edge-heartbeat", "A1"):
        assert subject_key(name) == name
        assert wire.run_event_subject(name, "dead") == f"cropcron.run.{name}.dead"
    # the id of an existing deployment's tick is unchanged (pinned before names became Unicode)
    assert tick_run_id("nightly_backup", datetime(2026, 11, 27, 17, 0, tzinfo=UTC)) == "5f28e1f444b6b6e22fd5da1bf283d566"


def test_the_documented_korean_example() -> None:
    # docs/events.md "Job and watch keys" works this one through
    assert subject_key("아침 드론 영상 처리") == "_5skyj3fzvaqoxe445oq2aihmtca6za4bedwlfghlu2wa"
    assert wire.run_event_subject("아침 드론 영상 처리", "succeeded") == (
        "cropcron.run._5skyj3fzvaqoxe445oq2aihmtca6za4bedwlfghlu2wa.succeeded")
    for name in PROTOTYPE_NAMES:
        assert subject_key(name).startswith("_") and name_of_key(subject_key(name)) == name


def test_reserved_and_foreign_keys_name_no_job() -> None:
    for key in (wire.SYSTEM_KEY, "_", "_!!", "_aa", "_AAAA", "a.b", "_74"):
        assert name_of_key(key) is None, key


def test_run_events_keep_the_name_as_written() -> None:
    ev = RunEvent(run_id="r", job=unicodedata.normalize("NFD", "일일 백업"), state="succeeded", attempt=1,
                  at=datetime.now(UTC))
    assert ev.job == "일일 백업" and '"job":"일일 백업"' in ev.model_dump_json()


def _job(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "database_backup", "schedule": "0 2 * * *", "run": ["true"], **extra}


def _problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.problems


def test_korean_names_validate() -> None:
    config = parse_config({"system": {"name": "드론 작물 모니터링 스케줄러", "timezone": "Asia/Seoul"},
                           "jobs": [_job(n) for n in PROTOTYPE_NAMES]})
    assert [j.name for j in config.jobs] == PROTOTYPE_NAMES


def test_names_differing_only_by_case_or_normal_form_are_refused() -> None:
    nfd = unicodedata.normalize("NFD", "일일 백업")
    problems = _problems({"jobs": [_job("일일 백업"), _job(nfd), _job("Backup"), _job("backup")]})
    assert len(problems) == 2, problems
    assert any(p.startswith("job 'Backup': field 'name':") and "differ only by case" in p for p in problems)
    assert any(p.startswith("job '일일 백업': field 'name':") and "differ only by case or Unicode normalisation"
               in p for p in problems)


def test_watch_names_and_references_are_normalised() -> None:
    nfd = unicodedata.normalize("NFD", "드론 사진")
    config = parse_config({"folder_watches": [{"name": "드론 사진", "path": "/tmp"}],
                           "jobs": [_job("사진 검사", schedule=None, on_file=nfd),
                                    _job("비행 요약", schedule=None, on_batch={"watch": nfd})]})
    assert config.jobs[0].on_file == "드론 사진" and config.jobs[1].on_batch is not None
    assert config.jobs[1].on_batch.watch == "드론 사진"
    assert wire.file_subject(nfd) == wire.file_subject("드론 사진")
    problems = _problems({"folder_watches": [{"name": "드론\t사진", "path": "/tmp"}]})
    assert problems[0].startswith("watch '드론\\t사진': field 'name':") and "U+0009" in problems[0]
