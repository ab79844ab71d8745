"""`python -m labsupport COMMAND`: the course's command-line tools.

    python -m labsupport doctor        check this machine is ready for the course
    python -m labsupport check         run every notebook headless and report
    python -m labsupport fake-server   an OpenAI-compatible upstream on 127.0.0.1 (live-mode tests)
    python -m labsupport progress      your exercises so far, and what to do next
    python -m labsupport class-report  an instructor's view of the learners' progress files
    python -m labsupport workshop-link one link that gives every learner on a JupyterHub the course

`python -m labsupport COMMAND --help` describes each command's options.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

#: command: ("module:function", summary). A command's module is imported only when it runs, so
#: `doctor` starts at once and reports missing packages instead of failing to import them.
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": (
        "instructor.doctor:main",
        "check Python, packages, the Jupyter kernel, the mode and the network",
    ),
    "check": ("instructor.check:main", "run every notebook headless and report which pass"),
    "fake-server": (
        "upstream.fake_server:main",
        "serve an OpenAI-compatible fake upstream on 127.0.0.1",
    ),
    "progress": (
        "progress:progress_main",
        "your exercises: passed, not yet, and what to do next",
    ),
    "class-report": (
        "progress:class_report_main",
        "learners × exercises from their progress files",
    ),
    "workshop-link": (
        "workshop:main",
        "the nbgitpuller link that puts the course in each learner's home on a JupyterHub",
    ),
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
    target, _ = COMMANDS[args[0]]
    module, function = target.split(":")
    command: Callable[[list[str]], int | None] = getattr(
        importlib.import_module(f".{module}", __package__), function
    )
    return command(args[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
