"""The CLI's mapping of failures to one line and an exit code (the servers' side is tested with
real servers elsewhere)."""

from __future__ import annotations

from typing import Any

import nats.errors
import pytest
from nats.js.errors import ServiceUnavailableError

from cropcron import cli, commands


def test_a_broker_that_does_not_answer_in_time_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # seen in compose on a loaded machine: `apply` connected, then a JetStream request timed out
    # and the one-shot container printed nats-py's traceback
    async def no_answer(*args: Any, **kwargs: Any) -> Any:
        raise nats.errors.TimeoutError

    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:9")
    monkeypatch.setattr(commands, "open_bus", no_answer)
    assert cli.main(["history"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("cropcron: the NATS server did not answer in time (it may be overloaded, starting or "
                   "restarting); try again")


def test_jetstream_unavailable_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # compose.cluster.yaml's `apply` while the three nodes were still electing a meta leader: its
    # retry loop printed nats-py's traceback for each attempt
    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise ServiceUnavailableError(code=503, err_code=10008, description="JetStream system temporarily unavailable")

    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:9")
    monkeypatch.setattr(commands, "open_bus", unavailable)
    assert cli.main(["jobs"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cropcron: NATS JetStream is not available (JetStream system temporarily unavailable)")
    assert "Traceback" not in err
