"""deploy/ as a workshop uses it, in what tests/test_workshop.py's real hub does not try: the
one-machine configuration's login rules, name rules and account checks (its own settings, read
by JupyterHub's config loader, on a database in memory) and the Zero to JupyterHub values (the
course's image, the pull at start, the same authenticator and name rules).
"""

from __future__ import annotations

import asyncio
import re
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from firstuseauthenticator import FirstUseAuthenticator
from jupyterhub import orm
from jupyterhub.auth import Authenticator
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from labsupport.workshop import COURSE_FOLDER, workshop_link

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DOCS = DEPLOY.parent / "docs" / "workshop.md"
INSTRUCTOR_PASSWORD = "an-instructor-password-of-32-char"


def _one_machine(monkeypatch: pytest.MonkeyPatch, **environment: str) -> Config:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return PyFileConfigLoader("jupyterhub_config.py", path=str(DEPLOY)).load_config()


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((DEPLOY / "z2jh-values.yaml").read_text())
    return values


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """WORKSHOP_STATE in a temporary folder: the password hashes go there."""
    monkeypatch.setenv("WORKSHOP_STATE", str(tmp_path))
    return tmp_path


def _hub_authenticator(config: Config) -> Any:
    """The configuration's authenticator, on a JupyterHub database in memory."""
    database = orm.new_session_factory("sqlite://")()
    return config.JupyterHub.authenticator_class(config=config, db=database)


def _add_user(authenticator: Any, name: str) -> None:
    """What the instructor's "Add users" in the admin panel does to the hub's database."""
    authenticator.db.add(orm.User(name=name))
    authenticator.db.commit()


def _login(authenticator: Authenticator, name: str, password: str) -> Any:
    """A login form's submission; the stand-in login page gets FirstUseAuthenticator's message."""
    login_page = SimpleNamespace(custom_login_error="")
    data = {"username": name, "password": password}
    return asyncio.run(authenticator.get_authenticated_user(login_page, data))


def test_both_hubs_use_firstuseauthenticator() -> None:
    config = PyFileConfigLoader("jupyterhub_config.py", path=str(DEPLOY)).load_config()
    assert issubclass(config.JupyterHub.authenticator_class, FirstUseAuthenticator)
    name = _values()["hub"]["config"]["JupyterHub"]["authenticator_class"]
    (found,) = entry_points(group="jupyterhub.authenticators", name=name)
    assert found.load() is FirstUseAuthenticator


def test_the_instructors_password_is_set_at_start_and_a_names_first_login_sets_its_own(
    monkeypatch: pytest.MonkeyPatch, state: Path
) -> None:
    config = _one_machine(monkeypatch, WORKSHOP_ADMIN_PASSWORD=INSTRUCTOR_PASSWORD)
    hub = _hub_authenticator(config)
    assert list(state.glob("passwords.dbm*"))  # in WORKSHOP_STATE, not the hub's folder
    _add_user(hub, "instructor")  # JupyterHub adds its admin users at start
    assert _login(hub, "instructor", "a-learner-was-quicker") is None
    assert _login(hub, "instructor", INSTRUCTOR_PASSWORD)["admin"] is True
    # Only names the instructor added: anyone else is refused, whatever the password.
    assert _login(hub, "ada", "a-learners-password") is None
    _add_user(hub, "ada")
    assert _login(hub, "ada", "short") is None  # fewer than 8 characters: nothing is set
    # None: "not from this authenticator" (JupyterHub then leaves the user's admin flag as is).
    assert _login(hub, "ada", "a-learners-password")["admin"] is None
    assert _login(hub, "ada", "a-wrong-password") is None
    # The same name in another case is the same learner, with the same password.
    assert _login(hub, "Ada", "another-password") is None
    assert _login(hub, "ADA", "a-learners-password")["name"] == "ada"
    # The hub restarted: the instructor's password is the environment's again.
    hub.reset_password("instructor", "changed-in-the-hub-in-between")
    restarted = _hub_authenticator(config)
    _add_user(restarted, "instructor")
    assert _login(restarted, "instructor", INSTRUCTOR_PASSWORD)["admin"] is True


def test_open_signup_lets_a_new_name_log_in_and_keep_it(
    monkeypatch: pytest.MonkeyPatch, state: Path
) -> None:
    config = _one_machine(
        monkeypatch, WORKSHOP_ADMIN_PASSWORD=INSTRUCTOR_PASSWORD, WORKSHOP_OPEN_SIGNUP="yes"
    )
    hub = _hub_authenticator(config)
    assert _login(hub, "ada", "a-learners-password")["name"] == "ada"
    assert _login(hub, "ada", "a-squatters-password") is None
    # A name that is an account of this machine is refused before any password is stored.
    assert _login(hub, "root", "a-password-123") is None
    assert _login(hub, "\u0430da", "a-password-123") is None  # Cyrillic а


@pytest.mark.parametrize(
    "name",
    [
        "Ada Lovelace",
        "\u0430da",  # Cyrillic а
        "ad\u0430",
        "\uff41da",  # fullwidth ａ
        "ada\n",  # $ would have let it through
        "-ada",
        "1ada",
        "a" * 32,
    ],
)
def test_names_are_lower_case_ascii_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    config = _one_machine(monkeypatch)
    names = Authenticator(config=config)
    assert not names.validate_username(names.normalize_username(name))


def test_a_name_differing_only_in_case_is_the_same_name(monkeypatch: pytest.MonkeyPatch) -> None:
    names = Authenticator(config=_one_machine(monkeypatch))
    for name in ("ada", "Ada", "ADA"):
        normal = names.normalize_username(name)
        assert (normal, names.validate_username(normal)) == ("ada", True)


@pytest.mark.parametrize("name", ["root", "daemon", "nobody"])
def test_an_account_the_hub_did_not_make_is_refused_at_login_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, state: Path, name: str
) -> None:
    config = _one_machine(
        monkeypatch, WORKSHOP_ADMIN_PASSWORD=INSTRUCTOR_PASSWORD, WORKSHOP_OPEN_SIGNUP="yes"
    )
    hub = _hub_authenticator(config)
    _add_user(hub, name)  # even had the instructor added it
    login_page = SimpleNamespace(custom_login_error="")
    data = {"username": name, "password": "a-password-123"}
    assert asyncio.run(hub.authenticate(login_page, data)) is None
    assert login_page.custom_login_error == (
        f"{name!r} is an account of this machine, not a workshop name"
    )


def test_the_pre_spawn_hook_refuses_system_accounts_whatever_said_they_were_the_hubs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    create_account = _one_machine(monkeypatch).Spawner.pre_spawn_hook
    spawner = SimpleNamespace(user=SimpleNamespace(name="root"))
    with pytest.raises(RuntimeError, match="'root' is an OS account the workshop hub did not"):
        create_account(spawner)
    # Had root been put in the hub's group, the uid check still refuses it.
    monkeypatch.setitem(create_account.__globals__, "made_by_the_hub", lambda name: True)
    for name in ("root", "daemon"):
        spawner.user.name = name
        with pytest.raises(RuntimeError, match=rf"^'{name}' is a system account \(uid \d+\)"):
            create_account(spawner)
    assert create_account.__globals__["uid_min"]() == _login_defs_uid_min()


def _login_defs_uid_min() -> int:
    text = Path("/etc/login.defs").read_text(encoding="utf-8")
    found = re.search(r"^UID_MIN\s+(\d+)\s*$", text, re.MULTILINE)
    return int(found.group(1)) if found else 1000


def test_a_short_or_missing_admin_password_stops_the_hub_with_the_length_the_docs_give(
    monkeypatch: pytest.MonkeyPatch, state: Path
) -> None:
    for password in ("", "p" * 31):
        config = _one_machine(monkeypatch, WORKSHOP_ADMIN_PASSWORD=password)
        with pytest.raises(ValueError, match="at least 32 characters"):
            _hub_authenticator(config)
    docs = " ".join(DOCS.read_text(encoding="utf-8").split())  # lines joined
    assert "32 characters or more" in docs and "8 characters or more" in docs


def test_the_idle_culler_runs_as_a_hub_service_with_the_scopes_it_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _one_machine(monkeypatch, WORKSHOP_IDLE_TIMEOUT="1200")
    (service,) = config.JupyterHub.services
    assert service["command"][1:] == ["-m", "jupyterhub_idle_culler", "--timeout=1200"]
    (role,) = config.JupyterHub.load_roles
    assert role["services"] == [service["name"]]
    assert set(role["scopes"]) == {
        "list:users",
        "read:users:activity",
        "read:servers",
        "delete:servers",
    }


@pytest.mark.parametrize("systemd", [True, False], ids=["systemd", "no-systemd"])
def test_limits_go_to_systemdspawner_where_systemd_runs_the_machine(
    monkeypatch: pytest.MonkeyPatch, systemd: bool
) -> None:
    from systemdspawner import SystemdSpawner

    # What the config checks, as systemd's sd_booted() does, made true or false for the test.
    is_dir = Path.is_dir
    booted = Path("/run/systemd/system")
    monkeypatch.setattr(Path, "is_dir", lambda path: systemd if path == booted else is_dir(path))
    config = _one_machine(monkeypatch, WORKSHOP_MEM_LIMIT="1G", WORKSHOP_CPU_LIMIT="0.5")
    if systemd:
        assert config.JupyterHub.spawner_class == "systemd"
        spawner = SystemdSpawner(config=config, user=SimpleNamespace(name="ada", id=1))
        assert (spawner.mem_limit, spawner.cpu_limit) == (1024**3, 0.5)
        assert spawner.isolate_tmp and spawner.isolate_devices and spawner.disable_user_sudo
    else:
        assert "spawner_class" not in config.JupyterHub  # JupyterHub's LocalProcessSpawner
        assert "SystemdSpawner" not in config


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
    authenticator = values["hub"]["config"]["Authenticator"]
    assert authenticator["allow_all"] is True and authenticator["admin_users"] == ["instructor"]
    assert values["hub"]["config"]["FirstUseAuthenticator"] == {
        "create_users": False,
        "min_password_length": 8,
        "dbm_path": "/srv/jupyterhub/passwords.dbm",
    }
    assert authenticator["username_pattern"] == (
        PyFileConfigLoader("jupyterhub_config.py", path=str(DEPLOY))
        .load_config()
        .Authenticator.username_pattern
    )
