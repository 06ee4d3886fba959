"""voiceslot.eventloop: which loop the servers run on."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from voiceslot import eventloop
from voiceslot.config import Settings


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_auto_runs_on_uvloop_where_it_is_installed():
    assert isinstance(eventloop.run(_running_loop()), uvloop.Loop)
    assert isinstance(eventloop.run(_running_loop(), choice="uvloop"), uvloop.Loop)


def test_asyncio_keeps_the_standard_loop():
    loop = eventloop.run(_running_loop(), choice="asyncio")
    assert not isinstance(loop, uvloop.Loop)
    assert isinstance(loop, asyncio.BaseEventLoop)


def test_without_uvloop_auto_falls_back_and_asking_for_it_says_why(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(eventloop, "uvloop_installed", lambda: False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails as if not installed
    assert not isinstance(eventloop.run(_running_loop()), uvloop.Loop)
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        eventloop.loop_factory("uvloop")


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VOICESLOT_EVENT_LOOP", "asyncio")
    assert Settings().event_loop == "asyncio"
    monkeypatch.setenv("VOICESLOT_EVENT_LOOP", "tokio")
    with pytest.raises(ValueError, match="event_loop"):
        Settings()
