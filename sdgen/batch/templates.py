"""Prompt templates: the dynamic-prompts language through the `dynamicprompts` library (its
combinatorial and random generators only: request files are untrusted, so never its Jinja
one), with wildcards read from `<data>/wildcards/`.

A request's templates are expanded once, when the daemon accepts it (`expand_request`, after
the seed is fixed), and the expansions are recorded in requests/<id>/request.yaml with the
templates: workers and the split never need this module, the library or the wildcard files,
and a re-run is stable. `check_request` does the same expansion to validate a request at
`sdgen submit` and at intake, so that a bad template is refused in one line there.

Everything is bounded (defaults.py): expansions, their bytes, wildcard files (count, folder
depth, size, lines), nesting of wildcards in wildcards, time. A wildcard is read only from a
regular file inside the wildcards folder, never through a symbolic link or `..`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import stat
import time
from pathlib import Path

from sdgen import defaults
from sdgen.exceptions import RequestError
from sdgen.spool.request import (
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    Request,
    _clip,
    _control_char,
    images_limit_message,
)

WILDCARDS_FOLDER = "wildcards"
# What makes a prompt a template: a variant `{...}` (also `${var}` and `%{wrap}`) or a
# wildcard `__name__`. Any other prompt is plain text and is never handed to the library
# (it would read `#` as a comment).
_MARKERS = ("{", "__")
_WRAP = "__"


def is_template(prompt: str) -> bool:
    return any(marker in prompt for marker in _MARKERS)


def wildcards_dir(data_root: Path | str) -> Path:
    return Path(data_root) / WILDCARDS_FOLDER


def wildcards_for_request_file(path: Path) -> Path | None:
    """The wildcards folder of the data directory whose spool holds `path` (a file in
    spool/inbox/ or spool/incoming/); None for a file elsewhere."""
    path = Path(path)
    if path.parent.name in ("inbox", "incoming") and path.parent.parent.name == "spool":
        return wildcards_dir(path.parent.parent.parent)
    return None


class TemplateProblem(RequestError):
    """A template part that cannot be expanded: raised from inside the library's sampling
    and passed through it as is."""


# -- the wildcard files -------------------------------------------------------------------


def _scan(root: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """name -> file for every `*.txt` under `root` (nested folders give `a/b`), and name ->
    why it is refused for entries that cannot be wildcards (symbolic links). Hidden names
    are skipped, as the library does."""
    files: dict[str, Path] = {}
    refused: dict[str, str] = {}
    if not root.is_dir() or root.is_symlink():
        return files, refused
    seen = 0
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            raise TemplateProblem(f"the wildcards folder {prefix or '.'} cannot be read ({e.strerror or e})") from None
        for entry in entries:
            seen += 1
            if seen > defaults.MAX_WILDCARD_FILES:
                raise TemplateProblem(
                    f"the wildcards folder holds more than {defaults.MAX_WILDCARD_FILES} entries: "
                    "keep only the lists in use"
                )
            if entry.name.startswith("."):
                continue
            name = prefix + entry.name
            if entry.is_symlink():
                refused[name.removesuffix(".txt")] = (
                    f"{WILDCARDS_FOLDER}/{name} is a symbolic link: sdgen reads only regular files "
                    "inside the wildcards folder"
                )
            elif entry.is_dir(follow_symlinks=False):
                if name.count("/") + 1 < defaults.MAX_WILDCARD_FOLDER_DEPTH:
                    stack.append((Path(entry.path), name + "/"))
            elif entry.name.endswith(".txt") and entry.is_file(follow_symlinks=False):
                files[name[: -len(".txt")]] = Path(entry.path)
    return files, refused


def _read_lines(root: Path, name: str, path: Path) -> list[str]:
    """A wildcard file's values: bounded, UTF-8, not through any link, inside `root`."""
    shown = f"{WILDCARDS_FOLDER}/{name}.txt"
    real_root = os.path.realpath(root)
    if os.path.commonpath([os.path.realpath(path), real_root]) != real_root:
        raise TemplateProblem(f"wildcard __{name}__: {shown} lies outside the wildcards folder")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise TemplateProblem(f"wildcard __{name}__: {shown} cannot be opened ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TemplateProblem(f"wildcard __{name}__: {shown} is not a regular file")
        limit = defaults.MAX_WILDCARD_FILE_BYTES
        raw = os.read(fd, limit + 1)
        if len(raw) > limit:
            raise TemplateProblem(f"wildcard __{name}__: {shown} is over {limit} bytes: split it")
    finally:
        os.close(fd)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TemplateProblem(f"wildcard __{name}__: {shown} is not UTF-8 (byte at offset {e.start})") from None
    # the library's own rule for a file's values: stripped lines, blank and `#` lines skipped
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if len(lines) > defaults.MAX_WILDCARD_LINES:
        raise TemplateProblem(
            f"wildcard __{name}__: {shown} has {len(lines)} lines; the limit is {defaults.MAX_WILDCARD_LINES}"
        )
    if not lines:
        raise TemplateProblem(f"wildcard __{name}__: {shown} is empty: write one value per line")
    for line in lines:
        bad = _control_char(line, allow_newlines=False)
        if bad:
            raise TemplateProblem(f"wildcard __{name}__: {shown} holds the control character {bad}: remove it")
    return lines


_REFERENCE = re.compile(re.escape(_WRAP) + r"(.+?)" + re.escape(_WRAP))


class _Wildcards:
    """The bounded, confined view of <data>/wildcards/ that the library's sampling reads
    through (`get_values`). Built on first use: a request without wildcards reads nothing."""

    def __init__(self, root: Path | None, deadline: float):
        self.root, self.deadline = root, deadline
        self._files: dict[str, Path] | None = None
        self._refused: dict[str, str] = {}
        self._values: dict[str, list[str]] = {}
        self._checked: set[str] = set()

    def files(self) -> dict[str, Path]:
        if self._files is None:
            self._files, self._refused = _scan(self.root) if self.root else ({}, {})
        return self._files

    def names(self, pattern: str) -> list[str]:
        """Wildcard names `pattern` stands for: the name itself, a glob (`colors/*`), or,
        as the library does, the same name in any folder (`**/pattern`)."""
        files = self.files()
        found = sorted(n for n in files if fnmatch.fnmatchcase(n, pattern))
        return found or sorted(n for n in files if fnmatch.fnmatchcase(n, f"**/{pattern}") or n.endswith("/" + pattern))

    def values(self, wildcard: str) -> list[str]:
        if time.monotonic() > self.deadline:
            raise TemplateProblem(f"expanding the templates took over {defaults.MAX_EXPAND_SECONDS:g} s: simplify them")
        name = re.sub(r"[\\/]+", "/", wildcard.strip()).removeprefix(_WRAP).removesuffix(_WRAP).strip("/")
        if not name or ".." in name.split("/") or "\\" in wildcard or name.startswith("/"):
            raise TemplateProblem(
                f"wildcard __{_clip(wildcard)}__: a wildcard names a file inside the wildcards folder"
            )
        if name in self._values:
            return self._values[name]
        found = self.names(name)
        if not found:
            if name in self._refused:
                raise TemplateProblem(f"wildcard __{_clip(name)}__: {self._refused[name]}")
            where = f"no file {WILDCARDS_FOLDER}/{_clip(name)}.txt in the data directory"
            if self.root is None:
                where = "wildcards are read from <data>/wildcards/, and this request has no data directory here"
            raise TemplateProblem(f"wildcard __{_clip(name)}__: {where}")
        values: list[str] = []
        for each in found:
            values += _read_lines(self.root, each, self.files()[each])
        self._check_nesting(name, found)
        self._values[name] = values
        return values

    def _check_nesting(self, name: str, found: list[str]) -> None:
        """Wildcards in wildcards nest at most MAX_WILDCARD_NESTING deep and never come back
        to themselves (the library would recurse until the stack ran out)."""
        limit = defaults.MAX_WILDCARD_NESTING

        def visit(each: str, path: list[str]) -> None:
            if each in path:
                chain = " -> ".join(f"__{n}__" for n in [*path[path.index(each) :], each])
                raise TemplateProblem(f"wildcard __{_clip(name)}__: refers to itself ({_clip(chain, 200)})")
            if len(path) >= limit:
                raise TemplateProblem(f"wildcard __{_clip(name)}__: wildcards nest more than {limit} deep")
            if each in self._checked:
                return
            for line in _read_lines(self.root, each, self.files()[each]):
                for ref in _REFERENCE.findall(line):
                    if "{" not in ref and ".." not in ref:
                        for inner in self.names(ref.strip("/")):
                            visit(inner, [*path, each])

        for each in found:
            visit(each, [])
            self._checked.add(each)


def _manager(wildcards: _Wildcards):
    from dynamicprompts.wildcards import WildcardManager
    from dynamicprompts.wildcards.values import WildcardValues

    class ConfinedWildcardManager(WildcardManager):
        """The library's manager with every lookup answered by `_Wildcards`."""

        def get_values(self, wildcard: str):
            return WildcardValues.from_items(wildcards.values(wildcard))

    return ConfinedWildcardManager()


# -- expansion ------------------------------------------------------------------------------


def _template_seed(seed: int, template_index: int) -> int:
    """Random expansions of template t draw from the request's seed and t: stable across
    re-runs, and two equal templates of one request still expand apart."""
    return (seed * 1_000_003 + template_index) % 2**32


def _expand_one(generators, template: str, index: int, label: str, how, seed: int, room: int) -> list[str]:
    """The expansions of one template (at most `room` + 1, so that too many is seen)."""
    from pyparsing import ParseBaseException

    combinatorial, make_random = generators
    try:
        if how == "all":
            out = combinatorial.generate(template, max_prompts=room + 1)
        else:
            out = make_random(_template_seed(seed, index)).generate(template, how)
    except TemplateProblem:
        raise
    except ParseBaseException as e:
        problem = " ".join(str(getattr(e, "msg", e)).split())
        raise RequestError(
            f"{label}: template syntax error at character {getattr(e, 'loc', 0) + 1} ({_clip(problem)}): "
            "variants are {a|b|c}, wildcards __name__"
        ) from None
    except RecursionError:
        raise RequestError(f"{label}: the template nests too deeply: simplify it") from None
    except Exception as e:  # noqa: BLE001 - the library's own errors, on untrusted input
        raise RequestError(f"{label}: cannot be expanded ({type(e).__name__}: {_clip(e, 120)})") from None
    return [p.strip() for p in out]


def expand_prompts(request: Request, wildcards: Path | None, seed: int | None = None) -> Request:
    """The request with its templates expanded (templates and counts recorded), or itself
    when it has none or is expanded already. RequestError, one line naming the template
    part, for anything wrong. `seed` stands in for an unfixed request seed (validation)."""
    if request.expanded or request.version < 2 or not any(is_template(p) for p in request.prompts):
        return request
    from dynamicprompts.generators import CombinatorialPromptGenerator, RandomPromptGenerator

    deadline = time.monotonic() + defaults.MAX_EXPAND_SECONDS
    manager = _manager(_Wildcards(wildcards, deadline))
    generators = (
        CombinatorialPromptGenerator(wildcard_manager=manager),
        lambda s: RandomPromptGenerator(wildcard_manager=manager, seed=s),
    )
    seed = request.seed if request.seed is not None else (seed or 0)
    limit, byte_limit = defaults.MAX_EXPANDED_PROMPTS, defaults.MAX_EXPANDED_PROMPT_BYTES
    prompts: list[str] = []
    counts: list[int] = []
    size = 0
    many = len(request.prompts) > 1
    for t, template in enumerate(request.prompts):
        label = f"prompts[{t}]" if many else "prompt"
        if not is_template(template):
            made = [template]
        else:
            made = _expand_one(generators, template, t, label, request.expand, seed, limit - len(prompts))
        if not made:
            raise RequestError(f"{label}: the template expands to nothing: give it at least one variant")
        if len(prompts) + len(made) > limit:
            raise RequestError(
                f"{label}: the templates expand to more than {limit} prompts: use expand: N for N random "
                "expansions, or fewer variants"
            )
        for p in made:
            if not p:
                raise RequestError(f"{label}: an expansion is empty (an empty variant?): every prompt needs text")
            if len(p) > MAX_PROMPT_CHARS:
                raise RequestError(
                    f"{label}: an expansion is {len(p)} characters long; the limit is {MAX_PROMPT_CHARS}"
                )
            bad = _control_char(p, allow_newlines=True)
            if bad:
                raise RequestError(f"{label}: an expansion holds the control character {bad}: remove it")
            size += len(p.encode())
        if size > byte_limit:
            raise RequestError(f"{label}: the expanded prompts are over {byte_limit} bytes together: expand fewer")
        if time.monotonic() > deadline:
            raise RequestError(f"expanding the templates took over {defaults.MAX_EXPAND_SECONDS:g} s: simplify them")
        prompts += made
        counts.append(len(made))
    images = len(prompts) * request.combinations * request.images
    if images > MAX_IMAGES:
        raise RequestError(
            "the templates expand to " + images_limit_message(len(prompts), request.combinations, request.images)
        )
    return dataclasses.replace(request, prompts=tuple(prompts), templates=request.prompts, expansions=tuple(counts))


def check_request(request: Request, wildcards: Path | None) -> Request:
    """Validate the request's templates by expanding them (refused in one line if bad);
    returns the request unchanged (acceptance expands it again, from the fixed seed)."""
    expand_prompts(request, wildcards, seed=0)
    return request
