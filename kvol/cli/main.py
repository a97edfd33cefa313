"""The ``kvol`` command: parses arguments, runs one command, and turns failures into one
line on stderr and an exit code (the only place the CLI translates errors)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from kvol.errors import KvolError

DESCRIPTION = """\
kvol: named, persistent volumes that many machines (or pods) share. Each works on a local
copy at disk speed; commit publishes its changes, reload pulls in everyone else's.
"""

EPILOG = """\
examples:
  kvol demo                              # see two writers share a volume, in 2 seconds
  kvol volume create data
  kvol volume put data ./results /results
  kvol volume ls data /results
  kvol --store s3://bucket/prefix volume list --json
  source <(kvol completion bash)         # tab completion (also zsh, fish)

Run 'kvol volume --help' for every volume command.

exit codes:
{exit_codes}
"""

#: Every exit code of the CLI: the ``exit_code`` of each error in kvol.errors, plus 0, 1
#: and 130. The README lists the same codes with the same words.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (1, "any other failure: a local file error, a cancelled prompt, an unexpected error"),
    (2, "bad input: an option, a name, a path, a grace or limit out of range"),
    (3, "not found: a volume, a file, a commit or a working copy"),
    (4, "already exists"),
    (5, "conflict: another writer took what this one tried to take (retry)"),
    (6, "volume busy: processes hold files in the working copy (close them, retry)"),
    (7, "over a limit of the volume: nothing was published"),
    (8, "corrupt data, a gap in the log, or damage found by fsck"),
    (9, "store failure: unreachable, credentials missing or refused, or unsupported"),
    (10, "read-only: a write through a read-only copy"),
    (11, "store behind: the store lacks commits this copy has seen (nothing was published)"),
    (130, "interrupted"),
)


def _common() -> argparse.ArgumentParser:
    """Options accepted before or after any command (defaults are set once, in build)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("global options")
    group.add_argument(
        "--store",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="where volumes live: file:///dir, a path, or s3://bucket/prefix "
        "(default: $KVOL_STORE, else ~/.local/share/kvol/store)",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log what happens and show tracebacks",
    )
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=argparse.SUPPRESS,
        help="progress bars on stderr (default: only on a terminal, for large transfers)",
    )
    return common


#: Every command: the module that defines it and its one-line help. A module is imported
#: only when its command runs (or for a parser of every command, as completion builds):
#: they pull in the store and content machinery, which ``kvol --help`` does not need.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("volume", "kvol.cli.volume", "manage volumes and their files"),
    ("demo", "kvol.cli.demo", "watch two working copies share a volume"),
    ("completion", "kvol.cli.completion", "print a shell completion script (bash, zsh, fish)"),
)


def build_parser(only: str | None = None, *, every: bool = True) -> argparse.ArgumentParser:
    """The parser of the ``kvol`` command.

    With ``every`` (the default) each command is defined in full. Otherwise only the
    command ``only`` is, and the others are named with their help but accept anything:
    enough for the top-level help and for finding which command an argument list runs.
    """
    common = _common()
    parser = argparse.ArgumentParser(
        prog="kvol",
        description=DESCRIPTION,
        epilog=EPILOG.format(
            exit_codes="\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES)
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action=_Version, help="show program's version number and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, help in COMMANDS:
        if every or name == only:
            importlib.import_module(module).register(commands, common)
        else:
            commands.add_parser(name, help=help, add_help=False)
    return parser


def _command_of(argv: Sequence[str]) -> str:
    """The command ``argv`` runs, found by the top-level parser alone (which also answers
    ``--help`` and ``--version``, and refuses a missing or unknown command)."""
    known, _rest = build_parser(every=False).parse_known_args(argv)
    command: str = known.command
    return command


class _Version(argparse.Action):
    """``--version``, looked up only when asked (reading package metadata costs time)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"kvol {_version()}")
        parser.exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kvol")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        # The kvol program itself (not a caller passing arguments): no metrics, unless
        # something in this process loaded them already.
        import kvol

        kvol._METRICS = False
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv), every=False)
    args = parser.parse_args(argv)
    # Imported once a command runs: help, version and usage errors end in the parser.
    import logging

    from kvol import progress

    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="kvol: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    progress.configure(getattr(args, "progress", None))
    try:
        code: int = args.handler(args)
        return code
    except KvolError as exc:
        if debug:
            raise
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`kvol volume get v f - | head`): not worth a message.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        # Local files: a missing source, a directory without permission. Said plainly.
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        _error(f"{exc.strerror or exc}{where}")
        return 1
    except Exception as exc:
        if debug:
            raise
        _error(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return 1
    finally:
        store = getattr(args, "_store", None)
        if store is not None:
            store.close()


def _error(message: str) -> None:
    # One line, whatever the message holds, so scripts can grep it.
    print(f"kvol: error: {' '.join(message.split())}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
