import pytest

from sdgen.exceptions import RequestError
from sdgen.spool.request import Request, parse_request, validate


def error_of(text: str) -> str:
    with pytest.raises(RequestError) as e:
        parse_request(text)
    return str(e.value)


def test_defaults_follow_the_original_example():
    r = parse_request("prompt: a cat\n")
    assert r == Request(prompts=("a cat",))
    assert (r.images, r.batch_size, r.steps, r.width, r.height, r.guidance) == (9, 1, 50, 512, 512, 7.5)
    assert (r.model, r.engine, r.weights, r.priority, r.seed) == ("sd-v1", "keras-cv", "pretrained", 0, None)


def test_full_request_round_trips_through_its_normalized_form():
    text = """
version: 1
prompts: [a cat, a dog]
negative_prompt: blurry
images: 10
batch_size: 3
steps: 20
width: 768
height: 256
guidance: 9
seed: 42
model: sd-v2
engine: dry-run
weights: random
priority: 5
name: pets
experiment: zoo
"""
    r = parse_request(text)
    assert r.prompts == ("a cat", "a dog") and r.images_total == 20 and r.guidance == 9.0
    assert validate(r.to_dict()) == r


@pytest.mark.parametrize(
    "text, expected",
    [
        ("images: 3\n", "missing prompt"),
        ("prompt: ''\n", "prompt must not be empty"),
        ("prompt: '   '\n", "prompt must not be empty"),
        ("prompt: 12\n", "prompt must be a string"),
        ("prompt: a\nprompts: [b]\n", "either prompt"),
        ("prompts: []\n", "prompts must be a non-empty list"),
        ("prompts: [a, '']\n", "prompts[1] must be a non-empty string"),
        ("prompts: [a, 3]\n", "prompts[1] must be a non-empty string"),
        ("prompt: a\nimages: 0\n", "images must be from 1 to 100000, got 0"),
        ("prompt: a\nimages: 100001\n", "images must be from 1 to 100000"),
        ("prompt: a\nimages: '3'\n", "images must be a whole number"),
        ("prompt: a\nimages: 2.5\n", "images must be a whole number"),
        ("prompt: a\nimages: true\n", "images must be a whole number"),
        ("prompt: a\nbatch_size: 0\n", "batch_size must be from 1 to 64"),
        ("prompt: a\nbatch_size: 65\n", "batch_size must be from 1 to 64"),
        ("prompt: a\nsteps: 0\n", "steps must be from 1 to 1000"),
        ("prompt: a\nsteps: 1001\n", "steps must be from 1 to 1000"),
        ("prompt: a\nwidth: 320\n", "width 320 is not a multiple of 128: use 256 or 384"),
        ("prompt: a\nheight: 200\n", "height 200 is not a multiple of 128: use 128 or 256"),
        ("prompt: a\nwidth: 64\n", "width must be from 128 to 2048"),
        ("prompt: a\nwidth: 4096\n", "width must be from 128 to 2048"),
        ("prompt: a\nheight: big\n", "height must be a whole number of pixels"),
        ("prompt: a\nguidance: -1\n", "guidance must be from 0 to 50"),
        ("prompt: a\nguidance: 51\n", "guidance must be from 0 to 50"),
        ("prompt: a\nguidance: .nan\n", "guidance must be a number"),
        ("prompt: a\nguidance: high\n", "guidance must be a number"),
        ("prompt: a\nseed: -1\n", "seed must be from 0 to 4294967295"),
        ("prompt: a\nseed: 4294967296\n", "seed must be from 0 to 4294967295"),
        ("prompt: a\nseed: abc\n", "seed must be a whole number"),
        ("prompt: a\nmodel: sd-xl\n", "model must be one of sd-v1, sd-v2"),
        ("prompt: a\nengine: torch\n", "engine must be one of keras-cv, dry-run"),
        ("prompt: a\nweights: mine\n", "weights must be one of pretrained, random"),
        ("prompt: a\npriority: 1001\n", "priority must be from -1000 to 1000"),
        ("prompt: a\npriority: high\n", "priority must be a whole number"),
        ("prompt: a\nname: [x]\n", "name must be a string"),
        ('prompt: a\nname: "a\\nb"\n', "name must be a single line"),
        ("prompt: a\nexperiment: 5\n", "experiment must be a string"),
        ("prompt: a\nnegative_prompt: 5\n", "negative_prompt must be a string"),
        ("prompt: a\nversion: 3\n", "version must be 1 or 2"),
        ("prompt: a\nimgaes: 3\n", "unknown key 'imgaes': did you mean 'images'?"),
        ("prompt: a\nzzz: 3\n", "unknown key 'zzz'; allowed keys:"),
        ("prompts: [a, b]\nimages: 60000\n", "2 prompts x 60000 images = 120000 images"),
        ("prompt: " + "x" * 2001 + "\n", "prompt is 2001 characters long"),
    ],
)
def test_each_bad_field_has_its_own_message(text, expected):
    assert expected in error_of(text)


def test_all_errors_are_reported_together_on_one_line():
    msg = error_of("prompt: a\nimages: 0\nwidth: 320\nsteps: 0\n")
    assert "images" in msg and "width" in msg and "steps" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "text, expected",
    [
        ("prompt: [unclosed\n", "invalid YAML at line"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("just a string\n", "must be a YAML mapping"),
        ("", "the request is empty"),
        ("prompt: !!python/object/apply:os.system ['touch /tmp/pwned']\n", "unsupported YAML tag"),
        ("a: &x [1]\nb: *x\n", "aliases"),
    ],
)
def test_bad_yaml_is_a_clear_error(text, expected):
    assert expected in error_of(text)


def test_seed_is_fixed_once_and_kept():
    r = parse_request("prompt: a\n").with_seed()
    assert r.seed is not None and 0 <= r.seed < 2**32
    assert r.with_seed() is r
