"""What every command shares: the error guard, the façade of ``-C``, JSON output, progress.

Heavy or slow imports (rich, the specs loader) happen inside the commands that need them,
so `modelsmith --help` and `validate` start fast and never import torch, dvc or mcp.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any

import click

from modelsmith.errors import EXIT_INTERNAL, ModelsmithError

if TYPE_CHECKING:
    from modelsmith.app import Modelsmith

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def step_options(command: Any) -> Any:
    """``--steps`` and ``--sft-steps``: the profile's step counts overridden for a run (and
    recorded in its config hash), for ``train`` and every iteration of ``iterate``."""
    command = click.option(
        "--sft-steps", type=click.IntRange(min=1), default=None,
        help="Override the profile's sft_steps (the warm start of sft+grpo).")(command)
    return click.option(
        "--steps", type=click.IntRange(min=1), default=None,
        help="Override the profile's max_steps (SFT steps for sft, GRPO steps otherwise); "
             "recorded in the config hash.")(command)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def console():
    """Rich output for stdout. Piped or captured (no terminal and no ``COLUMNS``), tables
    get all the width they need: a name cut to fit 80 columns is a wrong name."""
    import os
    import sys

    from rich.console import Console

    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(highlight=False, soft_wrap=False, width=1000 if piped else None)


def say(message: str) -> None:
    """Progress and notes for a person: stderr, so stdout stays free for --json."""
    click.echo(message, err=True)


def warn_open(host: str, token: str | None, variable: str, exposed: str) -> None:
    """A warning when a server listens beyond loopback with no token: anyone who reaches
    the port then gets ``exposed``."""
    if token is None and host not in ("127.0.0.1", "::1", "localhost"):
        say(f"warning: listening on {host} without a token: anyone who reaches this port "
            f"{exposed} (set {variable})")


def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the engine's errors into clear lines and an exit code, never a traceback: a
    :class:`~modelsmith.errors.ModelsmithError` prints its lines and exits with its code;
    anything else is an internal error."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:
            # `modelsmith log | head`: the reader left; nothing is wrong.
            sys.stderr.close()
            sys.exit(0)
        except ModelsmithError as exc:
            for line in exc.user_lines():
                click.echo(line, err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:
            if os.environ.get("MODELSMITH_DEBUG"):
                raise
            click.echo(
                f"internal error: {type(exc).__name__}: {exc}\n"
                "(set MODELSMITH_DEBUG=1 to see the traceback, and please report it)",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)

    return wrapper


def app(ctx: click.Context) -> Modelsmith:
    """The façade of the repository named by ``-C`` (closed when the command ends)."""
    from modelsmith.app import Modelsmith

    opened = Modelsmith.open(ctx.obj["repo"], fetch=ctx.obj.get("fetch", True), say=say)
    ctx.call_on_close(opened.close)
    return opened


class Progress:
    """A progress bar on stderr for long generation; quiet when stderr is not a terminal."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._bar = None

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        stderr = Console(stderr=True)
        self._bar = Bar("[progress.description]{task.description}", BarColumn(),
                             MofNCompleteColumn(), TimeRemainingColumn(), console=stderr,
                             transient=True, disable=not stderr.is_terminal)
        self._bar.start()
        self._task = self._bar.add_task(self.title, total=None)
        self._last_line = 0.0
        return self.update

    def update(self, done: int, total: int) -> None:
        self._bar.update(self._task, completed=done, total=total)
        if self._bar.disable and (time.monotonic() - self._last_line > 10 or done == total):
            self._last_line = time.monotonic()
            click.echo(f"{self.title}: {done}/{total}", err=True)

    def __exit__(self, *exc) -> None:
        self._bar.stop()


class TrainProgress:
    """One stderr line per training log: phase, step of total, the phase's main metric,
    seconds per step and the time left in that phase (stdout stays free for --json)."""

    def __init__(self) -> None:
        self._phase: str | None = None
        self._start = 0.0
        self._first_step = 0

    def __call__(self, log: dict) -> None:
        phase, step, total = log.get("phase"), int(log.get("step", 0)), log.get("total")
        if phase != self._phase:
            self._phase, self._start, self._first_step = phase, time.monotonic(), step
        if "train_runtime" in log:
            return
        done = step - self._first_step
        pace = (time.monotonic() - self._start) / done if done > 0 else None
        parts = [f"{phase} {step}/{total}" if total else f"{phase} {step}"]
        for key in ("loss", "reward", "reward_std", "kl", "entropy"):
            if key in log:
                parts.append(f"{key} {log[key]:.4f}")
        if pace is not None:
            parts.append(f"{pace:.1f} s/step")
            if total:
                parts.append(f"{duration(pace * max(0, int(total) - step))} left")
        click.echo("  " + " · ".join(parts), err=True)


def duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
