"""`python -m labsupport COMMAND`: the course's command-line tools.

    python -m labsupport doctor        check this machine is ready for the course
    python -m labsupport check         run every notebook headless and report
    python -m labsupport fake-server   an OpenAI-compatible upstream on 127.0.0.1 (live-mode tests)
    python -m labsupport progress      your exercises so far, and what to do next
    python -m labsupport class-report  an instructor's view of the learners' progress files

`python -m labsupport COMMAND --help` describes each command's options.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from . import check_notebooks, doctor, progress
from .upstream import fake_server

COMMANDS: dict[str, tuple[Callable[[list[str]], int | None], str]] = {
    "doctor": (doctor.main, "check Python, packages, the Jupyter kernel, the mode and the network"),
    "check": (check_notebooks.main, "run every notebook headless and report which pass"),
    "fake-server": (fake_server.main, "serve an OpenAI-compatible fake upstream on 127.0.0.1"),
    "progress": (progress.progress_main, "your exercises: passed, not yet, and what to do next"),
    "class-report": (progress.class_report_main, "learners × exercises from their progress files"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a command; returns the process exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        listing = "\n".join(
            f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()
        )
        asked = bool(args) and args[0] in ("-h", "--help")
        usage = f"usage: python -m labsupport COMMAND [options]\n\ncommands:\n{listing}"
        print(usage, file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    command, _ = COMMANDS[args[0]]
    return command(args[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
