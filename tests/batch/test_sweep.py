"""Sweeps: the cross product with zipped groups, computed per index, and the split over it."""

import itertools

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sdgen.batch.sweep import axes, combination_at, combination_count
from sdgen.exceptions import RequestError
from sdgen.spool.progress import ticket_size
from sdgen.spool.request import parse_request
from sdgen.spool.split import image_seed, split_request, ticket_at, ticket_count, ticket_images

RID = "20261126-000000-abcdef"


def request(text):
    return parse_request(text)


def test_two_guidance_by_two_steps_by_three_images_make_twelve_images():
    r = request("prompt: a fox\nimages: 3\nseed: 100\nsweep: {guidance: [5, 9], steps: [10, 20]}\n")
    tickets = split_request(RID, r)
    assert r.combinations == 4 and r.images_total == 12 and len(tickets) == 12
    got = {(t.guidance, t.steps, i.image_index, i.seed) for t in tickets for i in t.images}
    assert got == {(g, s, i, 100 + i) for g in (5.0, 9.0) for s in (10, 20) for i in range(3)}
    assert tickets[0].combination == {"guidance": 5.0, "steps": 10} and tickets[0].combination_index == 0
    assert tickets[-1].combination == {"guidance": 9.0, "steps": 20} and tickets[-1].combination_index == 3


def test_zip_moves_lists_together_and_multiplies_the_rest():
    r = request(
        "prompt: a\nimages: 1\nseed: 1\nsweep: {guidance: [5, 9], steps: [10, 20], model: [sd-v1, sd-v2]}\n"
        "zip: [[guidance, steps]]\n"
    )
    combos = [r.combination(c) for c in range(r.combinations)]
    assert combos == [
        {"guidance": 5.0, "steps": 10, "model": "sd-v1"},
        {"guidance": 5.0, "steps": 10, "model": "sd-v2"},
        {"guidance": 9.0, "steps": 20, "model": "sd-v1"},
        {"guidance": 9.0, "steps": 20, "model": "sd-v2"},
    ]


def test_size_seed_and_negative_prompt_sweeps_set_the_ticket():
    r = request(
        "prompt: a\nimages: 2\nseed: 1\nsweep: {size: [512x512, 768x384], seed: [7, 4294967295], "
        'negative_prompt: ["", blurry]}\n'
    )
    last = [t for t in split_request(RID, r) if t.combination_index == r.combinations - 1]
    t = last[0]
    assert (t.width, t.height, t.negative_prompt) == (768, 384, "blurry")
    # seed+i of the combination's own seed, wrapped at 2**32
    assert [i.seed for t in last for i in t.images] == [4294967295, 0]
    assert t.combination == {"size": "768x384", "seed": 4294967295, "negative_prompt": "blurry"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("sweep: {sampler: [ddim]}", "samplers are not implemented yet"),
        ("sweep: {prompt: [a, b]}", "sweep 'prompt': not a field a sweep can vary"),
        ("sweep: {guidance: [1, 2], steps: [1]}\nzip: [[guidance, steps]]", "zipped lists must have equal lengths"),
        ("sweep: {guidance: [1, 2]}\nzip: [[guidance, steps]]", "steps is not in the sweep"),
        ("sweep: {guidance: []}", "non-empty list"),
        ("sweep: {guidance: [1, 1]}", "twice"),
        ("sweep: {size: [320x512]}", "not a multiple of 128"),
        ("sweep: {size: [big]}", "write WIDTHxHEIGHT"),
        ("steps: 3\nsweep: {steps: [1, 2]}", "steps is both set and swept"),
        ("sweep: {size: [512x512], width: [512]}", "sweep size and width/height together"),
        ("images: 50000\nsweep: {guidance: [1, 2, 3]}", "150000 images; the limit is 100000"),
        ("sweep: {model: [sd-v9]}", "sweep model must be one of"),
        ("zip: [[guidance, steps]]", "add a sweep"),
        ("version: 1\nsweep: {steps: [1, 2]}", "needs schema version 2"),
    ],
)
def test_bad_sweeps_are_one_line_each(text, message):
    with pytest.raises(RequestError) as e:
        request(f"prompt: a\n{text}\n")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_sweep_survives_request_yaml_in_order():
    r = request("prompt: a\nseed: 3\nsweep: {steps: [20, 10], guidance: [5, 7.5]}\nzip: [[steps, guidance]]\n")
    again = parse_request(yaml.safe_dump(r.to_dict(), sort_keys=False))
    assert again == r and "steps" not in r.to_dict()


FIELDS = {
    "guidance": st.lists(st.sampled_from([0, 1.5, 5, 7.5, 12, 50]), min_size=1, max_size=4, unique=True),
    "steps": st.lists(st.integers(1, 1000), min_size=1, max_size=4, unique=True),
    "seed": st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3, unique=True),
    "size": st.lists(
        st.sampled_from(["128x128", "256x128", "512x512", "768x512"]), min_size=1, max_size=3, unique=True
    ),
    "negative_prompt": st.lists(st.sampled_from(["", "blurry", "a, b"]), min_size=1, max_size=3, unique=True),
    "model": st.lists(st.sampled_from(["sd-v1", "sd-v2"]), min_size=1, max_size=2, unique=True),
}


@st.composite
def sweep_specs(draw):
    names = draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=4, unique=True))
    sweep = {n: draw(FIELDS[n]) for n in names}
    zipped = []
    if len(names) >= 2 and draw(st.booleans()):  # zip two fields, cut to one length
        a, b = names[:2]
        k = min(len(sweep[a]), len(sweep[b]))
        sweep[a], sweep[b] = sweep[a][:k], sweep[b][:k]
        zipped = [[a, b]]
    return sweep, zipped


@settings(max_examples=60, deadline=None)
@given(
    spec=sweep_specs(),
    prompts=st.integers(1, 3),
    images=st.integers(1, 5),
    batch=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_ticket_index_gives_exactly_the_cross_product_with_the_right_seeds(spec, prompts, images, batch, seed):
    sweep, zipped = spec
    text = yaml.safe_dump(
        {
            "prompts": [f"p{i}" for i in range(prompts)],
            "images": images,
            "batch_size": batch,
            "seed": seed,
            "sweep": sweep,
            **({"zip": zipped} if zipped else {}),
        },
        sort_keys=False,
    )
    r = parse_request(text)
    # the expected combinations: zipped lists move together, the rest multiply
    group_of = {n: tuple(zipped[0]) for n in (zipped[0] if zipped else [])}
    order = []
    for n in sweep:
        g = group_of.get(n, (n,))
        if g not in order:
            order.append(g)
    assert axes(r.sweep, r.zip) == order
    expected = [
        {n: v for g, pick in zip(order, picks) for n, v in zip(g, pick)}
        for picks in itertools.product(*[list(zip(*[sweep[n] for n in g])) for g in order])
    ]
    assert combination_count(r.sweep, r.zip) == len(expected) == r.combinations
    assert [combination_at(r.sweep, r.zip, c) for c in range(len(expected))] == expected  # 5 == 5.0
    tickets = [ticket_at(RID, r, i) for i in range(ticket_count(r))]
    assert sum(len(t.images) for t in tickets) == r.images_total == prompts * len(expected) * images
    seen = set()
    for t in tickets:
        assert len(t.images) == ticket_size(t.index, images, batch) == ticket_images(r, t.index)
        settings_ = r.settings(t.combination)
        assert (t.steps, t.width, t.height, t.guidance, t.model, t.negative_prompt) == (
            settings_["steps"],
            settings_["width"],
            settings_["height"],
            settings_["guidance"],
            settings_["model"],
            settings_["negative_prompt"],
        )
        for spec_ in t.images:
            assert spec_.seed == image_seed(settings_["seed"], spec_.image_index)
            seen.add((t.combination_index, spec_.prompt_index, spec_.image_index))
    assert seen == {(c, p, i) for c in range(len(expected)) for p in range(prompts) for i in range(images)}
