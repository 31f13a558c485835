"""``twentyq system ...``: validate, show, analyze, build, import and refine attribute systems.

Each subcommand is one small function over the ``systems`` API; ``add_system_parser``
wires them into the main parser. Kept apart from ``engine/cli.py`` so that system
tooling can grow without touching the classification commands.
"""

from __future__ import annotations

import argparse
import json

EXIT_OK = 0


def _header(system) -> str:
    return f"{system.name}: {system.n_classes} classes, {system.n_groups} groups, Q={system.q_total}"


def _validate_cmd(args) -> int:
    from systems import load_system

    print(f"ok: {_header(load_system(args.system))}")
    return EXIT_OK


def _show_cmd(args) -> int:
    from systems import load_system

    system = load_system(args.system)
    print(_header(system))
    if system.description:
        print(system.description)
    for gi, g in enumerate(system.groups):
        print(f"\n[{g.name}] {g.template}")
        for k, opt in enumerate(g.options):
            users = [c for c, row in zip(system.classes, system.rules) if k in row[gi]]
            print(f"  {k:>2}  {opt:<40} {', '.join(users)}")
    for gi, g in enumerate(system.groups):
        classes = [c for c, row in zip(system.classes, system.rules) if not row[gi]]
        if classes:
            print(f"\nnot applicable in {g.name}: {', '.join(classes)}")
    return EXIT_OK


def _analyze_cmd(args) -> int:
    from systems import analyze, load_system

    a = analyze(load_system(args.system))
    if args.json:
        print(json.dumps(a.to_dict(), ensure_ascii=False, indent=2))
        return EXIT_OK
    print(f"{a.system}: {a.n_classes} classes, {a.n_groups} groups, Q={a.q_total}")
    print(f"identical rule signatures: {a.identical_signatures or 'none'}")
    print(f"classes no group can tell apart: {a.indistinguishable or 'none'}")
    print(f"\n{'group':<24}{'K':>4}{'pairs separated':>18}{'info (bits)':>13}  not applicable")
    for sp in a.splits:
        print(f"{sp.group:<24}{sp.n_options:>4}{sp.pairs_separated:>18}{sp.info_bits:>13.2f}  "
              f"{len(sp.not_applicable)}")
    print(f"\nminimal separating set (greedy): {a.minimal_separating_set} (Q={a.minimal_set_q})")
    return EXIT_OK


def add_system_parser(sub) -> argparse.ArgumentParser:
    """Add ``system`` and its subcommands to the main parser's subparsers ``sub``."""
    sp = sub.add_parser("system", help="validate, show, analyze, build, import or refine an attribute system")
    ssub = sp.add_subparsers(dest="action", required=True)

    def system_arg(p):
        p.add_argument("system", help="a system JSON file or a shipped name (e.g. pokemon15)")

    p = ssub.add_parser("validate", help="check a system file and list every problem")
    system_arg(p)
    p.set_defaults(func=_validate_cmd)

    p = ssub.add_parser("show", help="print groups, options and which classes use each")
    system_arg(p)
    p.set_defaults(func=_show_cmd)

    p = ssub.add_parser("analyze", help="which classes the rules can tell apart, and what each group is worth")
    system_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_analyze_cmd)
    return sp
