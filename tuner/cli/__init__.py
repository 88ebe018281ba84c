"""`tuner <verb>`: argument parsing and dispatch only; the work lives in the library modules.

Each verb is an `add_<verb>(sub)` function in the module of its family (data.py: data, mine; train.py: train,
config; evaluation.py: eval, instruct, calibrate; models.py: tiny-model, score, rerank, export, serve) and one entry in
`COMMANDS`; a verb raises `UserError` (or DataError/ValueError/FileNotFoundError) for a user's mistake, which
`main` prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tuner.cli.common import UserError
from tuner.cli.data import add_data, add_mine
from tuner.cli.evaluation import add_calibrate, add_eval, add_instruct
from tuner.cli.models import (
    add_export,
    add_merge,
    add_rerank,
    add_score,
    add_serve,
    add_tiny_model,
    read_documents,
)
from tuner.cli.train import add_config, add_train

__all__ = ["COMMANDS", "UserError", "build_parser", "main", "read_documents"]

# Each verb registers its parser here; the issue that adds a verb adds one line.
COMMANDS: list[Callable] = [
    add_tiny_model,
    add_score,
    add_rerank,
    add_data,
    add_mine,
    add_train,
    add_config,
    add_eval,
    add_instruct,
    add_calibrate,
    add_export,
    add_merge,
    add_serve,
]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error, like every other user error of the CLI (argparse prints the whole usage
    block first: for `tuner eval`, twenty lines above the one that says what was wrong). Subparsers are built with
    this class too (argparse's `parser_class` default is the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tuner", description="Domain-adapt Qwen3-Reranker with LoRA.")
    parser.add_argument(
        "--version", action=_Version, help="print tuner's and its libraries' versions (for a bug report)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


class _Version(argparse.Action):
    """`--version` on one line (argparse's own action wraps it to the terminal's width); computed only when asked."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit(0)


def version_line() -> str:
    """`tuner --version`: tuner's version and those of the libraries its numbers depend on, read from the installed
    packages' metadata (importing torch to ask it would take seconds)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from tuner import __version__

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} not installed"

    names = ("torch", "transformers", "peft", "trl", "sentence-transformers", "bitsandbytes")
    libraries = ", ".join(map(installed, names))
    return f"tuner {__version__} ({libraries}; Python {platform.python_version()})"


def main(argv: list[str] | None = None) -> int:
    """Run one verb; return its exit code: 0, 2 for a user's mistake (one line on stderr), 130 when stopped (0 for
    `serve` stopped by SIGTERM)."""
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            # `tuner train RECIPE --resume key=value ...`: argparse ends a positional list at the first flag, and
            # would call the overrides after it unrecognized arguments
            args.overrides = [*args.overrides, *extra]
            extra = []
        if extra:  # argparse says it from the top parser ("tuner: error:"), whose --help lists verbs, not flags
            _verb_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # argparse's usage error (2) or --help (0): an exit code like every other
        return 2 if isinstance(exit_.code, str) else int(exit_.code or 0)
    restore = _exit_cleanly_on_sigterm()
    quiet = _no_progress_bars() if getattr(args, "no_progress", False) else lambda: None
    verb = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))  # "data check" too
    plain = _tuner_warnings_as_lines(verb)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as stop:
        if verb == "serve" and stop.args == ("SIGTERM",):
            # how a process manager (systemd, Kubernetes, docker stop) ends a server: uvicorn has shut down
            # gracefully and re-raised the signal; a stopped server is a clean exit, not a failed one
            print("tuner serve: stopped (SIGTERM)", file=sys.stderr)
            return 0
        # one line, not a page of traceback; what a stopped train left is in its train.log
        print(f"\ntuner {verb}: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, OSError) as err:
        # Errors the library raises for bad input carry a message that names the path or field; so do the OS's
        # (FileNotFoundError, NotADirectoryError, FileExistsError, PermissionError, a full disk: "[Errno N] ...")
        print(f"tuner {verb}: error: {err}", file=sys.stderr)
        return 2
    finally:
        restore()
        quiet()
        plain()


def _verb_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the verb (and sub-verb: `data check`) that `args` ran: the one whose flags were mistyped."""
    for dest in ("command", "data_command"):
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, dest, None)
        if not subparsers or name not in subparsers[0].choices:
            break
        parser = subparsers[0].choices[name]
    return parser


def _tuner_warnings_as_lines(verb: str) -> Callable[[], None]:
    """tuner's own warnings (a calibration used off its instruction ...) as the CLI's other warnings read:
    `tuner VERB: warning: ...`, not Python's `/path/tuner/scoring.py:487: UserWarning: ...` and a source line.
    Other libraries' warnings keep Python's form. Returns the function that puts the previous printer back."""
    import warnings
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and Path(filename).resolve().is_relative_to(package):
            print(f"tuner {verb}: warning: {message}", file=file or sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show

    def put_back() -> None:
        warnings.showwarning = previous

    return put_back


def _no_progress_bars() -> Callable[[], None]:
    """--no-progress: transformers' bars too (its "Loading weights" bar of each model loaded), not only tuner's.
    Returns the function that turns them back on (a test, a notebook: the same process goes on)."""
    from transformers.utils import logging as hf_logging

    if not hf_logging.is_progress_bar_enabled():
        return lambda: None
    hf_logging.disable_progress_bar()
    return hf_logging.enable_progress_bar


def _exit_cleanly_on_sigterm() -> Callable[[], None]:
    """SIGTERM (kill, a scheduler's preemption) unwinds like Ctrl-C, so that atomic writers remove their temporary
    files and folders (a killed export left an almost complete copy of the model in a hidden folder). Returns the
    function that puts the previous handler back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:  # someone (a launcher, a test runner) owns it
        return lambda: None

    def stop(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, previous)
