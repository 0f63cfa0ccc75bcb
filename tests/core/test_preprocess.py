import numpy as np
import pytest
from PIL import Image

from mai.preprocess import CIFAKE_SPEC, PreprocessSpec, SpecError, Step, draft_size, prepare, to_rgb


def test_spec_json_round_trip():
    spec = PreprocessSpec(steps=(Step((32, 32), "box"), Step((200, 200), "bilinear")), fit="center_crop")
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    assert spec.input_size == (200, 200)


@pytest.mark.parametrize("bad", [
    {"steps": []},
    {"steps": [{"size": [32, 32], "resample": "magic"}]},
    {"steps": [{"size": [32, 32]}], "fit": "stretchy"},
    {"steps": [{"size": [32, 32]}], "version": 99},
    {"nosteps": 1},
])
def test_bad_specs_are_refused(bad):
    with pytest.raises(SpecError):
        PreprocessSpec.from_dict(bad)


def _solid(mode, size=(8, 6)):
    if mode == "I;16":
        return Image.fromarray(np.full(size[::-1], 0x8000, dtype=np.uint16))
    if mode == "F":
        return Image.fromarray(np.full(size[::-1], 0.5, dtype=np.float32))
    return Image.new(mode, size)


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "YCbCr", "I", "I;16", "F", "RGB"])
def test_every_mode_becomes_rgb(mode):
    out = to_rgb(_solid(mode))
    assert out.mode == "RGB" and out.size == (8, 6)


def test_sixteen_bit_keeps_top_bits():
    out = np.asarray(to_rgb(_solid("I;16")))
    assert (out == 128).all()  # Pillow's own convert would clip 0x8000 to 255


def test_float_images_in_unit_range_are_scaled():
    assert (np.asarray(to_rgb(_solid("F"))) == 128).all()


def test_transparent_pixels_composite_on_white():
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert (np.asarray(to_rgb(im)) == 255).all()
    assert (np.asarray(to_rgb(im, "composite_black")) == 0).all()


def test_palette_transparency_is_alpha():
    im = Image.new("P", (4, 4), 0)
    im.putpalette([10, 20, 30] * 256)
    im.info["transparency"] = 0
    assert (np.asarray(to_rgb(im)) == 255).all()


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to view
    import io

    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif)
    spec = PreprocessSpec(steps=(Step((20, 40), "bilinear"),))
    with Image.open(buf) as loaded:
        a = prepare(loaded, spec)
    assert a.shape == (40, 20, 3)  # upright: taller than wide
    assert a[2, 10, 2] > 200  # the blue half is now on top


def test_center_crop_keeps_the_middle():
    a = np.zeros((10, 30, 3), np.uint8)
    a[:, 10:20] = 255
    spec = PreprocessSpec(steps=(Step((10, 10), "nearest"),), fit="center_crop")
    out = prepare(Image.fromarray(a), spec)
    assert out.shape == (10, 10, 3) and (out == 255).all()


def test_cifake_spec_shrinks_then_enlarges():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    out = prepare(im, CIFAKE_SPEC)
    assert out.shape == (200, 200, 3) and out.dtype == np.uint8
    first = prepare(im, CIFAKE_SPEC, upto=1)
    assert first.shape == (32, 32, 3)
    # Enlarging the 32x32 step by itself gives exactly the full pipeline's bytes.
    again = np.asarray(Image.fromarray(first).resize((200, 200), Image.BILINEAR))
    assert np.array_equal(out, again)


def test_draft_only_when_shrinking_twofold():
    assert draft_size(CIFAKE_SPEC, (64, 64)) == (32, 32)
    assert draft_size(CIFAKE_SPEC, (63, 200)) is None


torch = pytest.importorskip("torch", reason="torch parity needs the train extra")


@pytest.mark.parametrize("src", [(32, 32), (57, 91), (300, 200)])
def test_torch_steps_match_pillow_within_one_level(src):
    from mai.preprocess_torch import finish

    rng = np.random.default_rng(1)
    spec = PreprocessSpec(steps=(Step(src, "box"), Step((200, 200), "bilinear"), Step((64, 48), "bilinear")))
    ims = [Image.fromarray(rng.integers(0, 256, (src[1], src[0], 3), dtype=np.uint8)) for _ in range(3)]
    ref = np.stack([prepare(im, spec) for im in ims]).astype(int)
    first = torch.from_numpy(np.stack([prepare(im, spec, upto=1) for im in ims]))
    got = finish(first, spec).numpy().astype(int)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1
    assert np.mean(got == ref) > 0.97  # float32 differs from Pillow only at round-half cases


def test_fit_crop_keeps_native_pixels_and_never_drafts():
    spec = PreprocessSpec(steps=(Step((4, 4), "bicubic"),), fit="crop")
    a = np.arange(10 * 8 * 3, dtype=np.uint8).reshape(8, 10, 3)
    out = prepare(Image.fromarray(a), spec)
    np.testing.assert_array_equal(out, a[2:6, 3:7])  # the centre 4x4, untouched
    small = prepare(Image.fromarray(a[:3, :6]), spec)  # smaller than the crop: square, then enlarged
    assert small.shape == (4, 4, 3)
    assert draft_size(spec, (4000, 3000)) is None
