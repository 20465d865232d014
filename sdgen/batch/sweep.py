"""Parameter sweeps: `sweep:` maps fields to lists, `zip:` makes some lists move together,
and the request becomes the cross product of the axes. Pure and random-access: combination
`c` is computed on its own (the split computes any ticket from its index alone).

Axes are the swept fields in the order the request names them; a zipped group is one axis,
at the place of its first field. The last axis moves fastest (as itertools.product).
"""

from __future__ import annotations

import math
from typing import Callable

# Fields a sweep may vary: each is checked like the request field of the same name. `size`
# is width and height together ("768x512").
SWEEPABLE = ("guidance", "steps", "seed", "width", "height", "size", "negative_prompt", "model")
# Named by the issue but not there yet: a sweep over them is refused with this reason. The
# hook for samplers: add the field to SWEEPABLE, to `Ticket`/`ImageJob`, and to
# `generation_settings` below once the engines take it.
NOT_YET = {"sampler": "samplers are not implemented yet (every image uses DDIM): drop sampler from the sweep"}

# The settings a combination may change, as a request and a ticket name them.
SETTINGS = ("steps", "width", "height", "guidance", "seed", "negative_prompt", "model")

Sweep = tuple[tuple[str, tuple], ...]  # ((field, values), ...) in the request's order
Zip = tuple[tuple[str, ...], ...]


def axes(sweep: Sweep, zips: Zip) -> list[tuple[str, ...]]:
    """The axes of the cross product: one per swept field, one per zipped group."""
    group_of = {name: group for group in zips for name in group}
    out: list[tuple[str, ...]] = []
    for name, _ in sweep:
        group = group_of.get(name, (name,))
        if group not in out:
            out.append(group)
    return out


def combination_count(sweep: Sweep, zips: Zip) -> int:
    values = dict(sweep)
    return math.prod(len(values[group[0]]) for group in axes(sweep, zips))


def combination_at(sweep: Sweep, zips: Zip, index: int) -> dict:
    """Combination `index` as {field: value}, fields in the sweep's order; {} for no sweep."""
    values = dict(sweep)
    picks: dict[str, object] = {}
    for group in reversed(axes(sweep, zips)):
        index, position = divmod(index, len(values[group[0]]))
        for name in group:
            picks[name] = values[name][position]
    return {name: picks[name] for name, _ in sweep}


def parse_size(text: str) -> tuple[int, int]:
    """'768x512' -> (768, 512): width first, as A1111 writes Size."""
    width, _, height = text.partition("x")
    return int(width), int(height)


def generation_settings(base: dict, combination: dict) -> dict:
    """The request's settings (`base`: steps, width, height, guidance, seed, negative_prompt,
    model) with one combination applied."""
    out = dict(base)
    for name, value in combination.items():
        if name == "size":
            out["width"], out["height"] = parse_size(value)
        else:
            out[name] = value
    return out


def describe(combination: dict) -> str:
    """'guidance=5, steps=20' for people (plan, show)."""
    return ", ".join(
        f"{k}={v!r}" if isinstance(v, str) and (not v or "," in v) else f"{k}={v}" for k, v in combination.items()
    )


def parse_sweep(
    raw_sweep,
    raw_zip,
    check_value: Callable[[str, object, list[str]], object],
    errors: list[str],
    max_values: int,
    clip: Callable[[object], str] = str,
) -> tuple[Sweep, Zip]:
    """Check `sweep:` and `zip:` as written; bad parts are added to `errors` (one message
    each). `check_value(field, value, errors)` checks one value like the request field."""
    if raw_sweep is None:
        if raw_zip is not None:
            errors.append("zip names lists of sweep: add a sweep (sweep: {guidance: [5, 7.5], steps: [20, 50]})")
        return (), ()
    if not isinstance(raw_sweep, dict) or not raw_sweep:
        errors.append("sweep must map fields to lists of values, e.g. sweep: {guidance: [5, 7.5]}")
        return (), ()
    sweep: list[tuple[str, tuple]] = []
    zipped = {n for g in raw_zip for n in g if isinstance(n, str)} if _is_zip_shape(raw_zip) else set()
    for name, values in raw_sweep.items():
        if name in NOT_YET:
            errors.append(f"sweep {name}: {NOT_YET[name]}")
            continue
        if name not in SWEEPABLE:
            errors.append(f"sweep {clip(name)!r}: not a field a sweep can vary; use one of {', '.join(SWEEPABLE)}")
            continue
        if not isinstance(values, list) or not values:
            errors.append(f"sweep {name} must be a non-empty list of values, e.g. {name}: [a, b]")
            continue
        if len(values) > max_values:
            errors.append(f"sweep {name} has {len(values)} values; the limit is {max_values}")
            continue
        checked, before = [], len(errors)
        for value in values:
            checked.append(check_value(name, value, errors))
            if len(errors) > before:
                break
        if len(errors) > before:
            continue
        repeated = next((v for i, v in enumerate(checked) if v in checked[:i]), None)
        if repeated is not None and name not in zipped:  # zipped lists may repeat (steps: [25, 50, 50])
            errors.append(f"sweep {name} lists {clip(repeated)!r} twice: each value once")
            continue
        sweep.append((name, tuple(checked)))
    names = [n for n in raw_sweep]
    if "size" in names and ("width" in names or "height" in names):
        errors.append("sweep size and width/height together: sweep size (size: [512x512, 768x512]) or width/height")
    zips = _parse_zip(raw_zip, dict(sweep), set(names), errors, clip)
    for group in zips:
        values = dict(sweep)
        rows = list(zip(*[values[n] for n in group]))
        repeated = next((r for i, r in enumerate(rows) if r in rows[:i]), None)
        if repeated is not None:
            errors.append(f"zip {clip(list(group))}: the pair {clip(list(repeated))} comes twice: each once")
    return tuple(sweep), zips


def _is_zip_shape(raw_zip) -> bool:
    return isinstance(raw_zip, list) and all(isinstance(g, list) for g in raw_zip)


def _parse_zip(raw_zip, values: dict, named: set, errors: list[str], clip) -> Zip:
    if raw_zip is None:
        return ()
    shape = "zip must be a list of lists of swept fields, e.g. zip: [[guidance, steps]]"
    if not _is_zip_shape(raw_zip):
        errors.append(shape)
        return ()
    out, seen = [], set()
    for group in raw_zip:
        if len(group) < 2 or not all(isinstance(n, str) for n in group):
            errors.append(f"zip {clip(group)}: {shape}")
            continue
        missing = [n for n in group if n not in named]
        if missing:
            errors.append(f"zip {clip(group)}: {clip(missing[0])} is not in the sweep: add its list to sweep")
            continue
        twice = [n for n in group if n in seen or group.count(n) > 1]
        if twice:
            errors.append(f"zip names {clip(twice[0])} twice: a field moves with one group only")
            continue
        seen.update(group)
        if not all(n in values for n in group):
            continue  # its sweep list has its own error already
        lengths = [len(values[n]) for n in group]
        if len(set(lengths)) > 1:
            sizes = ", ".join(f"{n} {k}" for n, k in zip(group, lengths))
            errors.append(f"zip {clip(group)}: lists of {sizes} values; zipped lists must have equal lengths")
            continue
        out.append(tuple(group))
    return tuple(out)
