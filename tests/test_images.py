"""`himl.data.images.decode` of images deeper than 8 bits: mapped to 8 bits, not clipped."""

import io

import numpy as np
import pytest
from PIL import Image

from himl.data.images import CorruptImageError, FileSource, LazyImages, decode


def _encoded(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


RAMP16 = np.linspace(0, 65535, 32 * 32).astype(np.uint16).reshape(32, 32)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_maps_to_8_bits(fmt):
    data = _encoded(RAMP16, fmt)
    gray = np.asarray(decode(data, f"x.{fmt}", 1))
    np.testing.assert_array_equal(gray, RAMP16 // 256)  # the high byte
    rgb = np.asarray(decode(data, f"x.{fmt}", 3))
    assert rgb.shape == (32, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], RAMP16 // 256)
    # 8-bit values stored as 16 bits (v * 257) come back unchanged.
    eight = np.arange(256, dtype=np.uint16).reshape(16, 16)
    np.testing.assert_array_equal(np.asarray(decode(_encoded(eight * 257, fmt), "y", 1)), eight)


def test_32_bit_integer_and_float_tiffs():
    ints = RAMP16.astype(np.int32)
    np.testing.assert_array_equal(
        np.asarray(decode(_encoded(ints, "TIFF"), "i.tif", 1)), RAMP16 // 256
    )
    floats = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    np.testing.assert_array_equal(
        np.asarray(decode(_encoded(floats, "TIFF"), "f.tif", 1)),
        np.rint(floats.astype(np.float64) * 255).astype(np.uint8),
    )
    # Values with no known 8-bit mapping are refused in one line naming file and mode.
    with pytest.raises(CorruptImageError, match=r"f.tif: float \(mode F\) values .* 0..2"):
        decode(_encoded(floats * 2, "TIFF"), "f.tif", 3)
    with pytest.raises(CorruptImageError, match=r"i.tif: integer \(mode I\) .* 0..70000"):
        decode(_encoded(np.array([[0, 70000]], np.int32), "TIFF"), "i.tif", 1)


@pytest.mark.parametrize("dtype, fmt", [(np.int32, "TIFF"), (np.uint16, "PNG")])
def test_8_bit_values_in_a_wider_mode_are_refused_not_made_black(dtype, fmt):
    """`Image.fromarray` of an int32 array of pixels 0..255 (mode I), or a 16-bit file
    holding 8-bit values: mapped `>> 8` they would all be 0, a black image embedded
    without a word. An all-black one stays black."""
    pixels = np.arange(256, dtype=dtype).reshape(16, 16)
    with pytest.raises(
        CorruptImageError, match=r"x: integer \(mode I.*\) values run 0..255, 8-bit"
    ):
        decode(_encoded(pixels, fmt), "x", 1)
    black = np.asarray(decode(_encoded(np.zeros((4, 4), dtype), fmt), "x", 1))
    np.testing.assert_array_equal(black, 0)


def test_evaluation_images_see_the_mapping(tmp_path):
    """LazyImages (evaluation, and the training pipeline's decode) and `himl-embed`
    (`Embedder._load` calls the same `decode`) read a 16-bit file the same way."""
    (tmp_path / "a.png").write_bytes(_encoded(RAMP16, "PNG"))
    images = LazyImages(FileSource(tmp_path, ["a.png"]), [0], size=32, channels=1,
                        crop_fraction=1.0)  # fmt: skip
    np.testing.assert_array_equal(images[0][..., 0], RAMP16 // 256)
