"""`sdgen adsp profiles`: the resource profiles jobs can use, with their GPUs."""

from __future__ import annotations

import argparse


def cmd_profiles(args: argparse.Namespace) -> int:
    from sdgen.launchers.adsp import list_profiles

    print(f"{'NAME':<20} {'GPU':>3} {'CPU':>5} {'MEMORY':>10}  DESCRIPTION")
    for p in list_profiles():
        print(
            f"{p.get('name', ''):<20} {p.get('gpu', 0)!s:>3} {p.get('cpu', '')!s:>5} "
            f"{p.get('memory', '')!s:>10}  {p.get('description', '')}"
        )
    return 0


def register(sub) -> None:
    p = sub.add_parser("adsp", help="ADSP (AE5) helpers")
    asub = p.add_subparsers(dest="adsp_command", metavar="ACTION")
    asub.required = True
    s = asub.add_parser("profiles", help="list resource profiles and their GPU counts")
    s.set_defaults(func=cmd_profiles)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from sdgen.config import data_root
    from sdgen.launchers.bootstrap import bootstrap

    result, path = bootstrap(data_root(args.data), force=args.force)
    print(f"{path}: {'already up to date' if result == 'unchanged' else 'built'}")
    return 0


def register_bootstrap(sub) -> None:
    p = sub.add_parser("bootstrap", help="pack this environment into DATA/worker_env for ADSP jobs")
    p.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    p.set_defaults(func=cmd_bootstrap)
