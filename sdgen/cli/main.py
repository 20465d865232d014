"""`sdgen` entry point: argument parsing, logging set-up, and one-line errors."""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sys

from sdgen import __version__
from sdgen.exceptions import SdgenError, UserError
from sdgen.textsafe import printable


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Options show their defaults, except where there is none to show (None, an off flag)
    or the help text already says it."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, no usage dump
        choice = re.match(r"argument \S+: invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:  # a mistyped command or choice: say the likely one first
            near = difflib.get_close_matches(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)), 1, 0.6)
            if near:
                message = f"{message}: did you mean {near[0]!r}?"
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):
        # argparse says "unrecognized arguments" with no hint; request files get "did you
        # mean", so flags do too, from the options of the command that was given
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = _chosen(self, ns)
            options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
            hints = []
            for extra in extras:
                if extra.startswith("-"):
                    near = difflib.get_close_matches(extra.split("=", 1)[0], options, 1, 0.6)
                    if near:
                        hints.append(f"{extra.split('=', 1)[0]}: did you mean {near[0]}?")
            hint = f" ({'; '.join(hints)})" if hints else ""
            parser.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return ns


def _subcommands(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def _chosen(parser: argparse.ArgumentParser, ns) -> argparse.ArgumentParser:
    """The (sub)command parser the arguments selected, e.g. `sdgen weights status`'s."""
    for action in _subcommands(parser):
        name = getattr(ns, action.dest, None)
        if name in action.choices:
            return _chosen(action.choices[name], ns)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """Every command's --help starts with what it does: its one-line help unless it has a
    longer description of its own."""
    for action in _subcommands(parser):
        helps = {c.dest: c.help for c in action._choices_actions}
        for name, child in action.choices.items():
            if not child.description and helps.get(name):
                child.description = helps[name][:1].upper() + helps[name][1:] + "."
            _describe(child)


def build_parser() -> argparse.ArgumentParser:
    from sdgen.cli import admin, adsp, cache, export, grid, prune, run, show, status, submit, ui, web, weights

    parser = _Parser(prog="sdgen", description="Batch text-to-image generation from a file spool.")
    parser.add_argument("--version", action="version", version=f"sdgen {__version__}")
    parser.add_argument("--data", metavar="DIR", help="data directory (default: $SDGEN_DATA, else ./data)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    submit.register(sub)
    status.register(sub)
    admin.register(sub)
    run.register(sub)
    weights.register(sub)
    cache.register(sub)
    prune.register(sub)
    show.register(sub)
    grid.register(sub)
    export.register(sub)
    ui.register(sub)
    web.register(sub)
    adsp.register(sub)
    adsp.register_bootstrap(sub)
    _describe(parser)
    _everywhere(parser, "--data", metavar="DIR", help="data directory (default: $SDGEN_DATA, else ./data)")
    return parser


def _everywhere(parser: argparse.ArgumentParser, *flags, **kw) -> None:
    """A global option accepted after the command too (`sdgen status --data DIR`), as the
    hints sdgen prints write it. SUPPRESS: a command's parser leaves the value given before
    the command alone when the option is not repeated after it."""
    for action in _subcommands(parser):
        for child in action.choices.values():
            if not any(f in child._option_string_actions for f in flags):
                child.add_argument(*flags, default=argparse.SUPPRESS, **kw)
            _everywhere(child, *flags, **kw)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # plain `sdgen`: what it can do, not an error
        parser.print_help()
        return 0
    quiet = args.command in (
        "submit",
        "resubmit",
        "status",
        "list",
        "cancel",
        "retry",
        "pause",
        "resume",
        "weights",
        "show",
        "adsp",
    )
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.WARNING if quiet else logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        # messages quote user input (paths, names): inert, and one line, before printing
        print(f"sdgen {args.command}: error: {printable(e)}", file=sys.stderr)
        return 2
    except SdgenError as e:
        print(f"sdgen {args.command}: {printable(e)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `sdgen status --json | head`: the reader has what it wanted
        sys.stdout = None
        return 0
    except OSError as e:  # e.g. a full disk: one line, not a traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"sdgen {args.command}: error: {printable(e.strerror or e)}{printable(where)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
