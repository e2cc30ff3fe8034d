"""Command line: `python -m otlp_ingest <command>` (also installed as `otlp-ingest`).

Commands:
  serve         run the server (supervisor, receiver workers, exporters, admin endpoint)
  check-config  print the effective settings and where each came from; exit 2 on bad settings
  version       print the version
  loadgen       built-in load generator (otlp_ingest.loadgen)
  capacity      size a deployment from measured throughput (otlp_ingest.capacity)
  top           live status of a running server from its admin port (otlp_ingest.top)
  _child        internal: a worker or exporter started by the supervisor

Settings come from flags > environment (OTLP_*) > --config FILE (YAML or TOML) > defaults. A bad
value is reported as one line naming the setting, the value and what is allowed; the command
exits with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from otlp_ingest import __version__
from otlp_ingest.config import (
    ENV_NAMES,
    Settings,
    add_settings_flags,
    flag_overrides,
    load_settings,
    load_settings_with_sources,
)
from otlp_ingest.errors import ConfigError, ExitCode


def _settings_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", metavar="FILE", help="YAML (.yaml/.yml) or TOML (.toml) settings file")
    add_settings_flags(parser.add_argument_group("settings (each overrides its environment variable)"))
    return parser


def _report_config_error(exc: ConfigError) -> int:
    for problem in exc.problems:
        print(f"otlp-ingest: invalid setting: {problem}", file=sys.stderr)
    return ExitCode.CONFIG


def _check_config(argv: Sequence[str]) -> int:
    args = _settings_parser(
        "otlp-ingest check-config", "Validate and print the effective settings."
    ).parse_args(argv)
    try:
        settings, sources = load_settings_with_sources(flag_overrides(args), os.environ, args.config)
    except ConfigError as exc:
        return _report_config_error(exc)
    width = max(len(f) for f in ENV_NAMES)
    for field in ENV_NAMES:
        value = getattr(settings, field)
        print(f"{field:<{width}}  {value!r:<24}  ({sources[field]}; env {ENV_NAMES[field]})")
    print(f"{'(resolved workers)':<{width}}  {settings.resolved_workers()!r}")
    for signal, names in settings.pipelines.items():
        chain = " -> ".join(names) if names else "(none)"
        print(f"{'pipelines.' + signal:<{width}}  {chain}  ({sources['pipelines']})")
    return ExitCode.OK


def _serve(argv: Sequence[str]) -> int:
    args = _settings_parser("otlp-ingest serve", "Run the OTLP ingest gateway.").parse_args(argv)
    overrides = flag_overrides(args)
    try:
        settings = load_settings(overrides, os.environ, args.config)
    except ConfigError as exc:
        return _report_config_error(exc)

    from otlp_ingest.supervisor.main import run_supervisor
    from otlp_ingest.telemetry.logging import configure_logging

    configure_logging(settings.log_level, "supervisor")

    def reload() -> Settings:
        # Flags and the environment cannot change under a running process; the file can.
        return load_settings(overrides, os.environ, args.config)

    return run_supervisor(settings, reload)


def _delegate(module: str, argv: Sequence[str]) -> int:
    """Commands owned by other modules, imported only when used."""
    import importlib

    return int(importlib.import_module(module).main(list(argv)))


USAGE = """usage: otlp-ingest <command> [options]

commands:
  serve         run the server
  check-config  validate settings and print the effective values (exit 2 if invalid)
  version       print the version
  loadgen       send OTLP load to a server
  capacity      size a deployment (pods) from measured throughput
  top           live status of a running server in the terminal (--admin host:port, --once)

`otlp-ingest <command> --help` for a command's options."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return ExitCode.OK if args else ExitCode.CONFIG
    command, rest = args[0], args[1:]
    if command == "serve":
        return _serve(rest)
    if command == "check-config":
        return _check_config(rest)
    if command in ("version", "--version"):
        print(f"otlp-ingest {__version__}")
        return ExitCode.OK
    if command == "loadgen":
        return _delegate("otlp_ingest.loadgen", rest)
    if command == "capacity":
        return _delegate("otlp_ingest.capacity", rest)
    if command == "top":
        return _delegate("otlp_ingest.top", rest)
    if command == "_child":
        from otlp_ingest.supervisor.child_main import child_main

        return child_main(rest)
    print(f"otlp-ingest: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return ExitCode.CONFIG
