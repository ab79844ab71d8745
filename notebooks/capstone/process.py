"""The capstone in its own process, as a deployment runs it (not a lesson of its own):

    cd notebooks && python -m capstone --audit-path audit.sqlite3 --port 8000

uvicorn serves it on 127.0.0.1 with the limits of `labsupport.serving.ServerLimits`; one flag
per `Settings` field (`--help`). A start-up failure exits with status 3 and the cause logged.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from labsupport.network import free_port
from labsupport.serving import ServerLimits

from .main import create_app
from .settings import Settings

NOTEBOOKS: Final = Path(__file__).resolve().parents[1]  # where `capstone` is importable from
_SETTINGS_VARIABLE: Final = "CAPSTONE_SETTINGS"  # how each worker process gets the settings


def app_from_environment() -> FastAPI:
    """`create_app()` with the settings `main()` left in the environment.

    What exists by then (the modules of FastAPI, pydantic and the SDK, the app) lives as long
    as the process, so it is frozen out of the garbage collector's sight (`gc.freeze()`): under
    load a full collection otherwise walks all of it again while every request waits.
    """
    app = create_app(Settings.model_validate_json(os.environ[_SETTINGS_VARIABLE]))
    gc.collect()  # what is garbage already is freed, not frozen for good
    gc.freeze()
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m capstone", description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="warning")
    fields = {**Settings.model_fields, **ServerLimits.model_fields}
    for name, field in fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, required=field.is_required(), help=field.description)
    given = {
        name: value for name, value in vars(parser.parse_args(argv)).items() if value is not None
    }
    try:
        settings = Settings.model_validate(
            {name: given[name] for name in Settings.model_fields if name in given}, strict=False
        )
        limits = ServerLimits.model_validate(
            {name: given[name] for name in ServerLimits.model_fields if name in given},
            strict=False,
        )
    except ValidationError as error:  # one line per bad flag, not a traceback
        problems = (f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in error.errors())
        parser.error("; ".join(problems))
    os.environ[_SETTINGS_VARIABLE] = settings.model_dump_json()
    uvicorn.run(
        "capstone.process:app_from_environment",
        factory=True,
        app_dir=str(NOTEBOOKS),
        host="127.0.0.1",
        port=given["port"],
        workers=given["workers"],
        log_level=given["log_level"],
        timeout_graceful_shutdown=10,
        **limits.uvicorn_options(),
    )


@contextmanager
def run_in_subprocess(
    *, audit_path: str | Path, base_url: str, workers: int = 1, **options: object
) -> Iterator[str]:
    """Run `main()` in a child process on a free loopback port; yield its URL.

    Leaving the block sends SIGTERM: the service finishes its requests, drains its audit log
    and exits. `options` are `main()`'s flags without the dashes (`max_upstream_calls=20`).
    A service that does not start raises `RuntimeError` with what it printed.
    """
    port = free_port()  # uvicorn binds it again in the child
    options = {"audit_path": audit_path, "base_url": base_url, **options}
    command = [sys.executable, "-m", "capstone", "--port", str(port), "--workers", str(workers)]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    with tempfile.TemporaryFile("w+") as output:
        # A session of its own: ■ in Jupyter sends SIGINT to the kernel's whole process group,
        # which would stop the service too and blame it ("exited (0)") for the interrupt.
        child = subprocess.Popen(
            command, stdout=output, stderr=output, text=True, cwd=NOTEBOOKS, start_new_session=True
        )
        try:
            for _ in range(600):  # up to 60 s to listen
                if child.poll() is not None:
                    output.seek(0)
                    raise RuntimeError(f"the service exited ({child.returncode}):\n{output.read()}")
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.1)
            else:
                raise RuntimeError("the service did not listen within 60 s")
            yield f"http://127.0.0.1:{port}"
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
            child.wait(timeout=60)
