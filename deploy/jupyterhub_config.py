# JupyterHub for a workshop on ONE machine: the instructor adds the learners' names in the admin
# panel, each learner logs in with their name and a password of their own choosing (the first
# login sets it: FirstUseAuthenticator), and gets an OS account the hub makes, a home only they
# can read, and the course pulled into ~/async-llm-lab by the workshop link
# (`python -m labsupport workshop-link HUB_URL`). What the hub guarantees and what it does not,
# and the instructor's steps: docs/workshop.md.
#
#   sudo WORKSHOP_ADMIN_PASSWORD=... /opt/async-llm-lab/.venv/bin/jupyterhub \
#       -f /opt/async-llm-lab/deploy/jupyterhub_config.py
#
# Settings from the environment (all optional but the admin password):
#   WORKSHOP_ADMIN_PASSWORD  the instructor's password, 32 characters or more; the admin user is
#                            "instructor", and the hub sets this password at every start, so
#                            no learner's first login can take that name
#   WORKSHOP_OPEN_SIGNUP     "yes": any new name logs in (its first login sets its password),
#                            not only the names the instructor added (only on a network that
#                            only the room reaches)
#   WORKSHOP_GROUP           the OS group the hub puts the accounts it makes in, and the only
#                            existing accounts it lets log in (default workshop-learners)
#   WORKSHOP_HOMES           where the hub makes learners' homes (default /home)
#   WORKSHOP_MEM_LIMIT       memory per learner's server and kernels (default 1536M) and
#   WORKSHOP_CPU_LIMIT       CPUs per learner (default 1.0): enforced where systemd runs the
#                            machine (SystemdSpawner); docs/workshop.md says what happens where not
#   WORKSHOP_IDLE_TIMEOUT    seconds after which an idle server is stopped (default 3600)
#   WORKSHOP_BIND_URL        where the hub listens (default http://127.0.0.1:8000: put a TLS proxy
#                            such as Caddy or nginx in front, or give an https:// URL with
#                            c.JupyterHub.ssl_cert / ssl_key)
#   WORKSHOP_STATE           where the hub keeps its database, cookie secret and the learners'
#                            password hashes (default /srv/jupyterhub)
#
# tests/test_workshop.py loads this file and replaces only what a test cannot do as a real
# workshop does (fixed ports, homes and group of its own, a Python the test's learners can run).
# ruff: noqa: F821 (JupyterHub's config loader defines get_config)

import grp
import logging
import os
import pwd
import subprocess
import sys
from pathlib import Path

from firstuseauthenticator import FirstUseAuthenticator

c = get_config()  # type: ignore[name-defined]

COURSE = Path(__file__).resolve().parent.parent  # the instructor's checkout, with `make venv` run
VENV = COURSE / ".venv"
STATE = Path(os.environ.get("WORKSHOP_STATE", "/srv/jupyterhub"))
#: The folder the workshop link pulls the course into, in each learner's home
#: (labsupport.workshop.COURSE_FOLDER, whatever the repository is called).
COURSE_FOLDER = "async-llm-lab"
ADMIN = "instructor"
ADMIN_PASSWORD_LENGTH = 32
LEARNER_PASSWORD_LENGTH = 8
#: The OS group that marks the accounts this hub made: the only accounts it runs servers as.
GROUP = os.environ.get("WORKSHOP_GROUP", "workshop-learners")
HOMES = os.environ.get("WORKSHOP_HOMES", "/home")

log = logging.getLogger("JupyterHub")

# ------------------------------------------------------------------------------------ the hub

c.JupyterHub.bind_url = os.environ.get("WORKSHOP_BIND_URL", "http://127.0.0.1:8000")
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
# The proxy from npm, installed next to the course by `make node-tools`.
c.ConfigurableHTTPProxy.command = [
    str(COURSE / "node_modules" / ".bin" / "configurable-http-proxy")
]
# Stop every learner's server when the hub stops (the end of the workshop).
c.JupyterHub.cleanup_servers = True

# ----------------------------------------------------------------------------- who logs in


class WorkshopAuthenticator(FirstUseAuthenticator):  # type: ignore[misc]
    """FirstUseAuthenticator (a name's first login sets its password), with two additions: the
    instructor's password comes from the environment, set at every start (else the first login
    as "instructor", anyone's, would set it), and a name that is an OS account the hub did not
    make (root, daemon, ...) is refused at login, with a message that says so."""

    def __init__(self, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        password = os.environ.get("WORKSHOP_ADMIN_PASSWORD", "")
        if len(password) < ADMIN_PASSWORD_LENGTH:
            raise ValueError(
                f"WORKSHOP_ADMIN_PASSWORD must have at least {ADMIN_PASSWORD_LENGTH} characters"
            )
        self.reset_password(ADMIN, password)

    async def authenticate(self, handler, data):  # type: ignore[no-untyped-def]
        name = self.normalize_username(data["username"])
        if not self.validate_username(name):
            return None  # refused before FirstUseAuthenticator would store a password for it
        if account_exists(name) and not made_by_the_hub(name):
            # Checked before the password, so no password is ever stored for such a name.
            # FirstUseAuthenticator's login page shows this instead of "Invalid username".
            message = f"{name!r} is an account of this machine, not a workshop name"
            if handler is not None:
                handler.custom_login_error = message
            self.log.warning("Refused %r: %s", name, message)
            return None
        return await super().authenticate(handler, data)


c.JupyterHub.authenticator_class = WorkshopAuthenticator
c.Authenticator.admin_users = {ADMIN}
# Who may log in is FirstUseAuthenticator's decision: a name the hub has (the instructor added
# it) with its password, or, with open sign-up, any new name.
c.Authenticator.allow_all = True
c.FirstUseAuthenticator.create_users = os.environ.get("WORKSHOP_OPEN_SIGNUP", "") == "yes"
c.FirstUseAuthenticator.min_password_length = LEARNER_PASSWORD_LENGTH
c.FirstUseAuthenticator.dbm_path = str(STATE / "passwords.dbm")
# Names become OS accounts. JupyterHub lower-cases a name before it checks it, so "Ada" is "ada";
# ASCII letters only, so no look-alike ("аda" with a Cyrillic а) is another "ada"; \A and \Z,
# since $ would also match before a trailing newline.
c.Authenticator.username_pattern = r"\A[a-z][a-z0-9_-]{0,30}\Z"


def uid_min() -> int:
    """The lowest uid of an ordinary account here (UID_MIN in /etc/login.defs, else 1000):
    below it are root and the system's accounts (daemon, www-data, ...)."""
    try:
        lines = Path("/etc/login.defs").read_text(encoding="utf-8").splitlines()
    except OSError:
        return 1000
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and fields[0] == "UID_MIN" and fields[1].isdigit():
            return int(fields[1])
    return 1000


def made_by_the_hub(name: str) -> bool:
    """Whether the OS account `name` is one this hub made (a member of its group)."""
    try:
        return name in grp.getgrnam(GROUP).gr_mem
    except KeyError:
        return False  # no group yet: the hub has made no account


def account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# ------------------------------------------------------------------ each learner's server


def create_account(spawner):  # type: ignore[no-untyped-def]
    """Give a learner an OS account in the hub's group and a home only they can read, on first
    start (the hub runs as root); refuse any account the hub did not make, and root and the
    system's accounts whatever made them (defence in depth: the login check comes first)."""
    name = spawner.user.name
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["groupadd", "--force", GROUP], check=True)
        useradd = ["useradd", "--create-home", "--base-dir", HOMES, "--key", "HOME_MODE=0700"]
        subprocess.run([*useradd, "--groups", GROUP, "--shell", "/bin/bash", name], check=True)
        account = pwd.getpwnam(name)
    else:
        if not made_by_the_hub(name):
            raise RuntimeError(f"{name!r} is an OS account the workshop hub did not make")
    if account.pw_uid < uid_min():
        raise RuntimeError(f"{name!r} is a system account (uid {account.pw_uid}): refused")
    # Homes made before the hub asked for 0700 (useradd's default here is 0755).
    os.chmod(account.pw_dir, 0o700)


c.Spawner.pre_spawn_hook = create_account
c.Spawner.cmd = [str(VENV / "bin" / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
# No news or update checks from JupyterLab: nothing reaches out to the web.
c.Spawner.args = [
    "--LabApp.news_url=None",
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
]


def course_environment(spawner):  # type: ignore[no-untyped-def]
    """The pulled course's own labsupport goes first, so notebooks and package always match."""
    return str(Path(pwd.getpwnam(spawner.user.name).pw_dir) / COURSE_FOLDER)


c.Spawner.environment = {"PYTHONPATH": course_environment, "LAB_MODE": "offline"}

# ------------------------------------------------------------------ limits and idle servers

#: systemd's own test for "booted with systemd" (sd_booted): SystemdSpawner needs it as PID 1.
SYSTEMD = Path("/run/systemd/system").is_dir()
if SYSTEMD:
    # Each server (and every kernel and process it starts) in a systemd unit of its own, run as
    # the learner's account, with its memory and CPU capped: a runaway kernel hits its own
    # limit, not the room's.
    c.JupyterHub.spawner_class = "systemd"
    c.SystemdSpawner.mem_limit = os.environ.get("WORKSHOP_MEM_LIMIT", "1536M")
    c.SystemdSpawner.cpu_limit = float(os.environ.get("WORKSHOP_CPU_LIMIT", "1.0"))
    c.SystemdSpawner.isolate_tmp = True  # a /tmp of its own: no learner sees another's files
    c.SystemdSpawner.isolate_devices = True
    c.SystemdSpawner.disable_user_sudo = True
else:
    log.warning(
        "systemd is not running this machine: learners' servers run without memory or CPU "
        "limits (docs/workshop.md, 'Limits')"
    )

IDLE_TIMEOUT = int(os.environ.get("WORKSHOP_IDLE_TIMEOUT", "3600"))
c.JupyterHub.services = [
    {
        "name": "idle-culler",
        "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={IDLE_TIMEOUT}"],
    }
]
c.JupyterHub.load_roles = [
    {
        "name": "idle-culler",
        "services": ["idle-culler"],
        # What jupyterhub-idle-culler's documentation asks for, and no more.
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    }
]
