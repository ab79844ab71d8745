# JupyterHub for a workshop on ONE machine: every learner logs in with a name of their choice and
# the workshop's shared password, gets an OS account and a home of their own, and opens the
# workshop link (`python -m labsupport workshop-link HUB_URL`), which pulls the course into
# ~/async-llm-lab with nbgitpuller. Step by step: README.md, "Run a workshop".
#
#   sudo WORKSHOP_PASSWORD=... /opt/async-llm-lab/.venv/bin/jupyterhub \
#       -f /opt/async-llm-lab/deploy/jupyterhub_config.py
#
# Settings from the environment (all optional but the password):
#   WORKSHOP_PASSWORD        the learners' shared password (8 characters or more)
#   WORKSHOP_ADMIN_PASSWORD  the instructor's (admin) password, 32 characters or more (JupyterHub
#                            refuses a shorter one); the admin user is "instructor"
#   WORKSHOP_BIND_URL        where the hub listens (default http://127.0.0.1:8000: put a TLS proxy
#                            such as Caddy or nginx in front, or give an https:// URL with
#                            c.JupyterHub.ssl_cert / ssl_key)
#   WORKSHOP_STATE           where the hub keeps its database and cookie secret
#                            (default /srv/jupyterhub)
#
# tests/test_workshop.py loads this file and replaces only what a test cannot do as a real
# workshop does (OS accounts, passwords, fixed ports).
# ruff: noqa: F821 (JupyterHub's config loader defines get_config)

import os
import pwd
import subprocess
from pathlib import Path

c = get_config()  # type: ignore[name-defined]

COURSE = Path(__file__).resolve().parent.parent  # the instructor's checkout, with `make venv` run
VENV = COURSE / ".venv"
STATE = Path(os.environ.get("WORKSHOP_STATE", "/srv/jupyterhub"))
#: The folder the workshop link pulls the course into, in each learner's home
#: (labsupport.workshop.COURSE_FOLDER, whatever the repository is called).
COURSE_FOLDER = "async-llm-lab"

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

c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ.get("WORKSHOP_PASSWORD", "")
c.SharedPasswordAuthenticator.admin_password = os.environ.get("WORKSHOP_ADMIN_PASSWORD", "")
c.Authenticator.admin_users = {"instructor"}
c.Authenticator.allow_all = True  # any name, with the password
# Names become OS accounts: lower-case letters, digits, - and _ only.
c.Authenticator.username_pattern = r"^[a-z][a-z0-9_-]{0,30}$"

# ------------------------------------------------------------------ each learner's server


def create_account(spawner):  # type: ignore[no-untyped-def]
    """Give a learner an OS account and a home on first login (the hub runs as root)."""
    name = spawner.user.name
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)


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
    home = getattr(spawner, "home_dir", "") or pwd.getpwnam(spawner.user.name).pw_dir
    return str(Path(home) / COURSE_FOLDER)


c.Spawner.environment = {"PYTHONPATH": course_environment, "LAB_MODE": "offline"}
