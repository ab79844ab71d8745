"""The workshop: a real JupyterHub (deploy/jupyterhub_config.py) on 127.0.0.1 with real OS
accounts. The instructor adds three learners' names, each learner's first login sets their
password, each gets the course through its nbgitpuller link and runs notebook 01 through the
hub; then `labsupport class-report` over their homes. Then what a curious learner would try:
logging in as root, daemon or www-data, as another learner with a wrong password, with a name
differing only in case or by a Unicode look-alike, and reading another learner's home from a
kernel; and the instructor resetting a password. Everything the test starts or makes
(processes, OS accounts, their group, homes), it stops or removes.

The hub loads deploy/jupyterhub_config.py unchanged and overrides only what a test cannot do
as a workshop does: free ports, a state folder, homes and an OS group of its own (so the
accounts it makes have this run's names and nothing else's), and a service token to drive it.
Learners' servers run as their own accounts, so they need a Python every account may run: the
project's .venv where its interpreter is readable by all, else a copy of the lock installed by
uv on the system's Python (in build/, once per requirements.lock). The course comes from a
bare clone of this repository's HEAD, served by `git daemon` on loopback (git refuses a local
clone of a repository another account owns); the proxy is configurable-http-proxy from
node_modules/ (`make node-tools`).

This needs root (it makes OS accounts and runs servers as them), with the machine's uids: not
a user namespace mapping only root (`make test` runs pytest in a network namespace without
one when it is root).
"""

from __future__ import annotations

import asyncio
import grp
import hashlib
import html
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from labsupport.__main__ import main
from labsupport.network import free_port
from labsupport.workshop import COURSE_FOLDER, workshop_link

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_CONFIG = REPO_ROOT / "deploy" / "jupyterhub_config.py"
PROXY = REPO_ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
#: Where the learners' Python is installed when the project's .venv is not usable by them.
LEARNERS_VENV = REPO_ROOT / "build" / "workshop-venv"
#: This run's mark: in its learners' names and its OS group, so that nothing else's is touched.
RUN = secrets.token_hex(2)
#: Who runs what: two learners run the lesson (its exercise unsolved), one its solution.
LEARNERS = {
    f"alice-{RUN}": "notebooks/01_async_client.ipynb",
    f"bob-{RUN}": "notebooks/solutions/01_async_client.ipynb",
    f"cyd-{RUN}": "notebooks/01_async_client.ipynb",
}
ALICE, BOB, CYD = LEARNERS
INSTRUCTOR_PASSWORD = secrets.token_urlsafe(32)
CELL_SECONDS = 120


# ------------------------------------------------------------------------------ the link


def test_workshop_link_is_an_nbgitpuller_link_that_opens_the_first_notebook() -> None:
    link = workshop_link(
        "https://hub.example.org/", repository="https://github.com/o/async-llm-lab", branch="b"
    )
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "hub.example.org",
        "/hub/user-redirect/git-pull",
    )
    assert parse_qs(parts.query) == {
        "repo": ["https://github.com/o/async-llm-lab"],
        "branch": ["b"],
        "targetpath": ["async-llm-lab"],
        "urlpath": ["lab/tree/async-llm-lab/notebooks/00_start_here.ipynb"],
    }
    dotted = workshop_link("http://h:8000/prefix", repository="file:///srv/x.git", branch="main")
    assert dotted.startswith("http://h:8000/prefix/hub/user-redirect/git-pull?")
    # The course's folder, whatever the repository (or a fork) is called: deploy/ imports it.
    assert parse_qs(urlsplit(dotted).query)["targetpath"] == [COURSE_FOLDER]


@pytest.mark.parametrize("hub", ["hub.example.org", "ftp://hub", "https://hub/?a=1", ""])
def test_workshop_link_rejects_a_hub_url_that_is_not_one(hub: str) -> None:
    with pytest.raises(ValueError, match="HUB_URL must look like"):
        workshop_link(hub, repository="https://github.com/o/r", branch="main")


def test_workshop_link_command(capsys: pytest.CaptureFixture[str]) -> None:
    repository = "https://github.com/o/async-llm-lab"
    argv = ["workshop-link", "https://hub.example.org", "--repository", repository]
    assert main([*argv, "--branch", "main"]) == 0
    assert capsys.readouterr().out.strip() == workshop_link(
        "https://hub.example.org", repository=repository, branch="main"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["workshop-link", "not-a-url", "--repository", repository])
    assert exit_info.value.code == 2
    assert "HUB_URL must look like" in capsys.readouterr().err


# ------------------------------------------------------------------------------- the hub


def _machine_uids() -> bool:
    """Root with the machine's uids (not a user namespace that maps only root)."""
    if os.geteuid() != 0:
        return False
    first = Path("/proc/self/uid_map").read_text().split()
    return first[:2] == ["0", "0"] and int(first[2]) > 1


def _usable_by_everyone(path: Path) -> bool:
    real = path.resolve()
    return all(folder.stat().st_mode & 0o001 for folder in [real, *real.parents])


def _learners_python() -> Path:
    """A venv with the lock installed whose interpreter every account may run."""
    if _usable_by_everyone(Path(sys.executable)):
        return Path(sys.executable).parent.parent
    system_python = shutil.which("python3", path="/usr/local/bin:/usr/bin")
    assert system_python and _usable_by_everyone(Path(system_python)), "no system python3"
    uv = str(Path(sys.executable).parent / "uv")
    python, lock = LEARNERS_VENV / "bin" / "python", REPO_ROOT / "requirements.lock"
    commands = [
        [uv, "venv", "--quiet", "--python", system_python, str(LEARNERS_VENV)],
        # Compiled now, as `make venv` does: learners cannot write the venv's __pycache__, so
        # without it every server and kernel would compile what it imports, every time.
        # --offline: the tests run with only loopback (make check's network namespace); the
        # wheels come from uv's cache, which `make venv` filled from the same lock.
        [
            *(uv, "pip", "sync", "--quiet", "--offline", "--compile-bytecode"),
            *("--python", str(python), str(lock)),
        ],
    ]
    recipe = hashlib.sha256(lock.read_bytes() + repr(commands).encode()).hexdigest()
    stamp = LEARNERS_VENV / "recipe.sha256"
    if stamp.is_file() and stamp.read_text() == recipe:
        return LEARNERS_VENV
    shutil.rmtree(LEARNERS_VENV, ignore_errors=True)
    for command in commands:
        subprocess.run(command, check=True, timeout=600)
    stamp.write_text(recipe)
    return LEARNERS_VENV


@dataclass(frozen=True)
class Hub:
    url: str
    token: str
    homes: Path
    repository: str
    log: Path
    started: float
    group: str

    def api(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"token {token or self.token}"}
        response = httpx.request(
            method, f"{self.url}/hub/api{path}", headers=headers, timeout=30, **kwargs
        )
        assert response.status_code < 300, (response.status_code, response.text)
        return response.json() if response.content else None

    def browser(self) -> httpx.Client:
        """A browser's cookie jar on the hub."""
        return httpx.Client(base_url=self.url, timeout=60)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    if not _machine_uids():
        pytest.skip("the workshop hub makes OS accounts and runs servers as them: run as root")
    assert PROXY.exists(), f"{PROXY} is missing: run `make node-tools` (npm ci)"
    started = time.perf_counter()
    python = _learners_python()
    state = tmp_path_factory.mktemp("workshop")
    # Learners' homes: a folder every account may pass through (0711), not list.
    shared = Path(tempfile.mkdtemp(prefix="workshop-"))
    shared.chmod(0o711)
    homes, remotes = shared / "homes", shared / "remotes"
    homes.mkdir(mode=0o711)
    # The course as learners get it: the committed repository, served on loopback.
    subprocess.run(
        ["git", "clone", "--quiet", "--bare", str(REPO_ROOT), str(remotes / "async-llm-lab.git")],
        check=True,
        timeout=120,
    )
    git_port = free_port()
    daemon = ["git", "daemon", "--export-all", "--reuseaddr", f"--base-path={remotes}"]
    git_daemon = subprocess.Popen(
        [*daemon, "--listen=127.0.0.1", f"--port={git_port}", str(remotes)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port, token, group = free_port(), secrets.token_hex(16), f"workshop-{RUN}"
    config = state / "jupyterhub_config.py"
    config.write_text(
        f"""
c = get_config()
load_subconfig({str(DEPLOY_CONFIG)!r})
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_port = {free_port()}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.ConfigurableHTTPProxy.command = [{str(PROXY)!r}]
c.Spawner.cmd = [{str(python / "bin" / "jupyterhub-singleuser")!r}]
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.JupyterHub.services.append({{"name": "workshop-test", "api_token": {token!r}}})
c.JupyterHub.load_roles.append({{
    "name": "workshop-test",
    "services": ["workshop-test"],
    "scopes": ["admin:users", "admin:servers", "tokens", "access:servers", "list:users",
               "list:services", "read:services"],
}})
""",
        encoding="utf-8",
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LAB_", "JUPYTER", "OPENAI_", "WORKSHOP_")) and key != "MPLBACKEND"
    }
    env |= {
        "WORKSHOP_STATE": str(state),
        "WORKSHOP_ADMIN_PASSWORD": INSTRUCTOR_PASSWORD,
        "WORKSHOP_GROUP": group,
        "WORKSHOP_HOMES": str(homes),
    }
    log = state / "jupyterhub.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "jupyterhub"), "-f", str(config)],
            cwd=state,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    repository = f"git://127.0.0.1:{git_port}/async-llm-lab.git"
    hub = Hub(f"http://127.0.0.1:{port}", token, homes, repository, log, started, group)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{hub.url}/hub/api/", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "JupyterHub did not start within 90 s"
            time.sleep(0.5)
        yield hub
    finally:
        # The hub, its proxy, its culler and the learners' servers (and their kernels).
        family = _children(process)
        process.terminate()  # the hub stops the learners' servers and its proxy on the way out
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        git_daemon.terminate()
        git_daemon.wait(timeout=20)
        _, alive = psutil.wait_procs([p for p in family if _running(p)], timeout=20)
        for leftover in alive:
            leftover.kill()
        _remove_accounts(group)
        shutil.rmtree(shared)
        assert not alive, f"still running after the hub stopped: {alive}"


def _remove_accounts(group: str) -> None:
    """The OS accounts the hub made in this run's group, their homes, and the group."""
    try:
        members = grp.getgrnam(group).gr_mem
    except KeyError:
        return
    for name in members:
        subprocess.run(["userdel", "--remove", name], check=True, capture_output=True)
    subprocess.run(["groupdel", group], check=True)


def _children(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = psutil.Process(process.pid).children(recursive=True)
        return children
    except psutil.NoSuchProcess:
        return []


def _running(process: psutil.Process) -> bool:
    running: bool = process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return running


# ------------------------------------------------------------------------- who logs in


def _answer(response: httpx.Response) -> str:
    """What the hub answered a form, in words: a redirect into the hub, or its message."""
    if response.status_code in (302, 303):
        return f"{response.status_code} → {urlsplit(response.headers['location']).path}"
    found = re.search(r'class="login_error">(.*?)</p>', response.text, re.DOTALL)
    message = html.unescape(" ".join(found.group(1).split())) if found else "(no message)"
    return f"{response.status_code}: {message}"


def _post(browser: httpx.Client, path: str, **form: str) -> httpx.Response:
    """Send a form of the hub's, with the XSRF token a browser has from the hub's pages."""
    if "_xsrf" not in browser.cookies:
        browser.get("/hub/login")
    return browser.post(path, data={**form, "_xsrf": browser.cookies["_xsrf"]})


def _log_in(browser: httpx.Client, name: str, password: str) -> str:
    return _answer(_post(browser, "/hub/login", username=name, password=password))


def _try_login(hub: Hub, name: str, password: str) -> str:
    with hub.browser() as browser:
        return _log_in(browser, name, password)


def _add_users(hub: Hub, *names: str) -> None:
    """The instructor's "Add users" in the admin panel (which makes this call)."""
    hub.api("POST", "/users", json={"usernames": list(names)})


@dataclass(frozen=True)
class Learner:
    name: str
    password: str
    browser: httpx.Client


@pytest.fixture(scope="module")
def learners(hub: Hub) -> Iterator[dict[str, Learner]]:
    """The three learners: added by the instructor, each logged in once (which set their
    password), their browsers still logged in."""
    for name in LEARNERS:
        assert _try_login(hub, name, "a-password-123") == "403: Invalid username or password"
    _add_users(hub, *LEARNERS)
    logged_in = {}
    try:
        for name in LEARNERS:
            password, browser = secrets.token_urlsafe(12), hub.browser()
            logged_in[name] = Learner(name, password, browser)
            assert _log_in(browser, name, password) == "302 → /hub/spawn"
        yield logged_in
    finally:
        for learner in logged_in.values():
            learner.browser.close()


def _start_server(hub: Hub, user: str) -> None:
    hub.api("POST", f"/users/{user}/server")
    deadline = time.monotonic() + 120
    while not (hub.api("GET", f"/users/{user}")["servers"].get("", {}).get("ready")):
        assert time.monotonic() < deadline, f"{user}'s server did not start:\n{hub.log.read_text()}"
        time.sleep(0.5)


def _token(hub: Hub, user: str) -> str:
    token: str = hub.api(
        "POST",
        f"/users/{user}/tokens",
        json={
            "note": "workshop test",
            "expires_in": 3600,
            "scopes": [f"access:servers!user={user}", f"read:users!user={user}"],
        },
    )["token"]
    return token


def _pull_through_the_link(hub: Hub, learner: Learner, token: str) -> None:
    """What a learner's browser does with the workshop link: the hub sends it to the learner's
    server, whose nbgitpuller page then calls its pull API (the page's script does that)."""
    user = learner.name
    link = workshop_link(hub.url, repository=hub.repository, branch="main")
    # The link, in the learner's logged-in browser: hub → learner's server (its OAuth round
    # trip to the hub) → nbgitpuller's page.
    page = learner.browser.get(link, follow_redirects=True)
    assert page.status_code == 200, page.text
    assert urlsplit(str(page.url)).path == f"/user/{user}/git-pull"
    assert "nbgitpuller" in page.text
    query = parse_qs(urlsplit(link).query)
    api = {key: query[key][0] for key in ("repo", "branch", "targetpath")}
    events = []
    headers = {"Authorization": f"token {token}"}
    pull = f"{hub.url}/user/{user}/git-pull/api"
    with (
        httpx.Client(headers=headers, timeout=60) as client,
        client.stream("GET", pull, params=api) as stream,
    ):
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    assert events and events[-1]["phase"] == "finished", events


# ------------------------------------------------------------------------ in a kernel


@dataclass(frozen=True)
class Footprint:
    """What one account's processes hold (its JupyterLab server and its kernels)."""

    processes: int
    rss: int  # bytes resident now
    pss: int  # resident, shared pages split between the processes that share them
    peak_rss: int  # the most each process held at once, summed (an upper bound)
    cpu_seconds: float


def _footprint(uid: int) -> Footprint:
    processes = [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]
    rss = pss = peak = 0
    cpu = 0.0
    for process in processes:
        with process.oneshot():
            memory = process.memory_full_info()
            times = process.cpu_times()
        rss, pss, cpu = rss + memory.rss, pss + memory.pss, cpu + times.user + times.system
        status = Path(f"/proc/{process.pid}/status").read_text()
        found = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
        peak += int(found.group(1)) * 1024 if found else memory.rss
    return Footprint(len(processes), rss, pss, peak, cpu)


async def _run_cells(
    hub: Hub, user: str, token: str, path: str, cells: list[str]
) -> tuple[list[list[str]], Footprint]:
    """Run `cells` one by one in a new kernel of the learner's server, through the hub's proxy
    (REST for the session, the kernel's websocket for the cells). Returns each cell's errors
    ("Name: value"), and what the learner's processes held with that kernel still running."""
    headers = {"Authorization": f"token {token}"}
    base = f"{hub.url}/user/{user}/api"
    async with httpx.AsyncClient(headers=headers, timeout=60) as client:
        session = await client.post(
            f"{base}/sessions",
            json={"path": path, "type": "notebook", "name": "", "kernel": {"name": "python3"}},
        )
        assert session.status_code == 201, session.text
        session_id, kernel = session.json()["id"], session.json()["kernel"]["id"]
        channels = await websocket_connect(
            HTTPRequest(
                f"{base.replace('http', 'ws', 1)}/kernels/{kernel}/channels", headers=headers
            )
        )
        errors = []
        try:
            for source in cells:
                outputs = await asyncio.wait_for(_execute(channels, source), timeout=CELL_SECONDS)
                errors.append([f"{output['ename']}: {output['evalue']}" for output in outputs])
            footprint = _footprint(pwd.getpwnam(user).pw_uid)
        finally:
            channels.close()
            await client.delete(f"{base}/sessions/{session_id}")
    return errors, footprint


async def _run_notebook(hub: Hub, user: str, token: str, path: str) -> tuple[list[str], Footprint]:
    """Run every code cell of the notebook `path` as `_run_cells` does; returns the errors of
    cells not tagged raises-exception, and the learner's footprint at the end."""
    async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as client:
        contents = await client.get(f"{hub.url}/user/{user}/api/contents/{path}", timeout=60)
    indexed = [
        (index, cell)
        for index, cell in enumerate(contents.json()["content"]["cells"])
        if cell["cell_type"] == "code" and cell["source"].strip()
    ]
    errors, footprint = await _run_cells(hub, user, token, path, [c["source"] for _, c in indexed])
    found = [
        f"cell {index}: {error}"
        for (index, cell), cell_errors in zip(indexed, errors, strict=True)
        if "raises-exception" not in cell["metadata"].get("tags", [])
        for error in cell_errors
    ]
    return found, footprint


async def _execute(channels: Any, code: str) -> list[dict[str, Any]]:
    msg_id = uuid.uuid4().hex
    await channels.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "workshop-test",
                    "session": uuid.uuid4().hex,
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "channel": "shell",
                "content": {"code": code, "silent": False, "store_history": True},
                "buffers": [],
            }
        )
    )
    outputs = []
    while True:
        raw = await channels.read_message()
        assert raw is not None, "the kernel's websocket closed"
        if isinstance(raw, bytes):
            continue  # a message with binary buffers (the explorer's image widget), not a reply
        message = json.loads(raw)
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = message["header"]["msg_type"]
        if message["channel"] == "iopub" and kind == "error":
            outputs.append({"msg_type": kind, **message["content"]})
        if (
            message["channel"] == "iopub"
            and kind == "status"
            and message["content"]["execution_state"] == "idle"
        ):
            return outputs


# ------------------------------------------------------------------------------ the tests

MiB = 1024 * 1024


@pytest.mark.slow
@pytest.mark.needs("node-tools")
@pytest.mark.timeout(900)
def test_three_learners_pull_the_course_and_run_notebook_01_through_the_hub(
    hub: Hub, learners: dict[str, Learner], capsys: pytest.CaptureFixture[str]
) -> None:
    footprints = {}
    for user, notebook in LEARNERS.items():
        token = _token(hub, user)
        _start_server(hub, user)
        # The hub made the learner's account, in its group, with a home only they can enter.
        account = pwd.getpwnam(user)
        home = Path(account.pw_dir)
        assert user in grp.getgrnam(hub.group).gr_mem
        assert account.pw_uid >= 1000 and home.parent == hub.homes
        assert (home.stat().st_uid, home.stat().st_mode & 0o777) == (account.pw_uid, 0o700)
        _pull_through_the_link(hub, learners[user], token)
        course = home / COURSE_FOLDER
        assert (course / "notebooks" / "00_start_here.ipynb").is_file()
        assert course.stat().st_uid == account.pw_uid  # the pulled course is the learner's
        errors, footprints[user] = asyncio.run(
            _run_notebook(hub, user, token, f"{COURSE_FOLDER}/{notebook}")
        )
        assert not errors, f"{user}, {notebook}:\n" + "\n".join(errors)
        hub.api("DELETE", f"/users/{user}/server")

    # Every learner's check was recorded in their own home, under their hub name, and their
    # `labsupport progress` sends them on: back to 01, or to 02 once 01 passed.
    capsys.readouterr()
    for user, notebook in LEARNERS.items():
        progress = hub.homes / user / ".async-llm-lab" / "progress.jsonl"
        lines = progress.read_text().splitlines()
        assert [json.loads(line)["user"] for line in lines] == [user]
        assert main(["progress", "--file", str(progress)]) == 0
        table = capsys.readouterr().out
        if "solutions" in notebook:
            assert "Next: open notebooks/02_gather.ipynb" in table, table
        else:
            assert "Next: back to notebooks/01_async_client.ipynb" in table, table

    assert main(["class-report", str(hub.homes)]) == 0
    report = capsys.readouterr().out
    rows = {line.split()[0]: line for line in report.splitlines()[2:6] if line.strip()}
    assert "passed/1" in rows[BOB]
    assert "not yet/1" in rows[ALICE] and "not yet/1" in rows[CYD]
    assert "Class report: 3 learners, 3 checks" in report
    assert "2 failed tries" in report
    hub_memory = sum(p.memory_full_info().pss for p in [_hub_process(hub), *_hub_family(hub)])
    with capsys.disabled():
        print(f"\nworkshop: 3 learners in {time.perf_counter() - hub.started:.0f} s\n{report}")
        print(f"hub + proxy + idle culler: {hub_memory / MiB:.0f} MiB (PSS)")
        print("learner: processes, RSS, PSS, peak RSS (summed), CPU s, with notebook 01 run")
        for user, footprint in footprints.items():
            print(
                f"  {user}: {footprint.processes}, {footprint.rss / MiB:.0f} MiB, "
                f"{footprint.pss / MiB:.0f} MiB, {footprint.peak_rss / MiB:.0f} MiB, "
                f"{footprint.cpu_seconds:.1f}"
            )


def _hub_process(hub: Hub) -> psutil.Process:
    (process,) = [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and str(hub.log.parent / "jupyterhub_config.py") in p.info["cmdline"]
    ]
    return process


def _hub_family(hub: Hub) -> list[psutil.Process]:
    return [p for p in _hub_process(hub).children(recursive=True) if p.uids().real == 0]


@pytest.mark.slow
@pytest.mark.needs("node-tools")
def test_what_a_curious_learner_tries_is_refused(
    hub: Hub, learners: dict[str, Learner], capsys: pytest.CaptureFixture[str]
) -> None:
    alice = learners[ALICE]
    invalid = "403: Invalid username or password"
    attempts: list[tuple[str, str, str]] = []

    def attempt(what: str, answer: str, expected: str) -> None:
        attempts.append((what, answer, expected))

    attempt(
        "log in as `instructor`, a learner's password",
        _try_login(hub, "instructor", alice.password),
        invalid,
    )
    system_accounts = ("root", "daemon", "www-data")
    for name in system_accounts:
        attempt(
            f"log in as `{name}`",
            _try_login(hub, name, "a-password-123"),
            f"403: '{name}' is an account of this machine, not a workshop name",
        )
    # Even had the instructor added those names by mistake, they never log in.
    _add_users(hub, *system_accounts)
    for name in system_accounts:
        attempt(
            f"log in as `{name}`, a name the instructor added",
            _try_login(hub, name, "a-password-123"),
            f"403: '{name}' is an account of this machine, not a workshop name",
        )
    # Defence in depth: a server for `daemon` started through the API, with no login at all.
    started = httpx.post(
        f"{hub.url}/hub/api/users/daemon/server",
        headers={"Authorization": f"token {hub.token}"},
        timeout=60,
    )
    # The API answers 500 with no detail; the hub's log says why.
    (why,) = re.findall(
        r"\] (Unhandled error starting daemon's server: .*)$", hub.log.read_text(), re.MULTILINE
    )
    attempt(
        "start a server for `daemon` through the admin API",
        f"{started.status_code}; the hub's log: {why}",
        "500; the hub's log: Unhandled error starting daemon's server: "
        "'daemon' is an OS account the workshop hub did not make",
    )
    attempt(f"log in as `{ALICE}`, a wrong password", _try_login(hub, ALICE, "wrong-1234"), invalid)
    upper = ALICE.capitalize()
    attempt(f"log in as `{upper}`, another password", _try_login(hub, upper, "squat-1234"), invalid)
    for lookalike, letter in (
        (f"\u0430{ALICE[1:]}", "Cyrillic а"),
        (f"\uff41{ALICE[1:]}", "fullwidth ａ"),
        (f"al\u0131ce-{RUN}", "dotless ı"),
    ):
        attempt(
            f"log in as `{lookalike}` ({letter}), alice's password",
            _try_login(hub, lookalike, alice.password),
            invalid,
        )
    attempt(
        "log in as `instructor`, WORKSHOP_ADMIN_PASSWORD",
        _try_login(hub, "instructor", INSTRUCTOR_PASSWORD),
        "302 → /hub/spawn",
    )
    # The same name in another case is the same learner: with alice's password, alice.
    attempt(
        f"log in as `{upper}`, alice's password",
        _try_login(hub, upper, alice.password),
        "302 → /hub/spawn",
    )

    with capsys.disabled():
        print("\n| attempt | what the hub answered |\n| --- | --- |")
        for what, answer, _ in attempts:
            print(f"| {what} | {answer} |")
    assert [(what, answer) for what, answer, _ in attempts] == [
        (what, expected) for what, _, expected in attempts
    ]
    # No refused name got a server, nor an OS account from the hub.
    for name in system_accounts:
        assert not hub.api("GET", f"/users/{name}")["servers"]
    assert set(grp.getgrnam(hub.group).gr_mem) <= set(LEARNERS)


@pytest.mark.slow
@pytest.mark.needs("node-tools")
def test_a_learners_kernel_cannot_read_another_learners_home(
    hub: Hub, learners: dict[str, Learner]
) -> None:
    token = _token(hub, CYD)
    _start_server(hub, CYD)
    alice_home = Path(pwd.getpwnam(ALICE).pw_dir)
    probes = [
        "import getpass, os, pathlib",
        f"assert getpass.getuser() == {CYD!r} and os.getuid() >= 1000",
        "os.listdir(pathlib.Path.home())",  # their own home: fine
        f"os.listdir({str(alice_home)!r})",
        f"os.listdir({str(alice_home / COURSE_FOLDER)!r})",
        f"open({str(alice_home / '.async-llm-lab' / 'progress.jsonl')!r}).read()",
    ]
    try:
        errors, _ = asyncio.run(
            _run_cells(hub, CYD, token, f"{COURSE_FOLDER}/notebooks/00_start_here.ipynb", probes)
        )
        # Nor through the hub: cyd's browser on alice's server.
        other = learners[CYD].browser.get(f"/user/{ALICE}/api/contents")
    finally:
        hub.api("DELETE", f"/users/{CYD}/server")
    assert errors[:3] == [[], [], []], errors
    denied = [
        f"PermissionError: [Errno 13] Permission denied: '{path}'"
        for path in (
            alice_home,
            alice_home / COURSE_FOLDER,
            alice_home / ".async-llm-lab" / "progress.jsonl",
        )
    ]
    assert errors[3:] == [[message] for message in denied], errors
    assert other.status_code in (302, 403, 404), other.status_code
    assert "content" not in other.text


@pytest.mark.slow
@pytest.mark.needs("node-tools")
def test_the_instructor_resets_a_learners_password(hub: Hub, learners: dict[str, Learner]) -> None:
    bob, new_password = learners[BOB], secrets.token_urlsafe(12)
    home = Path(pwd.getpwnam(BOB).pw_dir)
    # The admin panel's "Delete user" (FirstUseAuthenticator forgets the password with it)
    # and "Add users" again: the learner's next login sets the new password.
    hub.api("DELETE", f"/users/{BOB}")
    _add_users(hub, BOB)
    assert _try_login(hub, BOB, new_password) == "302 → /hub/spawn"
    assert _try_login(hub, BOB, bob.password) == "403: Invalid username or password"
    assert _try_login(hub, BOB, new_password) == "302 → /hub/spawn"
    # Same name, same OS account: bob's work is still there, still bob's alone.
    assert (home / COURSE_FOLDER / "notebooks").is_dir()
    assert pwd.getpwnam(BOB).pw_dir == str(home) and home.stat().st_mode & 0o777 == 0o700


@pytest.mark.slow
@pytest.mark.needs("node-tools")
def test_idle_servers_are_culled_by_a_hub_service(hub: Hub) -> None:
    services = {service["name"]: service for service in hub.api("GET", "/services").values()}
    assert services["idle-culler"]["command"][1:3] == ["-m", "jupyterhub_idle_culler"]
    culler = [p for p in _hub_family(hub) if "jupyterhub_idle_culler" in " ".join(p.cmdline())]
    assert len(culler) == 1 and culler[0].status() != psutil.STATUS_ZOMBIE
