"""The console scripts `edgefleet` and `edgefleet-agent`.

Each imports its command line only when it runs, and when a package of an extra that is not
installed is missing (`pip install 'edgefleet[cli]'` where `edgefleet-agent` needs the `agent`
extra) it says which extra to install and exits with 2 instead of a traceback. A missing module
that no extra brings is a real bug and is raised as usual.

Standard library only, and outside the project's packages: it is the one place that names both
sides' entry points (the agent and the controller never import each other).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import NamedTuple

EXIT_NOT_INSTALLED = 2

_SERVER = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "amqtt",
    "argon2",
    "apscheduler",
    "jinja2",
    "prometheus_client",
    "pydantic_settings",
    "paho",
)
_RUNTIMES = {"ai_edge_litert": "litert", "onnxruntime": "onnx", "openvino": "openvino"}


class Script(NamedTuple):
    module: str
    function: str
    # top-level module of a third-party package -> the extra that installs it
    extras: Mapping[str, str]


SCRIPTS: dict[str, Script] = {
    "edgefleet": Script(
        "controller.cli.main",
        "main",
        {
            "httpx": "cli",
            "rich": "cli",
            **dict.fromkeys(_SERVER, "controller"),
            **dict.fromkeys(("numpy", "cv2", "skimage"), "controller,demo"),
            **_RUNTIMES,
        },
    ),
    "edgefleet-agent": Script(
        "agent.cli",
        "main",
        {**dict.fromkeys(("paho", "httpx", "numpy", "cv2"), "agent"), **_RUNTIMES},
    ),
}


def missing_extra(prog: str, exc: ModuleNotFoundError) -> str | None:
    """The extra that would bring the module `exc` misses, or None when no extra does."""
    top = (exc.name or "").split(".")[0]
    return SCRIPTS[prog].extras.get(top)


def run(prog: str) -> int:
    """Import and run `prog`'s command line; its exit code, or 2 when an extra is missing."""
    script = SCRIPTS[prog]
    try:
        entry: Callable[[], int | None] = getattr(
            importlib.import_module(script.module), script.function
        )
        return int(entry() or 0)
    except ModuleNotFoundError as exc:
        extra = missing_extra(prog, exc)
        if extra is None:
            raise
        print(
            f"{prog}: the {extra!r} extra is not installed (no module named {exc.name!r}); "
            f"install it with: pip install 'edgefleet[{extra}]'",
            file=sys.stderr,
        )
        return EXIT_NOT_INSTALLED


def edgefleet() -> int:
    """`edgefleet`: the operator's command line."""
    return run("edgefleet")


def edgefleet_agent() -> int:
    """`edgefleet-agent`: the device daemon and its tools."""
    return run("edgefleet-agent")
