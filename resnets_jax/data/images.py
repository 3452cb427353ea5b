"""An image as timm's datasets hand it to a transform: the mode conversion (``to_model_mode``,
with a warning where PIL clips 16/32-bit values), and PIL's resampling filters by timm's names."""
import warnings

from PIL import Image, ImageOps

PIL_INTERPOLATION = {
    "nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
    "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS,
}
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class HighBitDepthWarning(UserWarning):
    """A 16/32-bit image whose values PIL (and so timm) clips at 255 when converting to RGB."""


def to_model_mode(img: Image.Image, mode: str = "RGB", exif_transpose: bool = False) -> Image.Image:
    """The image as timm's ``ImageDataset`` hands it to its transform: ``img.convert(mode)``
    (after ``ImageOps.exif_transpose`` when asked), warning when PIL clips 16/32-bit values."""
    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    if img.mode in _HIGH_BIT_DEPTH_MODES:
        lo, hi = img.getextrema()
        if hi > 255:
            warnings.warn(f"A {img.mode} image with values up to {hi}: converting it to {mode}, PIL (as timm) "
                          "clips every value above 255. Scale it to 8 bits first, e.g. "
                          "Image.fromarray((np.asarray(img) >> 8).astype(np.uint8)) for 16-bit data.",
                          HighBitDepthWarning, stacklevel=3)
    return img if img.mode == mode else img.convert(mode)
