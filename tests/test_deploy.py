"""deploy/ as a workshop uses it, in what tests/test_workshop.py's hub replaces: the one-machine
configuration's shared-password login (its own settings, read by JupyterHub's config loader) and
the Zero to JupyterHub values (the course's image, the pull at start, the same names rules).
"""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from labsupport.workshop import COURSE_FOLDER, workshop_link

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
LEARNERS_PASSWORD = "learners-password"
INSTRUCTOR_PASSWORD = "an-instructor-password-of-32-char"


def _one_machine(monkeypatch: pytest.MonkeyPatch, **environment: str) -> Config:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return PyFileConfigLoader("jupyterhub_config.py", path=str(DEPLOY)).load_config()


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((DEPLOY / "z2jh-values.yaml").read_text())
    return values


def _login(authenticator: SharedPasswordAuthenticator, name: str, password: str) -> Any:
    data = {"username": name, "password": password}
    return asyncio.run(authenticator.get_authenticated_user(None, data))


def test_both_hubs_use_an_authenticator_jupyterhub_has() -> None:
    config = PyFileConfigLoader("jupyterhub_config.py", path=str(DEPLOY)).load_config()
    names = {
        config.JupyterHub.authenticator_class,
        _values()["hub"]["config"]["JupyterHub"]["authenticator_class"],
    }
    assert names == {"shared-password"}
    (found,) = entry_points(group="jupyterhub.authenticators", name="shared-password")
    assert found.load() is SharedPasswordAuthenticator


def test_one_machine_learners_log_in_with_the_shared_password_the_instructor_as_admin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _one_machine(
        monkeypatch,
        WORKSHOP_PASSWORD=LEARNERS_PASSWORD,
        WORKSHOP_ADMIN_PASSWORD=INSTRUCTOR_PASSWORD,
    )
    hub = SharedPasswordAuthenticator(config=config)
    assert _login(hub, "ada", LEARNERS_PASSWORD)["admin"] is False
    assert _login(hub, "instructor", INSTRUCTOR_PASSWORD)["admin"] is True
    assert _login(hub, "instructor", LEARNERS_PASSWORD) is None
    assert _login(hub, "ada", "a-wrong-password") is None
    # Names become OS accounts (useradd): no spaces, no capitals.
    assert _login(hub, "Ada Lovelace", LEARNERS_PASSWORD) is None


@pytest.mark.parametrize(
    ("variable", "length", "minimum"),
    [("WORKSHOP_PASSWORD", 7, 8), ("WORKSHOP_ADMIN_PASSWORD", 31, 32)],
)
def test_a_too_short_password_stops_the_hub_with_the_length_the_docs_give(
    monkeypatch: pytest.MonkeyPatch, variable: str, length: int, minimum: int
) -> None:
    passwords = {
        "WORKSHOP_PASSWORD": LEARNERS_PASSWORD,
        "WORKSHOP_ADMIN_PASSWORD": INSTRUCTOR_PASSWORD,
        variable: "p" * length,
    }
    config = _one_machine(monkeypatch, **passwords)
    with pytest.raises(ValueError, match=f"at least {minimum} characters"):
        SharedPasswordAuthenticator(config=config)
    instructors = (DEPLOY.parent / "docs" / "instructors.md").read_text(encoding="utf-8")
    workshop = instructors.split("## Run a workshop", 1)[1]
    assert f"({minimum} characters or more" in workshop


def test_kubernetes_values_pull_the_course_where_the_workshop_link_opens_it() -> None:
    values = _values()
    singleuser = values["singleuser"]
    command = singleuser["lifecycleHooks"]["postStart"]["exec"]["command"]
    assert command[0] == "gitpuller"  # nbgitpuller's command, in the image from requirements.lock
    repository, branch, folder = command[1:]
    link = workshop_link("https://hub.example.org", repository=repository, branch=branch)
    query = parse_qs(urlsplit(link).query)
    assert query["targetpath"] == [folder] == [COURSE_FOLDER]
    # The pulled course's labsupport is imported first, as on one machine.
    assert singleuser["extraEnv"]["PYTHONPATH"] == f"/home/jovyan/{folder}"
    assert singleuser["extraEnv"]["LAB_MODE"] == "offline"
    assert singleuser["image"]["name"] and singleuser["image"]["tag"]
    assert values["hub"]["config"]["Authenticator"]["username_pattern"] == (
        PyFileConfigLoader("jupyterhub_config.py", path=str(DEPLOY))
        .load_config()
        .Authenticator.username_pattern
    )
