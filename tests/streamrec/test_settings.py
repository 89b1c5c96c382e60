"""Settings renamed by issue 14 (`streamrec publish` became `streamrec feed`): the new
variables are read, and the old ones still are until the next release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamrec.settings import Settings

# field -> (its variable, the variable it had before the rename, a value that is not the default)
RENAMED = {
    "feed_k": ("STREAMREC_FEED_K", "STREAMREC_PUBLISH_K", 7),
    "feed_min_interval_ms": (
        "STREAMREC_FEED_MIN_INTERVAL_MS",
        "STREAMREC_PUBLISH_MIN_INTERVAL_MS",
        250,
    ),
    "feed_web_port": ("STREAMREC_FEED_WEB_PORT", "STREAMREC_PUBLISHER_WEB_PORT", 7067),
}


@pytest.fixture(autouse=True)
def no_feed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, former, _ in RENAMED.values():
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(former, raising=False)


@pytest.mark.parametrize("field", RENAMED)
def test_the_new_variable_is_read(
    field: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable, _, value = RENAMED[field]
    monkeypatch.setenv(variable, str(value))
    assert getattr(Settings(home=tmp_path), field) == value


@pytest.mark.parametrize("field", RENAMED)
def test_the_former_variable_is_still_read(
    field: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, former, value = RENAMED[field]
    monkeypatch.setenv(former, str(value))
    assert getattr(Settings(home=tmp_path), field) == value


@pytest.mark.parametrize("field", RENAMED)
def test_the_new_variable_wins_over_the_former(
    field: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable, former, value = RENAMED[field]
    monkeypatch.setenv(former, str(value + 1))
    monkeypatch.setenv(variable, str(value))
    assert getattr(Settings(home=tmp_path), field) == value


def test_without_variables_the_defaults_hold(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert (settings.feed_k, settings.feed_min_interval_ms, settings.feed_web_port) == (
        20,
        1000,
        6067,
    )


def test_callers_pass_renamed_settings_by_field_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMREC_PUBLISH_K", "3")
    given: dict[str, Any] = {field: value for field, (_, _, value) in RENAMED.items()}
    settings = Settings(home=tmp_path, **given)  # an argument wins over the environment
    assert {field: getattr(settings, field) for field in RENAMED} == given


def test_a_child_process_gets_the_new_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given: dict[str, Any] = {field: value for field, (_, _, value) in RENAMED.items()}
    env = Settings(home=tmp_path, **given).to_env()
    for variable, former, value in RENAMED.values():
        assert env[variable] == str(value) and former not in env
    # A stale former variable in the parent's environment loses to the new one.
    monkeypatch.setenv("STREAMREC_PUBLISH_K", "99")
    for name, env_value in env.items():
        monkeypatch.setenv(name, env_value)
    assert Settings().feed_k == given["feed_k"]
