from sdgen.spool.progress import request_state, ticket_size
from sdgen.spool.request import parse_request
from sdgen.spool.split import image_seed, split_request


def test_ten_images_at_three_per_ticket_make_3_3_3_1():
    r = parse_request("prompt: a\nimages: 10\nbatch_size: 3\nseed: 100\n")
    tickets = split_request("20261126-000000-abcdef", r)
    assert [len(t.images) for t in tickets] == [3, 3, 3, 1]
    assert [i.image_index for t in tickets for i in t.images] == list(range(10))
    assert [i.seed for t in tickets for i in t.images] == list(range(100, 110))
    assert sum(len(t.images) for t in tickets) == r.images_total


def test_every_prompt_gets_its_own_images_and_seeds():
    r = parse_request("prompts: [a, b]\nimages: 4\nbatch_size: 4\nseed: 7\n")
    tickets = split_request("20261126-000000-abcdef", r)
    assert [(t.prompt, [i.seed for i in t.images]) for t in tickets] == [("a", [7, 8, 9, 10]), ("b", [7, 8, 9, 10])]
    assert [t.index for t in tickets] == [0, 1]
    assert len({t.name for t in tickets}) == 2


def test_seeds_wrap_at_2_pow_32():
    assert image_seed(2**32 - 1, 0) == 2**32 - 1
    assert image_seed(2**32 - 1, 2) == 1


def test_ticket_size_matches_the_split():
    for images, batch, prompts in [(10, 3, 1), (9, 1, 2), (7, 7, 3), (100, 8, 2)]:
        r = parse_request(f"prompts: {['p'] * prompts}\nimages: {images}\nbatch_size: {batch}\nseed: 1\n")
        tickets = split_request("20261126-000000-abcdef", r)
        assert [ticket_size(t.index, images, batch) for t in tickets] == [len(t.images) for t in tickets]


def test_request_state_from_ticket_places():
    assert request_state({"pending": [0, 1]}, 2, False) == "pending"
    assert request_state({"pending": [0], "running": [1]}, 2, False) == "running"
    assert request_state({"done": [0, 1]}, 2, False) == "done"
    assert request_state({"done": [0], "failed": [1]}, 2, False) == "failed"
    assert request_state({"done": [0], "held": [1]}, 2, False) == "failed"
    assert request_state({"pending": [0], "failed": [1]}, 2, False) == "running"
    assert request_state({"pending": [0, 1]}, 2, True) == "cancelled"
    # a request whose tickets are still being published is not failed yet
    assert request_state({"failed": [0]}, 2, False) == "running"
