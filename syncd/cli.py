"""The `syncd` command. Each subcommand lives in a module of `syncd.commands` that exposes
`register(subparsers)`; this module only parses, configures logging, loads settings and
dispatches. Exit codes: 0 ok, 1 failure (or drift for `verify`), 2 usage/configuration error."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys
from collections.abc import Sequence

from syncd import __version__, commands, early_signals

# Nothing heavier is imported at module level: `syncd run` catches SIGTERM before pydantic,
# aiohttp, asyncpg... are loaded (issue #23); they are imported in `main`.

__all__ = ["main"]

EPILOG = """Settings come from SYNCD_* environment variables (for example SYNCD_DATABASE_URL,
SYNCD_KANTATA_TOKEN or SYNCD_KANTATA_TOKEN_FILE), then from the TOML file named by
SYNCD_CONFIG_FILE (keys in lower case without the prefix: pull_interval = 600), then the
defaults; the database URL falls back to libpq's PG* variables. `syncd config` shows the
effective value of each and where it came from; `syncd config --reference` lists them all
(deploy/README.md, Settings).

Exit codes: 0 ok, 1 failure (for verify: drift), 2 usage or configuration error."""


def _command_modules() -> list[str]:
    """Names of the modules of `syncd.commands` (one command each, named like its module)."""
    return sorted(m.name for m in pkgutil.iter_modules(commands.__path__)
                  if not m.name.startswith("_"))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default unless its help already says it; a description or epilog
    keeps its paragraphs (blank-line separated) and its lines that start with two spaces."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in re.split(r"\n\s*\n", text.strip()):
            lines = para.splitlines()
            if any(line.startswith("  ") for line in lines):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(super()._fill_text(para, width, indent))
        return "\n\n".join(out)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("default" in text.lower() or action.const is not None and action.nargs == 0
                or re.search(r"\(\S+\)$", text)):
            return text  # says it already, or a flag (its default is "not given")
        return super()._get_help_string(action)


def _polish(parser: argparse.ArgumentParser, purpose: str | None) -> None:
    """Every (sub)command's --help: one line of purpose and the defaults."""
    parser.formatter_class = HelpFormatter
    if not parser.description and purpose:
        parser.description = purpose[0].upper() + purpose[1:] + "."
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                _polish(child, helps.get(name))


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser. Given `argv` whose first positional word names a command, only that
    command's module is imported and registered: each module imports its implementation (the
    simulator, the daemon's HTTP server, the scheduler...), and importing all of them for
    `syncd sync` cost ~7 MB of peak RSS (issue #7). Otherwise (`syncd --help`, no or an unknown
    command) every command is registered, so help and usage errors list them all."""
    parser = argparse.ArgumentParser(
        prog="syncd", description="Mirror Kantata OX time entries into PostgreSQL and push "
                                  "local changes back.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = _command_modules()
    word = next((a for a in (argv or ()) if not a.startswith("-")), None)
    for name in [word] if word in names else names:
        module = importlib.import_module(f"syncd.commands.{name}")
        module.register(sub)
    _polish(parser, None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `syncd` console script; returns the process exit code."""
    console = argv is None  # the console script's own process, not a test calling main()
    if argv is None:
        argv = sys.argv[1:]
        if next((a for a in argv if not a.startswith("-")), None) == "run":
            early_signals.install()  # the daemon's first instant (issue #23)
        from syncd.memory import fix_mmap_threshold

        fix_mmap_threshold()  # big pages' buffers go back to the system (issue #24)
    from pydantic import ValidationError

    from syncd import logs
    from syncd.errors import ConfigError, dsn_passwords
    from syncd.settings import Settings, format_validation_error, unknown_variables

    args = build_parser(argv).parse_args(argv)
    settings: Settings | None = None
    if getattr(args, "needs_settings", True):
        for warning in unknown_variables(os.environ):
            print(f"syncd: warning: {warning}", file=sys.stderr)
        try:
            settings = Settings()
        except ValidationError as exc:
            for line in format_validation_error(exc).splitlines():
                print(f"syncd: {line}", file=sys.stderr)
            return 2
        except ConfigError as exc:  # SYNCD_CONFIG_FILE missing or not TOML
            print(f"syncd: {exc}", file=sys.stderr)
            return 2
        logs.configure(settings.log_level, settings.log_format)
        for password in dsn_passwords(settings.dsn()):  # user:pass@ and ?password=, for
            logs.register_secret(password)  # every command: never in an error or a log line
    else:
        logs.configure("INFO", "auto")
    if console:  # every import done: the collector stops walking them (issue #26)
        from syncd.memory import freeze_startup_objects

        freeze_startup_objects()
    try:
        return int(args.func(args, settings))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `syncd config | head`: the reader has what it wanted
        from syncd.commands._util import discard_stdout

        discard_stdout()
        return 0
