"""The upstream's settings: one frozen value, changes by name, `configured()` that restores."""

from __future__ import annotations

import dataclasses

import pytest
from openai import OpenAI

import labsupport
from labsupport import Fault, RateLimit
from labsupport.upstream import UNCHANGED, LabUpstream, ObservedUpstream, UpstreamSettings

MESSAGES = [{"role": "user", "content": "Say OK."}]


def test_settings_are_frozen_and_normalised() -> None:
    settings = UpstreamSettings(latency=1, faults=[Fault.on_call(1, status=500)])  # type: ignore[arg-type]
    assert settings.latency == 1.0 and isinstance(settings.latency, float)
    assert isinstance(settings.faults, tuple) and len(settings.faults) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.latency = 2.0  # type: ignore[misc]


def test_replace_keeps_what_is_unchanged_and_none_removes_the_rate_limit() -> None:
    limited = UpstreamSettings(latency=0.2, rate_limit=RateLimit(max_concurrent=3))
    assert limited.replace(latency=UNCHANGED, seed=7) == UpstreamSettings(
        latency=0.2, seed=7, rate_limit=RateLimit(max_concurrent=3)
    )
    assert limited.replace(rate_limit=None).rate_limit is None
    assert limited.scripted and not limited.replace(rate_limit=None).scripted
    assert repr(UNCHANGED) == "UNCHANGED"


def test_configure_changes_by_name_resets_counters_and_returns_the_settings() -> None:
    with labsupport.mock_openai(latency=0.0) as upstream:
        OpenAI(api_key="test-key").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        assert upstream.stats.calls == 1
        new = upstream.configure(seed=3)
        assert new == upstream.settings == UpstreamSettings(latency=0.0, seed=3)
        assert upstream.stats.calls == 0
        whole = upstream.configure(UpstreamSettings(latency=0.5), jitter=0.1)
        assert whole == UpstreamSettings(latency=0.5, jitter=0.1) and upstream.latency == 0.5


def test_a_bad_change_leaves_the_upstream_as_it_was() -> None:
    upstream = labsupport.mock_openai(latency=0.3, seed=2)
    before = upstream.settings
    with pytest.raises(ValueError, match="latency must be a finite number of seconds"):
        upstream.configure(latency=-1.0)
    with pytest.raises(TypeError, match="unknown upstream setting 'latncy'"):
        upstream.configure(latncy=1.0)  # type: ignore[call-arg]
    assert upstream.settings == before


def test_configured_restores_the_settings_but_keeps_the_counts_of_the_block() -> None:
    with labsupport.mock_openai(latency=0.0) as upstream:
        before = upstream.settings
        with upstream.configured(faults=[Fault.on_call(1, status=500)]) as same:
            assert same is upstream and len(upstream.settings.faults) == 1
            client = OpenAI(api_key="test-key", max_retries=0)
            with pytest.raises(Exception, match="500"):
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        assert upstream.settings == before
        assert upstream.stats.status_counts == {500: 1}  # what the block caused is still there


def test_configured_restores_even_when_the_block_is_interrupted() -> None:
    upstream = labsupport.mock_openai(latency=0.1)
    with pytest.raises(KeyboardInterrupt), upstream.configured(latency=1.0):
        assert upstream.latency == 1.0
        raise KeyboardInterrupt
    assert upstream.latency == 0.1


def test_every_upstream_a_lesson_gets_is_a_lab_upstream() -> None:
    upstreams = [
        labsupport.mock_openai(),
        labsupport.FakeServer(latency=0.0),
        ObservedUpstream("http://127.0.0.1:1/v1"),
    ]
    assert all(isinstance(upstream, LabUpstream) for upstream in upstreams)


def test_the_live_observer_accepts_configured_and_says_it_cannot_script(
    capsys: pytest.CaptureFixture[str],
) -> None:
    observer = ObservedUpstream("http://127.0.0.1:1/v1", latency=0.2)
    with observer.configured(rate_limit=RateLimit(max_concurrent=2)) as same:
        assert same is observer
    assert "cannot be scripted" in capsys.readouterr().out
    with observer.configured(faults=[], rate_limit=None):
        pass
    assert capsys.readouterr().out == ""
    assert observer.settings == UpstreamSettings(latency=0.2)


def test_an_answer_finished_after_a_reset_leaves_the_new_counters_alone() -> None:
    upstream = labsupport.mock_openai(latency=0.0)
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    before_reset = upstream.answer("POST", "chat/completions", body, "async")
    upstream.reset()
    after_reset = upstream.answer("POST", "chat/completions", body, "async")
    upstream.finish(before_reset)  # the server thread records a call the lesson already forgot
    stats = upstream.stats
    assert stats.calls == 1 and stats.in_flight == 1 and stats.status_counts == {}
    upstream.finish(after_reset)
    assert upstream.stats.status_counts == {200: 1} and upstream.stats.in_flight == 0
