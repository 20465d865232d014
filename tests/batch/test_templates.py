"""Prompt templates through dynamicprompts: expansion (all and N random, stable), wildcard
files confined to <data>/wildcards and bounded, and every failure one RequestError line."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdgen import defaults
from sdgen.batch.templates import expand_prompts, is_template
from sdgen.exceptions import RequestError
from sdgen.spool.intake import read_request_file
from sdgen.spool.request import parse_request
from sdgen.spool.split import split_request


@pytest.fixture
def wildcards(tmp_path):
    root = tmp_path / "data" / "wildcards"
    (root / "seasons").mkdir(parents=True)
    (root / "animal.txt").write_text("fox\nwolf\n# a comment\n\nbear\n")
    (root / "seasons" / "cold.txt").write_text("winter\nlate __animal__ autumn\n")
    return root


def expand(text, root, seed=None):
    return expand_prompts(parse_request(text), root, seed=seed)


def test_two_variant_groups_and_a_wildcard_expand_to_every_combination(wildcards):
    r = expand("prompt: a {red|blue} __animal__ in {snow|rain}\nseed: 1\n", wildcards)
    assert r.prompts == tuple(
        f"a {c} {a} in {w}" for c in ("red", "blue") for a in ("fox", "wolf", "bear") for w in ("snow", "rain")
    )
    assert r.templates == ("a {red|blue} __animal__ in {snow|rain}",) and r.expansions == (12,)
    assert r.template_of(5) == r.templates[0]


def test_nested_folders_and_wildcards_inside_wildcards(wildcards):
    r = expand("prompt: __seasons/cold__\n", wildcards)
    assert r.prompts == ("winter", "late fox autumn", "late wolf autumn", "late bear autumn")


def test_n_random_expansions_come_from_the_seed_and_are_stable(wildcards):
    text = "prompts: ['a {red|blue|green|grey} __animal__', plain text]\nexpand: 5\nseed: 42\n"
    first, again = expand(text, wildcards), expand(text, wildcards)
    assert first.prompts == again.prompts and len(first.prompts) == 6 and first.expansions == (5, 1)
    assert first.prompts[-1] == "plain text"
    other = expand(text.replace("seed: 42", "seed: 43"), wildcards)
    assert other.prompts != first.prompts


def test_expanded_prompts_become_the_request_and_its_tickets_carry_the_template(wildcards):
    r = expand("prompts: ['{a|b} cat', dog]\nimages: 2\nseed: 3\n", wildcards)
    tickets = split_request("20261126-000000-abcdef", r)
    assert [(t.prompt, t.template) for t in tickets] == [
        ("a cat", "{a|b} cat"),
        ("a cat", "{a|b} cat"),
        ("b cat", "{a|b} cat"),
        ("b cat", "{a|b} cat"),
        ("dog", "dog"),
        ("dog", "dog"),
    ] and r.images_total == 6
    import yaml

    again = parse_request(yaml.safe_dump(r.to_dict(), sort_keys=False))
    assert again == r and expand_prompts(again, None) is again  # recorded: never expanded again


def test_version_1_prompts_stay_plain_text(wildcards):
    r = expand("version: 1\nprompt: a {red|blue} __animal__\n", wildcards)
    assert r.prompts == ("a {red|blue} __animal__",) and not r.templates


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("a __bird__", "wildcard __bird__: no file wildcards/bird.txt in the data directory"),
        ("a {red|blue", "prompt: template syntax error"),
        ("{}", "an expansion is empty"),
        ("__../secret__", "wildcard __../secret__: a wildcard names a file inside the wildcards folder"),
        ("__empty__", "wildcards/empty.txt is empty"),
        ("__loop__", "refers to itself"),
        ("__link__", "wildcards/link.txt is a symbolic link"),
        ("__big__", "is over"),
    ],
)
def test_bad_templates_are_refused_in_one_line_naming_the_part(wildcards, prompt, message):
    (wildcards / "empty.txt").write_text("# only a comment\n")
    (wildcards / "loop.txt").write_text("x __loop2__\n")
    (wildcards / "loop2.txt").write_text("y __loop__\n")
    (wildcards.parent / "secret.txt").write_text("the password\n")
    os.symlink(wildcards.parent / "secret.txt", wildcards / "link.txt")
    (wildcards / "big.txt").write_text("x" * (defaults.MAX_WILDCARD_FILE_BYTES + 1))
    with pytest.raises(RequestError) as e:
        expand(f"prompt: '{prompt}'\n", wildcards)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "the password" not in str(e.value)


def test_expansions_past_the_limits_are_refused(wildcards, monkeypatch):
    with pytest.raises(RequestError, match="expand to more than 10000 prompts"):
        expand("prompt: '" + "{a|b}" * 14 + "'\n", wildcards)
    with pytest.raises(RequestError, match="the limit is 100000 per request"):
        expand("prompt: '{a|b|c|d} {e|f|g|h|i}'\nimages: 5001\n", wildcards)
    monkeypatch.setattr(defaults, "MAX_WILDCARD_LINES", 2)
    with pytest.raises(RequestError, match="has 3 lines; the limit is 2"):
        expand("prompt: __animal__\n", wildcards)


def test_intake_rejects_a_bad_template_with_the_data_directorys_wildcards(wildcards):
    inbox = wildcards.parent / "spool" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "good.yaml").write_text("prompt: a __animal__\n")
    assert read_request_file(inbox / "good.yaml").prompts == ("a __animal__",)  # checked, not expanded yet
    (inbox / "bad.yaml").write_text("prompt: a __bird__\n")
    with pytest.raises(RequestError, match=r"^bad.yaml: wildcard __bird__: no file wildcards/bird.txt"):
        read_request_file(inbox / "bad.yaml")


def test_plain_prompts_are_not_templates():
    assert not is_template("a photo #1 of a fox, 35mm")
    assert is_template("a {red|blue} fox") and is_template("a __animal__")


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="{}|_$#%:;,ab -~\\[]()0123456789", min_size=1, max_size=40))
def test_random_templates_expand_or_fail_with_one_request_error(tmp_path_factory, text):
    root = tmp_path_factory.getbasetemp() / "wc"
    root.mkdir(exist_ok=True)
    (root / "ab.txt").write_text("a\nb\n")
    request = parse_request("prompt: x\n")
    import dataclasses

    request = dataclasses.replace(request, prompts=(text,) if text.strip() else ("x",), seed=1)
    try:
        out = expand_prompts(request, root)
    except RequestError as e:
        assert "\n" not in str(e) and len(str(e)) < 1000
    else:
        assert all(p and len(p) <= 2000 for p in out.prompts) and len(out.prompts) <= defaults.MAX_EXPANDED_PROMPTS
