"""The workshop: a real JupyterHub (deploy/jupyterhub_config.py) on 127.0.0.1, three learners,
each getting the course through its nbgitpuller link and running notebook 01 through the hub;
then `labsupport class-report` over their homes. Everything the test starts, it stops.

The hub loads deploy/jupyterhub_config.py unchanged and overrides only what a test cannot do
as a workshop does: a dummy authenticator instead of the shared password, one OS user for all
(JupyterHub's SimpleLocalProcessSpawner, homes in a temporary folder) instead of OS accounts,
free ports, and a service token to drive it. The course comes from a bare clone of this
repository's HEAD in the temporary folder, so nothing leaves the machine; the proxy is
configurable-http-proxy from node_modules/ (`make node-tools`).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
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
from labsupport.workshop import COURSE_FOLDER, workshop_link

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_CONFIG = REPO_ROOT / "deploy" / "jupyterhub_config.py"
PROXY = REPO_ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
#: Who runs what: two learners run the lesson (its exercise unsolved), one its solution.
LEARNERS = {
    "alice": "notebooks/01_async_client.ipynb",
    "bob": "notebooks/solutions/01_async_client.ipynb",
    "cyd": "notebooks/01_async_client.ipynb",
}
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Hub:
    url: str
    token: str
    homes: Path
    repository: str
    log: Path
    started: float

    def api(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"token {token or self.token}"}
        response = httpx.request(
            method, f"{self.url}/hub/api{path}", headers=headers, timeout=30, **kwargs
        )
        assert response.status_code < 300, (response.status_code, response.text)
        return response.json() if response.content else None


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    assert PROXY.exists(), f"{PROXY} is missing: run `make node-tools` (npm ci)"
    started = time.perf_counter()
    root = tmp_path_factory.mktemp("workshop")
    homes, state = root / "homes", root / "state"
    homes.mkdir()
    state.mkdir()
    # The course as learners get it: the committed repository, cloned from a local "remote".
    remote = root / "remote" / "async-llm-lab.git"
    subprocess.run(
        ["git", "clone", "--quiet", "--bare", str(REPO_ROOT), str(remote)],
        check=True,
        timeout=120,
    )
    port, token = _free_port(), secrets.token_hex(16)
    config = root / "jupyterhub_config.py"
    config.write_text(
        f"""
c = get_config()
load_subconfig({str(DEPLOY_CONFIG)!r})
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_port = {_free_port()}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{_free_port()}"
c.ConfigurableHTTPProxy.command = [{str(PROXY)!r}]
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {str(homes)!r} + "/{{username}}"
c.Spawner.pre_spawn_hook = None
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.args = [*c.Spawner.args, *{["--allow-root"] if os.geteuid() == 0 else []!r}]
c.JupyterHub.services = [{{"name": "workshop-test", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{
    "name": "workshop-test",
    "services": ["workshop-test"],
    "scopes": ["admin:users", "admin:servers", "tokens", "access:servers", "list:users"],
}}]
""",
        encoding="utf-8",
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LAB_", "JUPYTER", "OPENAI_")) and key != "MPLBACKEND"
    }
    env["WORKSHOP_STATE"] = str(state)
    log = root / "jupyterhub.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "jupyterhub"), "-f", str(config)],
            cwd=state,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    hub = Hub(f"http://127.0.0.1:{port}", token, homes, f"file://{remote}", log, started)
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
        # The hub, its proxy and the learners' servers (and their kernels).
        family = _children(process)
        process.terminate()  # the hub stops the learners' servers and its proxy on the way out
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _, alive = psutil.wait_procs([p for p in family if _running(p)], timeout=20)
        for leftover in alive:
            leftover.kill()
        assert not alive, f"still running after the hub stopped: {alive}"


def _children(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return children


def _running(process: psutil.Process) -> bool:
    running: bool = process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return running


def _start_server(hub: Hub, user: str) -> None:
    hub.api("POST", f"/users/{user}/server")
    deadline = time.monotonic() + 120
    while not (hub.api("GET", f"/users/{user}")["servers"].get("", {}).get("ready")):
        assert time.monotonic() < deadline, f"{user}'s server did not start:\n{hub.log.read_text()}"
        time.sleep(0.5)


def _pull_through_the_link(hub: Hub, user: str, token: str) -> None:
    """What a learner's browser does with the workshop link: the hub sends it to the learner's
    server, whose nbgitpuller page then calls its pull API (the page's script does that)."""
    link = workshop_link(hub.url, repository=hub.repository, branch="main")
    with httpx.Client(timeout=60, follow_redirects=True) as browser:
        # Log in as the learner (the dummy authenticator takes any password), with the login
        # form's XSRF token, as a browser does; then open the link: hub → learner's server
        # (its OAuth round trip to the hub) → nbgitpuller's page.
        browser.get(f"{hub.url}/hub/login")
        login = browser.post(
            f"{hub.url}/hub/login",
            data={"username": user, "password": "any", "_xsrf": browser.cookies["_xsrf"]},
        )
        assert login.status_code == 200, login.text
        page = browser.get(link)
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


async def _run_notebook(hub: Hub, user: str, token: str, path: str) -> list[str]:
    """Run every code cell of `path` in a kernel of the learner's server, through the hub's
    proxy (REST for the session, the kernel's websocket for the cells); returns the errors of
    cells not tagged raises-exception."""
    headers = {"Authorization": f"token {token}"}
    base = f"{hub.url}/user/{user}/api"
    async with httpx.AsyncClient(headers=headers, timeout=60) as client:
        notebook = (await client.get(f"{base}/contents/{path}")).json()["content"]
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
            for index, cell in enumerate(notebook["cells"]):
                if cell["cell_type"] != "code" or not cell["source"].strip():
                    continue
                outputs = await asyncio.wait_for(
                    _execute(channels, cell["source"]), timeout=CELL_SECONDS
                )
                if "raises-exception" in cell["metadata"].get("tags", []):
                    continue
                errors += [
                    f"cell {index}: {output['ename']}: {output['evalue']}"
                    for output in outputs
                    if output["msg_type"] == "error"
                ]
        finally:
            channels.close()
            await client.delete(f"{base}/sessions/{session_id}")
    return errors


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


@pytest.mark.slow
@pytest.mark.needs("node-tools")
@pytest.mark.timeout(900)
def test_three_learners_pull_the_course_and_run_notebook_01_through_the_hub(
    hub: Hub, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.api("POST", "/users", json={"usernames": sorted(LEARNERS)})
    for user, notebook in LEARNERS.items():
        token = hub.api(
            "POST",
            f"/users/{user}/tokens",
            json={
                "note": "workshop test",
                "expires_in": 3600,
                "scopes": [
                    f"access:servers!user={user}",
                    f"read:users!user={user}",
                ],
            },
        )["token"]
        _start_server(hub, user)
        _pull_through_the_link(hub, user, token)
        course = hub.homes / user / "async-llm-lab"
        assert (course / "notebooks" / "00_start_here.ipynb").is_file()
        errors = asyncio.run(_run_notebook(hub, user, token, f"async-llm-lab/{notebook}"))
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
    assert "passed/1" in rows["bob"]
    assert "not yet/1" in rows["alice"] and "not yet/1" in rows["cyd"]
    assert "Class report: 3 learners, 3 checks" in report
    assert "2 failed tries" in report
    with capsys.disabled():
        print(f"\nworkshop: 3 learners in {time.perf_counter() - hub.started:.0f} s\n{report}")
