"""The request schema, version 2: parse YAML safely and validate every field strictly.

Pure: text in, `Request` or `RequestError` out. Every bad field gets its own message that
says what is wrong and how to fix it; all messages are joined into one line.

Version 2 adds batch programs (sdgen/batch/): prompts may be templates (`expand:` says how
they expand; expanded once at acceptance by batch/templates.py, which needs the wildcard
files, so it is not done here), and `sweep:`/`zip:` make the request a cross product of
settings. Version 1 files (`version: 1`) are still read: their prompts are plain text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import re
import unicodedata
from dataclasses import dataclass, field

import yaml

from sdgen import defaults
from sdgen.batch import sweep as sweeps
from sdgen.exceptions import RequestError

SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)
MODELS = ("sd-v1", "sd-v2")
ENGINES = ("keras-cv", "dry-run")
WEIGHTS = ("pretrained", "random")
MAX_IMAGES = 100_000
MAX_PROMPTS = 1_000
MAX_PROMPT_CHARS = 2_000
MAX_LABEL_CHARS = 200
SIZE_STEP, SIZE_MIN, SIZE_MAX = 128, 128, 2048
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class Request:
    prompts: tuple[str, ...]
    negative_prompt: str = ""
    images: int = 9
    batch_size: int = 1
    steps: int = 50
    width: int = 512
    height: int = 512
    guidance: float = 7.5
    seed: int | None = None
    model: str = "sd-v1"
    engine: str = "keras-cv"
    weights: str = "pretrained"
    priority: int = 0
    name: str = ""
    experiment: str = ""
    id: str = ""  # the submitter's own id (`id:`, `sdgen submit --id`): same id + content = one request
    version: int = SCHEMA_VERSION  # 1: prompts are plain text; 2: they may be templates
    expand: str | int = "all"  # templates: every expansion, or this many random ones
    sweep: sweeps.Sweep = ()  # ((field, values), ...): the request is their cross product
    zip: sweeps.Zip = ()  # groups of swept fields that move together
    # Set once the templates are expanded (at acceptance): `prompts` are then the expanded
    # prompts, `templates` the prompts as written and `expansions` how many prompts each
    # template made, in order. Never expanded again (workers need no template library).
    templates: tuple[str, ...] = ()
    expansions: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def combinations(self) -> int:
        return sweeps.combination_count(self.sweep, self.zip) if self.sweep else 1

    @property
    def images_total(self) -> int:
        return len(self.prompts) * self.combinations * self.images

    @property
    def expanded(self) -> bool:
        return bool(self.templates)

    def template_of(self, prompt_index: int) -> str:
        """The prompt as written that prompt `prompt_index` came from (itself if none)."""
        if not self.templates:
            return self.prompts[prompt_index]
        for template, count in zip(self.templates, self.expansions):
            if prompt_index < count:
                return template
            prompt_index -= count
        raise IndexError("prompt index past the expansions")

    def combination(self, index: int) -> dict:
        """Combination `index` of the sweep as {field: value} ({} without a sweep)."""
        return sweeps.combination_at(self.sweep, self.zip, index) if self.sweep else {}

    def settings(self, combination: dict) -> dict:
        """steps, width, height, guidance, seed, negative_prompt and model of one combination."""
        base = {k: getattr(self, k) for k in sweeps.SETTINGS}
        return sweeps.generation_settings(base, combination)

    def with_seed(self, rng: random.Random | None = None) -> "Request":
        """Fix a base seed so that every image stays reproducible on its own."""
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=(rng or random.SystemRandom()).randint(0, SEED_MAX))

    def to_dict(self) -> dict:
        """The normalized form written to requests/<id>/request.yaml (and to the inbox by
        `sdgen submit`). Swept fields are left out of the plain settings (the sweep has them)."""
        d: dict = {"version": self.version}
        if len(self.prompts) == 1:
            d["prompt"] = self.prompts[0]
        else:
            d["prompts"] = list(self.prompts)
        # the request's seed stays when seed is swept too: random expansions draw from it
        swept = {name for name, _ in self.sweep} - {"seed"}
        if "size" in swept:
            swept |= {"width", "height"}
        program = ("version", "expand", "sweep", "zip", "templates", "expansions")
        for f in dataclasses.fields(self):
            if f.name not in ("prompts", "extra", "id", *program) and f.name not in swept:
                d[f.name] = getattr(self, f.name)
        if self.id:
            d["id"] = self.id
        if self.expand != "all":
            d["expand"] = self.expand
        if self.sweep:
            d["sweep"] = {name: list(values) for name, values in self.sweep}
        if self.zip:
            d["zip"] = [list(group) for group in self.zip]
        if self.templates:
            d["templates"] = list(self.templates)
            d["expansions"] = list(self.expansions)
        return d


# libyaml when present: a 1 MiB request parses in milliseconds instead of seconds, and the
# daemon's loop must not stall on one file. Aliases are refused on the event stream first.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml_error(e: yaml.YAMLError) -> RequestError:
    if isinstance(e, yaml.constructor.ConstructorError):
        tag = getattr(e, "problem", "") or str(e)
        return RequestError(
            f"unsupported YAML tag ({_clip(' '.join(str(tag).split()))}): a request holds plain "
            "strings, numbers and lists only"
        )
    if "nesting depth" in str(getattr(e, "problem", "")):  # libyaml's own limit, met before ours
        return RequestError(
            f"the request is nested more than {defaults.MAX_REQUEST_DEPTH} levels deep; "
            "a request is a mapping of plain values and lists"
        )
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or "syntax error"
    return RequestError(f"invalid YAML{where}: {_clip(problem)}; check quoting and indentation")


def check_shape(
    text: str,
    max_depth: int = defaults.MAX_REQUEST_DEPTH,
    max_keys: int = defaults.MAX_REQUEST_KEYS,
    max_nodes: int = defaults.MAX_REQUEST_NODES,
) -> None:
    """Walk the YAML event stream (flat: no recursion, no objects built) and refuse, before
    any document exists, what no request needs: nesting past max_depth, more than max_keys
    keys in a mapping or max_nodes nodes in all, duplicate keys, non-scalar keys, aliases
    ("billion laughs" bombs are built from them)."""
    stack: list[list] = []  # per open collection: [is_mapping, keys seen, next node is a key]
    nodes = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent):
                raise RequestError(
                    f"YAML aliases (*{_clip(event.anchor)}) are not allowed in a request: write the value out"
                )
            if not isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
                if isinstance(event, yaml.CollectionEndEvent):
                    stack.pop()
                continue
            nodes += 1
            if nodes > max_nodes:
                raise RequestError(
                    f"the request has more than {max_nodes} values; a request is a short "
                    "mapping of settings: split it into several requests"
                )
            if stack and stack[-1][0]:
                top = stack[-1]
                if top[2]:
                    if not isinstance(event, yaml.ScalarEvent):
                        raise RequestError("a key must be a plain word (like `images:`), not a list or mapping")
                    if event.value in top[1]:
                        raise RequestError(f"key {_clip(event.value)!r} is given twice: keep one")
                    top[1].add(event.value)
                    if len(top[1]) > max_keys:
                        raise RequestError(
                            f"a mapping in the request has more than {max_keys} keys; the schema has 17: see the README"
                        )
                top[2] = not top[2]
            if isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= max_depth:
                    raise RequestError(
                        f"the request is nested more than {max_depth} levels deep; "
                        "a request is a mapping of plain values and lists"
                    )
                stack.append([isinstance(event, yaml.MappingStartEvent), set(), True])
    except yaml.YAMLError as e:
        raise _yaml_error(e) from None


def parse_yaml(text: str) -> dict:
    """Load a request mapping from YAML text, safely (no object-constructing tags), after
    its shape has been checked on the event stream."""
    check_shape(text)
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise _yaml_error(e) from None
    except (RecursionError, MemoryError, ValueError, OverflowError) as e:  # belt and braces
        raise RequestError(f"the request cannot be read as YAML ({type(e).__name__}): simplify it") from None
    if data is None:
        raise RequestError("the request is empty: write at least `prompt: <text>`")
    if not isinstance(data, dict):
        raise RequestError(f"a request must be a YAML mapping (key: value lines), not a {_kind(data)}")
    return data


def _clip(text, limit: int = 60) -> str:
    """A piece of user input quoted in a message: short and printable."""
    text = str(text)
    text = "".join(
        c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text[: limit + 1]
    )
    return text if len(text) <= limit else text[:limit] + "..."


def parse_request(text: str) -> Request:
    return validate(parse_yaml(text))


def _kind(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _int(d, key, default, lo, hi, errors):
    if key not in d:
        return default
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int):
        errors.append(f"{key} must be a whole number from {lo} to {hi}, got {_kind(v)} {_clip(repr(v))}")
        return default
    if not lo <= v <= hi:
        errors.append(f"{key} must be from {lo} to {hi}, got {v}")
        return default
    return v


def _choice(d, key, default, choices, errors):
    if key not in d:
        return default
    v = d[key]
    if v not in choices:
        errors.append(f"{key} must be one of {', '.join(choices)}, got {_clip(repr(v))}")
        return default
    return v


CLIENT_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")


def _client_id(d: dict, errors: list[str]) -> str:
    """`id:`: the submitter's own name for the request (idempotent submit)."""
    value = d.get("id")
    if value is None:
        return ""
    if not isinstance(value, str) or not CLIENT_ID.match(value):
        errors.append(
            f"id must be 1 to 64 letters, digits, '-', '_' or '.' (not starting with '.'), got {_clip(repr(value))}"
        )
        return ""
    return value


def request_digest(request: "Request") -> str:
    """What "the same content" means for an idempotent submit: the normalized request as
    given (before a seed is drawn for it), without its id."""
    fields = request.to_dict()
    fields.pop("id", None)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _text(d, key, default, max_chars, errors, allow_empty=True, one_line=False):
    if key not in d:
        return default
    v = d[key]
    if v is None and allow_empty:
        return ""
    if not isinstance(v, str):
        errors.append(f"{key} must be a string, got {_kind(v)}: put it in quotes")
        return default
    if not allow_empty and not v.strip():
        errors.append(f"{key} must not be empty")
        return default
    if len(v) > max_chars:
        errors.append(f"{key} is {len(v)} characters long; the limit is {max_chars}")
        return default
    if one_line and ("\n" in v or "\r" in v):
        errors.append(f"{key} must be a single line")
        return default
    bad = _control_char(v, allow_newlines=not one_line)
    if bad:
        errors.append(f"{key} holds the control character {bad}: remove it (terminals would run it)")
        return default
    return v


def _control_char(text: str, allow_newlines: bool) -> str | None:
    """The first character that is not text (C0/C1 controls, DEL, bidi overrides, which can
    repaint a terminal or reorder what a reader sees), as an escape; None if all is text."""
    for c in text:
        if allow_newlines and c in "\n\t":
            continue
        if unicodedata.category(c) in ("Cc", "Cs") or c in _BIDI_CONTROLS:
            return f"U+{ord(c):04X}"
    return None


_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def _bounded(message: str) -> str:
    limit = defaults.MAX_REASON_CHARS
    return message if len(message) <= limit else message[: limit - 20] + " ... (more problems)"


def _size(d, key, errors):
    if key not in d:
        return 512
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int):
        errors.append(f"{key} must be a whole number of pixels, got {_kind(v)} {_clip(repr(v))}")
        return 512
    if v < SIZE_MIN or v > SIZE_MAX:
        errors.append(f"{key} must be from {SIZE_MIN} to {SIZE_MAX} pixels, got {v}")
        return 512
    if v % SIZE_STEP:
        lower = v // SIZE_STEP * SIZE_STEP
        upper = lower + SIZE_STEP
        options = " or ".join(str(s) for s in (lower, upper) if SIZE_MIN <= s <= SIZE_MAX)
        errors.append(f"{key} {v} is not a multiple of {SIZE_STEP}: use {options}")
        return 512
    return v


def _prompts(d, errors) -> tuple[str, ...]:
    # an accepted request (request.yaml) holds its expanded prompts: more than one writes
    max_prompts = defaults.MAX_EXPANDED_PROMPTS if "templates" in d else MAX_PROMPTS
    if "prompt" in d and "prompts" in d:
        errors.append("give either prompt (one text) or prompts (a list), not both")
        return ()
    if "prompt" in d:
        p = _text(d, "prompt", None, MAX_PROMPT_CHARS, errors, allow_empty=False)
        if p is None and not any(e.startswith("prompt ") for e in errors):
            errors.append("prompt must be a non-empty string")
        return (p,) if p else ()
    if "prompts" in d:
        v = d["prompts"]
        if not isinstance(v, list) or not v:
            errors.append("prompts must be a non-empty list of strings (one `- text` per line)")
            return ()
        if len(v) > max_prompts:
            errors.append(f"prompts has {len(v)} entries; the limit is {max_prompts}: split the request")
            return ()
        out = []
        for i, p in enumerate(v):
            if not isinstance(p, str) or not p.strip():
                errors.append(f"prompts[{i}] must be a non-empty string, got {_kind(p)} {_clip(repr(p))}")
            elif len(p) > MAX_PROMPT_CHARS:
                errors.append(f"prompts[{i}] is {len(p)} characters long; the limit is {MAX_PROMPT_CHARS}")
            elif _control_char(p, allow_newlines=True):
                errors.append(f"prompts[{i}] holds the control character {_control_char(p, True)}: remove it")
            else:
                out.append(p)
            if len(errors) > 20:
                break
        return tuple(out)
    errors.append("missing prompt: add `prompt: <text>` (or `prompts:` with a list)")
    return ()


KNOWN_KEYS = {
    "version",
    "id",
    "prompt",
    "prompts",
    "negative_prompt",
    "images",
    "batch_size",
    "steps",
    "width",
    "height",
    "guidance",
    "seed",
    "model",
    "engine",
    "weights",
    "priority",
    "name",
    "experiment",
    "expand",
    "sweep",
    "zip",
    "templates",
    "expansions",
}
PROGRAM_KEYS = ("expand", "sweep", "zip", "templates", "expansions")  # schema version 2 only


def validate(d: dict) -> Request:
    """Check a request mapping against schema version 1 and normalize it."""
    errors: list[str] = []
    # keys with a likely intended spelling first: those are the typos worth naming
    unknown = sorted((str(k) for k in d if k not in KNOWN_KEYS), key=lambda k: (_closest(k) is None, k))
    for key in unknown[:3]:  # a few, named: a bounded one-line reason however many there are
        hint = _closest(key)
        errors.append(f"unknown key {_clip(key)!r}" + (f": did you mean {hint!r}?" if hint else ""))
    if unknown:
        more = f" (and {len(unknown) - 3} more unknown keys)" if len(unknown) > 3 else ""
        if more or not all(_closest(k) for k in unknown[:3]):
            errors.append(f"allowed keys: {', '.join(sorted(KNOWN_KEYS))}{more}")
    version = SCHEMA_VERSION
    if "version" in d:
        if isinstance(d["version"], bool) or d["version"] not in SCHEMA_VERSIONS:
            errors.append(
                f"version must be 1 or 2 (this sdgen reads schema versions 1 and 2), got {_clip(repr(d['version']))}"
            )
        else:
            version = d["version"]
    if version == 1:
        for key in PROGRAM_KEYS:
            if key in d:
                errors.append(f"{key} needs schema version 2: write version: 2 (or leave version out)")
    prompts = _prompts(d, errors)
    images = _int(d, "images", 9, 1, MAX_IMAGES, errors)
    batch_size = _int(d, "batch_size", 1, 1, 64, errors)
    steps = _int(d, "steps", 50, 1, 1000, errors)
    width = _size(d, "width", errors)
    height = _size(d, "height", errors)
    guidance = _guidance(d, errors)
    seed = _int(d, "seed", None, 0, SEED_MAX, errors) if d.get("seed") is not None else None
    model = _choice(d, "model", "sd-v1", MODELS, errors)
    engine = _choice(d, "engine", "keras-cv", ENGINES, errors)
    weights = _choice(d, "weights", "pretrained", WEIGHTS, errors)
    priority = _int(d, "priority", 0, -1000, 1000, errors)
    negative = _text(d, "negative_prompt", "", MAX_PROMPT_CHARS, errors)
    name = _text(d, "name", "", MAX_LABEL_CHARS, errors, one_line=True)
    experiment = _text(d, "experiment", "", MAX_LABEL_CHARS, errors, one_line=True)
    client_id = _client_id(d, errors)
    expand = _expand(d, errors)
    sweep, zips = sweeps.parse_sweep(
        d.get("sweep"), d.get("zip"), _sweep_value, errors, defaults.MAX_SWEEP_VALUES, _clip
    )
    for swept, _ in sweep:
        if swept == "seed":
            continue  # seed: the sweep's seeds make the images, the request's the random expansions
        for key in ("width", "height") if swept == "size" else (swept,):
            if key in d:
                errors.append(f"{key} is both set and swept: drop {key}: or its sweep list")
    templates, expansions = _templates(d, prompts, errors)
    combinations = sweeps.combination_count(sweep, zips) if sweep else 1
    if combinations > MAX_IMAGES:
        errors.append(
            f"the sweep makes {combinations} combinations; the limit is {MAX_IMAGES} images per request: "
            "sweep fewer values"
        )
    elif (
        prompts
        and len(prompts) * combinations * images > MAX_IMAGES
        and not any(e.startswith("images") for e in errors)
    ):
        errors.append(images_limit_message(len(prompts), combinations, images))
    if errors:
        raise RequestError(_bounded("; ".join(errors)))
    return Request(
        prompts=prompts,
        negative_prompt=negative,
        images=images,
        batch_size=batch_size,
        steps=steps,
        width=width,
        height=height,
        guidance=guidance,
        seed=seed,
        model=model,
        engine=engine,
        weights=weights,
        priority=priority,
        name=name,
        experiment=experiment,
        id=client_id,
        version=version,
        expand=expand,
        sweep=sweep,
        zip=zips,
        templates=templates,
        expansions=expansions,
    )


def images_limit_message(prompts: int, combinations: int, images: int) -> str:
    """The one line for a request past MAX_IMAGES, naming what multiplies."""
    parts = f"{prompts} prompts" + (f" x {combinations} combinations" if combinations > 1 else "")
    return (
        f"{parts} x {images} images = {prompts * combinations * images} images; "
        f"the limit is {MAX_IMAGES} per request: split it into several requests"
    )


def _guidance(d, errors, key="guidance"):
    if key not in d:
        return 7.5
    g = d[key]
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
        errors.append(f"{key} must be a number from 0 to 50, got {_kind(g)} {_clip(repr(g))}")
    elif not 0 <= g <= 50:
        errors.append(f"{key} must be from 0 to 50, got {g}")
    else:
        return float(g)
    return 7.5


def _expand(d, errors) -> str | int:
    if "expand" not in d:
        return "all"
    v = d["expand"]
    if v == "all":
        return v
    limit = defaults.MAX_EXPANDED_PROMPTS
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= limit:
        errors.append(f"expand must be `all` or a number of random expansions from 1 to {limit}, got {_clip(repr(v))}")
        return "all"
    return v


def _sweep_value(name: str, value, errors: list[str]):
    """One value of a sweep list, checked like the request field it stands for."""
    label = f"sweep {name}"
    if name == "size":
        if not isinstance(value, str) or value.count("x") != 1:
            errors.append(f"{label}: {_clip(repr(value))} is not a size: write WIDTHxHEIGHT, e.g. 768x512")
            return value
        width, _, height = value.partition("x")
        if not (width.isdigit() and height.isdigit()):
            errors.append(f"{label}: {_clip(repr(value))} is not a size: write WIDTHxHEIGHT, e.g. 768x512")
            return value
        w = _size({f"{label} width": int(width)}, f"{label} width", errors)
        h = _size({f"{label} height": int(height)}, f"{label} height", errors)
        return f"{w}x{h}"
    one = {label: value}
    if name == "guidance":
        return _guidance(one, errors, label)
    if name == "steps":
        return _int(one, label, 50, 1, 1000, errors)
    if name == "seed":
        return _int(one, label, 0, 0, SEED_MAX, errors)
    if name in ("width", "height"):
        return _size(one, label, errors)
    if name == "negative_prompt":
        return _text(one, label, "", MAX_PROMPT_CHARS, errors)
    if name == "model":
        return _choice(one, label, "sd-v1", MODELS, errors)
    raise ValueError(name)  # sweep.SWEEPABLE and this list go together


def _templates(d, prompts: tuple[str, ...], errors) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """`templates` + `expansions`: the record of an expansion already made (request.yaml).
    Its prompts are then the expansions, taken as plain text."""
    if "templates" not in d and "expansions" not in d:
        return (), ()
    templates, counts = d.get("templates"), d.get("expansions")
    if (
        not isinstance(templates, list)
        or not isinstance(counts, list)
        or len(templates) != len(counts)
        or not templates
    ):
        errors.append("templates and expansions go together: two lists of equal length (written at acceptance)")
        return (), ()
    for i, t in enumerate(templates):
        if not isinstance(t, str) or not t.strip() or len(t) > MAX_PROMPT_CHARS or _control_char(t, True):
            errors.append(f"templates[{i}] must be a prompt as written (text of at most {MAX_PROMPT_CHARS} characters)")
            return (), ()
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in counts) or sum(counts) != len(
        prompts
    ):
        errors.append("expansions must count the prompts each template made, adding up to the prompts")
        return (), ()
    return tuple(templates), tuple(counts)


def _closest(key: str) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1, cutoff=0.6)
    return match[0] if match else None
