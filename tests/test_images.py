"""fashion_common/images.py on real-world files: the dataset's framing, inversion, size budget, 16-bit range, EXIF.

The "photo" test turns Fashion-MNIST's own test images into what a user would photograph (upscaled,
dark on white, off-centre on a larger canvas; RGB, RGBA with transparency, JPEG) and checks that
`predict` classifies them as it classifies the originals, with a model trained briefly on the real data.
"""

from __future__ import annotations

import json
import struct
import time
import zlib

import numpy as np
import pytest
from clitools import assert_ok, assert_one_error_line, cli, needs_data
from PIL import Image

from fashion_common.errors import ImageError
from fashion_common.images import GARMENT_SIZE, MAX_PIXELS, border_is_lighter, load_image, prepare_image


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes) -> bytes:
    """A PNG written by hand: PIL cannot write 16-bit RGB, and a bomb header must not need the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw_rows)) + chunk(b"IEND", b"")


def garment_drawing(path, size=(90, 60)):
    """A dark shirt outline on white paper, as someone would draw or photograph it: body and two sleeves."""
    h, w = size
    pixels = np.full((h, w), 250, np.uint8)
    pixels[20:80, 18:42] = 40  # body
    pixels[20:45, 6:18] = 40  # left sleeve
    pixels[20:45, 42:54] = 40  # right sleeve
    Image.fromarray(pixels).save(path)
    return path


# ----------------------------------------------------------------------------- inversion


def test_a_dark_on_white_garment_drawing_is_inverted_to_light_on_black(tmp_path):
    image, inverted = prepare_image(garment_drawing(tmp_path / "shirt.png"))
    assert inverted
    # After inversion the paper is black and the body light: (1 - 40/255 - 5/255) / (1 - 5/255) = 0.84,
    # the paper's level (1 - 250/255) taken off as the dataset's black background.
    assert image[0, 0] == 0.0 and image[:, 0].max() < 0.02
    assert abs(image[16, 14] - (1 - 40 / 255 - 5 / 255) / (1 - 5 / 255)) < 0.02
    assert prepare_image(tmp_path / "shirt.png", invert="no")[1] is False
    assert prepare_image(tmp_path / "shirt.png", invert="yes")[1] is True


def test_a_light_on_black_image_is_not_inverted_by_auto_but_is_by_yes(tmp_path):
    pixels = np.zeros((40, 40), np.uint8)
    pixels[10:30, 12:28] = 220
    Image.fromarray(pixels).save(tmp_path / "light.png")
    auto, inverted = prepare_image(tmp_path / "light.png")
    forced, _ = prepare_image(tmp_path / "light.png", invert="yes")
    assert not inverted and auto[14, 14] > 0.8
    assert forced[14, 14] < 0.2


@needs_data
def test_real_dataset_images_written_to_png_are_never_inverted_and_come_back_unchanged(tmp_path):
    from fashion_common.data import load_fashion_mnist

    data = load_fashion_mnist()
    for i in range(0, 10_000, 50):  # 200 test images, every class
        Image.fromarray(data.test_images[i]).save(tmp_path / f"{i}.png")
        image, inverted = prepare_image(tmp_path / f"{i}.png")
        assert not inverted, i
        # 28x28 in, 28x28 out: the pixels are exactly the dataset's /255 (no resampling change).
        np.testing.assert_array_equal(image, data.test_images[i] / np.float32(255))


@needs_data
def test_the_auto_rule_inverts_none_of_the_70000_dataset_images():
    from fashion_common.data import load_fashion_mnist

    data = load_fashion_mnist()
    for images in (data.test_images, data.train_images):
        flagged = [i for i in range(len(images)) if border_is_lighter(images[i] / np.float32(255))]
        assert flagged == []


# ----------------------------------------------------------------------------- size budget


def test_a_tiny_file_declaring_a_huge_picture_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(30_000, 30_000, 8, 0, b"\x00" * 100))  # ~100 bytes on disk, 900 Mpx declared
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"bomb\.png is too large.*the limit is 36,000,000 pixels"):
        load_image(path)
    assert time.perf_counter() - start < 1.0  # nothing was decoded


def test_padding_to_a_square_counts_against_the_budget(tmp_path):
    side = int(MAX_PIXELS**0.5) + 1  # a thin strip: few pixels, but a square above the budget
    path = tmp_path / "strip.png"
    path.write_bytes(png_bytes(side, 2, 8, 0, (b"\x00" + b"\x00" * side) * 2))
    assert side * 2 < MAX_PIXELS
    with pytest.raises(ImageError, match=f"a {side}x{side} square on its longer edge"):
        load_image(path)


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_predict_refuses_a_bomb_with_one_error_line_and_no_pil_warning(tmp_path, recwarn):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(100_000, 100_000, 8, 0, b"\x00" * 100))  # above PIL's own DecompressionBombError
    assert_one_error_line(
        cli("predict", "--backend", "torch", tmp_path / "c.safetensors", path), "bomb.png is too large"
    )
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


# ----------------------------------------------------------------------------- bit depth and orientation


def test_mid_grey_16_bit_gray_and_rgb_give_the_same_input_as_mid_grey_8_bit(tmp_path):
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(tmp_path / "grey8.png")
    Image.fromarray(np.full((32, 32), 128 * 257, np.uint16)).save(
        tmp_path / "grey16.png"
    )  # I;16: 32896 / 65535 == 128 / 255
    rows = b"".join(
        b"\x00" + np.full((32, 3), 32768, ">u2").tobytes() for _ in range(32)
    )  # plain 2**15: rounds to 128 too
    (tmp_path / "rgb16.png").write_bytes(png_bytes(32, 32, 16, 2, rows))
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"  # the mode that convert("L") would clip to 255
    reference = load_image(tmp_path / "grey8.png", invert="no")
    assert abs(reference[14, 14] - 128 / 255) < 1e-6
    for name in ("grey16.png", "rgb16.png"):
        np.testing.assert_array_equal(load_image(tmp_path / name, invert="no"), reference)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, :10] = 255  # a bright band on the left of a wide picture: 20 rows x 10 columns
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    image.save(tmp_path / "plain.jpg", quality=95)
    plain, rotated = load_image(tmp_path / "plain.jpg", invert="no"), load_image(tmp_path / "rotated.jpg", invert="no")
    # The band is the garment: cropped to it, 20 x 10 -> 28 x 14, centred. Plain: tall, all rows lit, the side
    # columns dark. Rotated 90 deg clockwise: 10 x 20 -> 14 x 28, wide, all columns lit, the top rows dark.
    assert plain[1:27, 13].min() > 0.8 and plain[:, :6].max() < 0.1
    assert rotated[13, 1:27].min() > 0.8 and rotated[:6, :].max() < 0.1


# ----------------------------------------------------------------------------- the dataset's framing


@needs_data
def test_the_dataset_garments_fill_the_longer_side_so_garment_size_is_28():
    from fashion_common.data import load_fashion_mnist

    images = load_fashion_mnist().train_images  # (60000, 28, 28)
    lit = images > 0
    rows, cols = lit.any(axis=2), lit.any(axis=1)  # (60000, 28) each

    def extent(a):
        first, last = a.argmax(axis=1), a.shape[1] - 1 - a[:, ::-1].argmax(axis=1)
        return last - first + 1

    longest = np.maximum(extent(rows), extent(cols))
    # measured: 98.3 % span all 28 pixels, 99.97 % at least 27
    assert (longest == 28).mean() > 0.98 and (longest >= 27).mean() > 0.999
    assert GARMENT_SIZE == 28


def test_an_off_centre_garment_on_a_large_white_canvas_is_cropped_scaled_to_28_and_centred(tmp_path):
    canvas = np.full((400, 600), 255, np.uint8)
    canvas[30:230, 400:500] = 20  # a dark 200 x 100 garment near the top-right corner
    Image.fromarray(canvas).save(tmp_path / "photo.png")
    image, inverted = prepare_image(tmp_path / "photo.png")
    assert inverted
    lit = np.argwhere(image > 0.5)  # (n, 2) row, col
    # 200 x 100 -> 28 x 14, centred: rows 0..27, columns 7..20
    assert lit[:, 0].min() == 0 and lit[:, 0].max() == 27
    assert lit[:, 1].min() == 7 and lit[:, 1].max() == 20
    assert image[:, :6].max() == 0.0 and image[:, 22:].max() == 0.0


def test_a_dark_garment_on_a_transparent_background_is_inverted_and_the_background_is_black(tmp_path):
    rgba = np.zeros((120, 80, 4), np.uint8)  # transparent black everywhere
    rgba[10:110, 20:60] = (30, 30, 60, 255)  # an opaque dark-blue trouser leg, 100 x 40
    Image.fromarray(rgba, "RGBA").save(tmp_path / "trouser.png")
    image, inverted = prepare_image(tmp_path / "trouser.png")
    assert inverted
    # the leg: gray of (30, 30, 60) is 33 -> 1 - 33/255 = 0.87, filling 28 x 11 centred (columns 8..18)
    assert abs(image[14, 13] - (1 - 33 / 255)) < 0.02
    assert image[:, :7].max() == 0.0 and image[:, 20:].max() == 0.0
    assert prepare_image(tmp_path / "trouser.png", invert="no")[0].max() < 0.2  # the user said no: dark stays dark


def test_a_near_white_garment_on_transparency_is_not_inverted_so_it_stays_visible(tmp_path):
    rgba = np.zeros((60, 60, 4), np.uint8)
    rgba[5:55, 15:45] = (245, 245, 245, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "white_shirt.png")
    image, inverted = prepare_image(tmp_path / "white_shirt.png")
    assert not inverted and image[14, 14] > 0.95 and image[0, 0] == 0.0


# ----------------------------------------------------------------------------- photos of the dataset's images

PHOTO_KINDS = ("rgb", "rgba", "jpeg")
PHOTO_AGREEMENT, PHOTO_AGREEMENT_PER_KIND = 0.93, 0.90  # see the test


def dataset_photo(image: np.ndarray, kind: str, rng: np.random.Generator) -> Image.Image:
    """A (28, 28) dataset image as a user's picture: upscaled 4-8x, dark on white, off-centre on a larger canvas."""
    side = 28 * int(rng.integers(4, 9))
    big = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC))  # (side, side) uint8
    h, w = side + int(rng.integers(40, 200)), side + int(rng.integers(40, 200))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    if kind == "rgba":  # a cut-out: the dark garment opaque, the rest transparent white
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., :3] = 255
        rgba[top : top + side, left : left + side, :3] = (255 - big)[..., None]
        rgba[top : top + side, left : left + side, 3] = np.where(big > 0, 255, 0)
        return Image.fromarray(rgba, "RGBA")
    canvas = np.full((h, w), 255, np.uint8)
    canvas[top : top + side, left : left + side] = 255 - big  # negated: dark garment on white paper
    return Image.fromarray(np.repeat(canvas[..., None], 3, axis=2), "RGB")


@pytest.mark.data
@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_photos_of_300_test_images_classify_as_the_originals_do(tmp_path):
    import torch

    from fashion_common.data import load_fashion_mnist

    test = load_fashion_mnist()
    ckpt = tmp_path / "model.safetensors"
    # the accuracy recipe, 1 epoch on the real training set (83.5 % test accuracy): 16-30 s on one thread of the
    # busy 2-core CPU, but 184 s with torch's default 2 threads there (they spin against each other and the load)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert_ok(cli("train", "--backend", "torch", "--epochs", 1, "--quiet", "--out", ckpt))
    finally:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    indices = list(range(0, 10_000, 33))[:300]  # every class, 100 photos of each kind
    files = []
    for j, i in enumerate(indices):
        kind = PHOTO_KINDS[j % 3]
        path = tmp_path / f"{i}.{'jpg' if kind == 'jpeg' else 'png'}"
        photo = dataset_photo(test.test_images[i], kind, rng)
        photo.save(path, quality=90) if kind == "jpeg" else photo.save(path)
        files.append(path)

    def classes(*args):
        result = cli("predict", "--backend", "torch", ckpt, *args, "--json", "--top", 1)
        assert_ok(result)
        return [entry["predictions"][0]["label"] for entry in json.loads(result.stdout)["images"]]

    photos, originals = classes(*files), classes("--test-index", *indices)
    same = np.array(photos) == np.array(originals)  # (300,)
    # Measured on these 300 photos: 95.3 % with this 1-epoch model (RGB 96, RGBA 96, JPEG 94 %), 96.7 % with the
    # recipe at 3 epochs. The pipeline gives the original back up to resampling (mean |pixel diff| 0.05), so only
    # images whose top two classes nearly tie may flip; a less trained model has more such ties. The run is seeded
    # (model and photos), so the bounds only absorb platform float differences: 93 % is 2 standard errors below
    # 95.3 % at n = 300, 90 % per kind (n = 100). The old pad-and-resize path reached 59.5 % on 400 such photos
    # (RGB 44 %, 3-epoch model), far below either.
    assert same.mean() >= PHOTO_AGREEMENT, same.mean()
    for k, kind in enumerate(PHOTO_KINDS):
        assert same[k::3].mean() >= PHOTO_AGREEMENT_PER_KIND, (kind, same[k::3].mean())


# ----------------------------------------------------------------------------- photos on real backgrounds


def photo_of_a_box(size=(300, 240), box=(60, 200, 80, 140), shadow=False, seed=0):
    """A dark 140 x 60 garment on a light-grey gradient (200 -> 250 across) with sensor noise (sigma 3), as uint8."""
    h, w = size
    paper = np.linspace(200.0, 250.0, w)[None, :] * np.ones((h, 1))  # (h, w): light falling off to the left
    top, bottom, left, right = box
    if shadow:  # soft, 35 % of the light, shifted 6 px down-right and blurred
        from PIL import ImageFilter

        silhouette = np.zeros((h, w), np.uint8)
        silhouette[top + 6 : bottom + 6, left + 6 : right + 6] = 255
        blurred = np.asarray(Image.fromarray(silhouette).filter(ImageFilter.GaussianBlur(5)), np.float32) / 255
        paper = paper * (1 - 0.35 * blurred)
    photo = paper.copy()
    photo[top:bottom, left:right] = 40.0
    photo += np.random.default_rng(seed).normal(0.0, 3.0, (h, w))
    return np.clip(np.round(photo), 0, 255).astype(np.uint8)


def lit_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(first row, last row, first column, last column) of the pixels above 0.5."""
    lit = np.argwhere(image > 0.5)
    return int(lit[:, 0].min()), int(lit[:, 0].max()), int(lit[:, 1].min()), int(lit[:, 1].max())


def test_a_garment_on_a_grey_gradient_with_sensor_noise_is_cropped_to_itself_not_to_the_frame(tmp_path):
    Image.fromarray(photo_of_a_box()).save(tmp_path / "photo.png")
    image, inverted = prepare_image(tmp_path / "photo.png")
    assert inverted
    # 140 x 60 -> 28 x 12, centred: rows 0..27, columns 8..19 (the border-colour crop kept most of the frame:
    # the garment came out about 8 px tall under a grey band)
    assert lit_box(image) == (0, 27, 8, 19)
    assert image[:, :7].max() < 0.05 and image[:, 21:].max() < 0.05  # the paper is black, gradient and all
    assert abs(float(np.median(image[4:24, 10:18])) - (1 - 40 / 225)) < 0.03  # the garment's ink against its paper


def test_a_soft_shadow_does_not_widen_the_garment(tmp_path):
    Image.fromarray(photo_of_a_box(shadow=True)).save(tmp_path / "shadow.png")
    image, _ = prepare_image(tmp_path / "shadow.png")
    first_row, last_row, first_col, last_col = lit_box(image)
    # Without the shadow the garment is rows 0..27, columns 8..19 (above). The shadow (35 % of the light, 6 px
    # down-right, blurred) is darker than the threshold next to the garment, so it joins the box: measured rows
    # 0..25, columns 7..17, the garment 2 px shorter. The border-colour crop gave rows 6..18, columns 10..15.
    assert first_row == 0 and last_row >= 25 and 7 <= first_col <= 8 and 17 <= last_col <= 19
    assert abs(float(np.median(image[4:22, 10:17])) - (1 - 40 / 225)) < 0.03


def test_the_background_fit_follows_a_gradient_and_ignores_a_garment_across_the_border():
    from fashion_common.images import fit_background

    gray = np.linspace(0.6, 0.9, 200, dtype=np.float32)[None, :] * np.ones((150, 1), np.float32)  # (150, 200)
    gray[:, :30] = 0.1  # a sleeve over the whole left edge: a third of the border ring
    fitted = fit_background(gray)
    paper = np.linspace(0.6, 0.9, 200)[None, :] * np.ones((150, 1))
    assert np.abs(fitted - paper)[:, 30:].max() < 0.01  # a plain least-squares fit bends by ~0.1 towards the sleeve


def test_the_largest_joined_piece_keeps_a_sandals_straps_and_drops_far_specks():
    from fashion_common.images import largest_piece

    mask = np.zeros((100, 100), bool)
    mask[20:30, 10:90] = True  # a strap
    mask[33:43, 10:90] = True  # another, 3 px below: the same sandal
    mask[95, 2] = True  # a speck of dust far from it
    kept = largest_piece(mask, join=2)
    np.testing.assert_array_equal(kept, mask & ~(np.arange(100)[:, None] == 95))


@needs_data
def test_inverted_dataset_images_come_back_exactly_as_the_originals(tmp_path):
    from fashion_common.data import load_fashion_mnist

    data = load_fashion_mnist()
    for i in range(0, 10_000, 50):  # 200 test images, every class: dark garments on white, as a user draws them
        Image.fromarray(255 - data.test_images[i]).save(tmp_path / f"{i}.png")
        image, inverted = prepare_image(tmp_path / f"{i}.png", invert="yes")
        assert inverted, i
        np.testing.assert_array_equal(image, data.test_images[i] / np.float32(255))


PHOTO_DIFF = 0.15  # mean |pixel difference| from the original, at most, per photo; see the test


@needs_data
def test_photo_like_pictures_of_test_images_give_back_the_original_in_every_condition(tmp_path):
    from benchmarks.photos import CONDITIONS, write_photos
    from fashion_common.data import load_fashion_mnist

    originals = load_fashion_mnist().test_images[[0, 1, 2, 3, 9]]  # ankle boot, pullover, trousers, trousers, sandal
    for condition in CONDITIONS:
        paths = write_photos(originals, condition, tmp_path / condition)
        diffs = [np.abs(load_image(p) - o / np.float32(255)).mean() for p, o in zip(paths, originals, strict=True)]
        # Measured, the worst of the five: 0.10 flat, gradient, noise, off-centre, EXIF (resampling: bicubic up,
        # Lanczos down, faint edge pixels under MIN_CONTRAST); 0.12 with the shadow, 0.14 all at once (its halo).
        # The border-colour crop gave the same on flat paper but 0.38 with everything combined (0.14 to 0.38).
        assert max(diffs) < PHOTO_DIFF, (condition, diffs)


def test_photo_like_exif_pictures_are_stored_turned_and_their_tag_turns_them_back():
    from PIL import ImageOps

    from benchmarks.photos import photo_like

    image = np.zeros((28, 28), np.uint8)
    image[:, :5] = 255  # a bar down the left edge
    rng = np.random.default_rng(3)
    for _ in range(6):
        stored, options = photo_like(image, "exif", rng)
        upright, _ = photo_like(image, "flat", np.random.default_rng(0))
        exif = Image.Exif()
        exif.load(options["exif"])
        turned = ImageOps.exif_transpose(_with_exif(stored, exif[0x0112]))
        assert exif[0x0112] in (3, 6, 8) and options["format"] == "JPEG"
        column = np.asarray(turned.convert("L"), np.float32).mean(axis=0)  # (w,) the bar is dark: left side
        assert column[: len(column) // 3].mean() < column[-len(column) // 3 :].mean() - 20


def _with_exif(picture: Image.Image, orientation: int) -> Image.Image:
    picture = picture.copy()
    picture.getexif()[0x0112] = orientation
    return picture
