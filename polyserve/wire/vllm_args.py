"""Reading a vLLM command line (pure): which flags it sets and to what.

vLLM's parser takes ``--flag value`` and ``--flag=value``, the ``--flag_name`` spelling of
``--flag-name``, and ``--no-flag`` for a boolean; a flag given twice takes its last value. The
operator (the user's ``engine.args`` win flag by flag), the router's discovery (what a pod's engine
runs) and the tier engine derivation read command lines through these functions only.
"""

from __future__ import annotations

from collections.abc import Sequence


def flag_name(arg: str) -> str:
    """A flag's identity: ``--a_b=1`` and ``--no-a-b`` are both ``a-b``."""
    name = arg[2:].split("=", 1)[0].replace("_", "-")
    return name.removeprefix("no-")


def split_flags(args: Sequence[str]) -> list[list[str]]:
    """Group ``[--a, 1, --b, --c, x]`` as ``[[--a, 1], [--b], [--c, x]]``."""
    groups: list[list[str]] = []
    for a in args:
        if a.startswith("--") or not groups:
            groups.append([a])
        else:
            groups[-1].append(a)
    return groups


def has_flag(args: Sequence[str], flag: str) -> bool:
    """The command line sets ``flag`` (in any of vLLM's spellings)."""
    want = flag_name(flag)
    return any(a.startswith("--") and flag_name(a) == want for a in args)


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value the command line gives ``flag`` (the last one, as argparse), or None."""
    want = flag_name(flag)
    value = None
    for group in split_flags(args):
        first = group[0]
        if not first.startswith("--") or flag_name(first) != want or first.startswith("--no-"):
            continue
        if "=" in first:
            value = first.split("=", 1)[1]
        elif len(group) > 1:
            value = group[1]
    return value


def positive_int_flag(args: Sequence[str], flag: str) -> int | None:
    """``flag``'s value as a positive integer; None when unset or not one (vLLM would refuse it)."""
    value = flag_value(args, flag)
    return int(value) if value is not None and value.isdigit() and int(value) > 0 else None
