"""Pillow's resampling as matrices (mai.resample) and on torch (mai.preprocess_torch):
the GPU scan path resizes with these, so they must be Pillow's, not close to it."""

import numpy as np
import pytest
from PIL import Image

from mai.preprocess import RESAMPLE, PreprocessSpec, SpecError, Step, prepare
from mai.resample import coefficients, resize

CASES = [((37, 53), (32, 32)), ((300, 451), (32, 32)), ((32, 32), (200, 200)), ((40, 30), (17, 61)),
         ((1, 9), (5, 1)), ((333, 1000), (200, 200))]


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ramp = (np.cumsum(rng.integers(0, 3, (h, w, 3)), axis=1) % 256).astype(np.uint8)
    return np.where(rng.random((h, w, 1)) < 0.5, noise, ramp)


@pytest.mark.parametrize("resample", ["box", "bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize(("src", "dst"), CASES)
def test_matrix_resize_is_pillow_exactly(resample, src, dst):
    a = _image(*src, seed=hash((src, dst)) % 1000)
    ref = np.asarray(Image.fromarray(a).resize(dst, RESAMPLE[resample]))
    assert np.array_equal(resize(a, dst, resample), ref)


def test_coefficients_rows_sum_to_one_and_are_cached():
    m = coefficients(451, 32, "box")
    assert m.shape == (32, 451)
    assert np.allclose(m.sum(axis=1), 1.0, atol=1e-5)
    assert coefficients(451, 32, "box") is m and not m.flags.writeable
    with pytest.raises(ValueError, match="nearest"):
        coefficients(10, 5, "nearest")


torch = pytest.importorskip("torch", reason="the torch side needs the train extra")


@pytest.mark.parametrize("src", [(3000, 4000), (451, 300), (32, 32)])
def test_torch_spec_from_full_size_matches_pillow(src):
    """The GPU path runs every step of the spec on the device, from the decoded image."""
    from mai.preprocess_torch import resize_steps

    spec = PreprocessSpec(steps=(Step((32, 32), "box"), Step((200, 200), "bilinear")))
    a = _image(src[1] // 4, src[0] // 4, seed=3) if src[0] > 1000 else _image(src[1], src[0], seed=3)
    ref = prepare(Image.fromarray(a), spec)
    x = torch.from_numpy(a)[None]
    exact = resize_steps(x, spec.steps, dtype=torch.float64)[0].numpy()
    assert np.array_equal(exact, ref)
    fast = resize_steps(x, spec.steps)[0].numpy().astype(int)
    # float32 cannot hold Pillow's 22-bit sums exactly: a tie in the 32x32 step may
    # round the other way, and the 200x200 step spreads that pixel over ~40.
    assert np.abs(fast - ref).max() <= 1 and np.mean(fast == ref) > 0.97


def test_torch_resize_takes_strided_views_and_refuses_nearest():
    from mai.preprocess_torch import resize_steps

    a = _image(40, 60, seed=4)
    view = torch.from_numpy(a).transpose(0, 1)[None]  # an EXIF turn is a view, not a copy
    ref = np.asarray(Image.fromarray(np.ascontiguousarray(a.transpose(1, 0, 2))).resize((32, 32), RESAMPLE["box"]))
    assert np.array_equal(resize_steps(view, (Step((32, 32), "box"),), dtype=torch.float64)[0].numpy(), ref)
    with pytest.raises(SpecError, match="nearest"):
        resize_steps(view, (Step((8, 8), "nearest"),))


def test_random_shapes_are_pillow_exactly():
    """Pillow's pass order depends on the shapes (mai.resample.vertical_first)."""
    rng = np.random.default_rng(5)
    for _ in range(60):
        h, w, tw, th = (int(v) for v in rng.integers(4, 90, 4))
        resample = ["box", "bilinear", "bicubic", "lanczos"][int(rng.integers(4))]
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(a).resize((tw, th), RESAMPLE[resample]))
        assert np.array_equal(resize(a, (tw, th), resample), ref), (h, w, tw, th, resample)
