"""X/Y grids from a dry-run sweep's finished images: size = cells + label bands, labels
drawn, a third swept field gives one grid per value, missing cells drawn as such, big grids
scaled down within the bound."""

import pytest

from sdgen.batch.grid import choose_axes, request_grids
from sdgen.batch.outputs import finished_images
from sdgen.exceptions import UserError
from tests.conftest import DRY, generate

RID = "20261126-000000-aaaaaa"
SWEEP = DRY + "prompt: a {red|blue} fox\nimages: 2\nseed: 7\nsweep: {guidance: [5, 9], steps: [2, 3, 4]}\n"


def grids_of(spool, text, **kw):
    request = generate(spool, text, RID)
    images = finished_images(spool, RID, request)
    return request, images, request_grids(request, images, **kw)


def ink_in(image, box) -> int:
    """Pixels in `box` that are not the white background."""
    data = image.crop(box).tobytes()
    return sum(1 for k in range(0, len(data), 3) if data[k : k + 3] != b"\xff\xff\xff")


def test_a_2x3_sweep_grid_has_cells_plus_label_bands_and_its_labels(spool):
    request, images, (grids, fixed) = grids_of(spool, SWEEP)
    assert len(images) == 2 * 6 * 2
    [(z, grid)] = grids
    assert z is None and grid.missing == 0
    assert grid.x_labels == ("guidance=5.0", "guidance=9.0")
    assert grid.y_labels == ("steps=2", "steps=3", "steps=4")
    assert grid.cell == (128, 128)
    assert grid.image.size == (grid.left + 2 * 128, grid.top + 3 * 128)
    assert grid.left > 0 and grid.top > 0
    for xi in range(2):  # every column label and row label band has text drawn in it
        assert ink_in(grid.image, (grid.left + xi * 128, 0, grid.left + (xi + 1) * 128, grid.top)) > 20
    for yi in range(3):
        assert ink_in(grid.image, (0, grid.top + yi * 128, grid.left, grid.top + (yi + 1) * 128)) > 20
    assert fixed == "prompt 0, image 0"
    # the cell at (guidance=9, steps=4) is that image: prompt 0, image 0 of combination 5
    cell = grid.image.crop((grid.left + 128, grid.top + 256, grid.left + 256, grid.top + 384))
    from PIL import Image

    [expected] = [
        i for i in images if i.ticket.combination_index == 5 and i.spec.prompt_index == 0 and i.spec.image_index == 0
    ]
    assert cell.tobytes() == Image.open(expected.path).convert("RGB").tobytes()


def test_a_third_swept_field_makes_one_grid_per_value_and_missing_cells_say_so(spool):
    sweep = "sweep: {guidance: [5, 9], steps: [2, 3], size: [128x128, 256x128]}"
    text = f"engine: dry-run\nprompt: a fox\nimages: 1\nseed: 1\n{sweep}\n"
    request = generate(spool, text, RID)
    images = finished_images(spool, RID, request)
    images[0].path.unlink()  # a finished image gone: its cell is drawn as missing
    images = finished_images(spool, RID, request)
    grids, _ = request_grids(request, images)
    assert [z for z, _ in grids] == ["size=128x128", "size=256x128"]
    assert [g.missing for _, g in grids] == [1, 0]
    assert all(g.cell == (256, 128) for _, g in grids)  # the largest image sets the cell


def test_defaults_and_bad_axes(spool):
    request = generate(spool, DRY + "prompts: [a, b]\nimages: 2\nseed: 1\nsweep: {guidance: [5, 9]}\n", RID)
    x, y, z = choose_axes(request, None, None)
    assert (x.name, y.name, z) == ("guidance", "prompt", None)
    x, y, _ = choose_axes(request, "image", None)
    assert (x.name, y.name) == ("image", "guidance")
    with pytest.raises(
        UserError, match="unknown field 'cfg' for --x: this request's grids take guidance, prompt, image"
    ):
        choose_axes(request, "cfg", None)
    with pytest.raises(UserError, match="one axis"):
        choose_axes(request, "guidance", "guidance")


def test_a_big_grid_is_scaled_down_within_the_bound(spool):
    request, images, _ = grids_of(spool, SWEEP)
    [(_, grid)], _ = request_grids(request, images, x="steps", y="guidance", max_side=600)
    assert max(grid.image.size) <= 600 and grid.cell[0] < 128
    assert grid.image.size == (grid.left + 3 * grid.cell[0], grid.top + 2 * grid.cell[1])
