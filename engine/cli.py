"""The ``twentyq`` command line: a thin layer over the Python API.

Exit codes: 0 success; 1 some inputs were bad but the rest were processed;
2 usage or configuration errors. Errors are one line unless ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A configuration error, reported as one line with exit code 2."""


def _system_cmd(args) -> int:
    from systems import analyze, load_system

    system = load_system(args.system)
    if args.action == "validate":
        print(f"ok: {system.name}: {system.n_classes} classes, {system.n_groups} groups, Q={system.q_total}")
    elif args.action == "show":
        print(f"{system.name}: {system.n_classes} classes, {system.n_groups} groups, Q={system.q_total}")
        if system.description:
            print(system.description)
        for g in system.groups:
            print(f"\n[{g.name}] {g.template}")
            for k, opt in enumerate(g.options):
                users = [c for c, row in zip(system.classes, system.rules) if k in row[system.group_index(g.name)]]
                print(f"  {k:>2}  {opt:<40} {', '.join(users)}")
        na = {g.name: [c for c, row in zip(system.classes, system.rules) if not row[i]]
              for i, g in enumerate(system.groups)}
        for gname, classes in na.items():
            if classes:
                print(f"\nnot applicable in {gname}: {', '.join(classes)}")
    else:
        a = analyze(system)
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="twentyq", description="Adaptive twenty-questions zero-shot classification.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("system", help="validate, show or analyze an attribute system")
    sp.add_argument("action", choices=["validate", "show", "analyze"])
    sp.add_argument("system", help="a system JSON file or a shipped name (e.g. pokemon15)")
    sp.add_argument("--json", action="store_true", help="analyze: print JSON")
    sp.set_defaults(func=_system_cmd)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("twentyq: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, FileNotFoundError, KeyError) as e:
        if args.debug:
            raise
        msg = str(e).strip("'\"")
        print(f"twentyq: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
