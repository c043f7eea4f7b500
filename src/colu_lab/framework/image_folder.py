"""A folder of images of any size as one fixed-size image set (Oxford Flowers and the like).

Every image file under the folder (searched recursively, in sorted path
order, hidden files and folders skipped) is decoded with Pillow, converted
to RGB (or grey), resized so that its shorter side is ``size`` pixels
(bicubic, antialiased when shrinking) and centre-cropped to
``size x size``. Images are kept as ``uint8``, so a folder of eight thousand
64 x 64 flowers costs 100 MB rather than 400. A file that cannot be decoded
stops the load with an error naming it, and so does one whose header
promises more than :data:`MAX_IMAGE_PIXELS` pixels or a side more than
:data:`MAX_ASPECT` times the other (a few hundred bytes of PNG can declare a
1 x 4,000,000 image, which the resize would blow up to gigabytes): both are
checked from the header, before anything is decoded. Entries that are not
regular files (FIFOs, sockets, devices) are skipped with a notice.

Pillow is imported when a folder is read, not when this module is imported.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from colu_lab.framework.data import SPLIT_SEED, DataError, ImageData, channel_stats

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MAX_IMAGE_PIXELS = 1 << 26
"""The most pixels an image may declare (67 million: 8192 x 8192); larger ones are refused before decoding."""
MAX_ASPECT = 16
"""The largest ratio of an image's longer side to its shorter one; the resize keeps the ratio, so a thin image
would otherwise become ``MAX_ASPECT``-times-larger-than-needed before the crop."""


def check_image_size(path: str, width: int, height: int) -> None:
    """Refuse, naming ``path``, an image whose declared size is out of bounds (see :data:`MAX_IMAGE_PIXELS` and
    :data:`MAX_ASPECT`); called on the header's size, before decoding.

    Raises:
        DataError: the image is empty, too large or too thin.
    """
    if width < 1 or height < 1:
        raise DataError(f"{path}: the image is {width} x {height} pixels, which has no pixels; remove that file")
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"{path}: the image declares {width} x {height} = {width * height} pixels, more than the "
                        f"{MAX_IMAGE_PIXELS} an image may have here; shrink it or move it out of the folder")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise DataError(f"{path}: the image is {width} x {height} pixels, one side more than {MAX_ASPECT} times the "
                        "other; resizing its shorter side would make it huge before the centre crop. Crop it, or "
                        "move it out of the folder")


def list_images(directory: str) -> list[str]:
    """The image files under ``directory`` (by suffix, case-insensitive), recursively, in sorted order.

    Raises:
        DataError: ``directory`` is not a folder.
    """
    if directory is None or not os.path.isdir(directory):
        raise DataError(f"--data {directory!r} is not a directory; an image folder is a directory of image files "
                        f"({', '.join(IMAGE_SUFFIXES)}), searched recursively")
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = os.path.join(root, name)
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            if not os.path.isfile(path):  # a FIFO would block the read forever
                print(f"colu: skipped {path}: not a regular file", file=sys.stderr)
                continue
            found.append(path)
    return sorted(found)


def load_image(path: str, size: int, channels: int = 3) -> np.ndarray:
    """One image file, resized and centre-cropped to ``size x size``.

    Args:
        path: the image file (any format Pillow reads).
        size: the side of the square result, >= 1.
        channels: 3 (RGB; grey and palette images are converted, an alpha
            channel is dropped) or 1 (grey).

    Returns:
        ``uint8`` array of shape ``(channels, size, size)``.

    Raises:
        DataError: naming ``path`` when the file cannot be decoded (not an
            image, truncated), or declares a size out of bounds
            (:func:`check_image_size`).
    """
    from PIL import Image

    if channels not in (1, 3):
        raise DataError(f"channels={channels!r}: an image folder is read with 1 (grey) or 3 (RGB) channels")
    try:
        with Image.open(path) as img:
            check_image_size(path, *img.size)  # Image.open read only the header
            img.load()  # decode now: a truncated body fails here
            img = img.convert("RGB" if channels == 3 else "L")
    except DataError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc}); remove or replace that "
                        "file, or move it out of the folder") from None
    w, h = img.size
    scale = size / min(w, h)
    # the shorter side becomes exactly `size`; the longer one is rounded and never shorter than `size`
    new = (size, max(size, round(h * scale))) if w <= h else (max(size, round(w * scale)), size)
    img = img.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1).copy()


def load_image_folder(directory: str, size: int, channels: int = 3, test_fraction: float = 0.1,
                      name: str = "folder") -> ImageData:
    """Every image under ``directory`` as ``uint8`` images ``(N, channels, size, size)``, split train/test.

    The split is fixed (a permutation drawn with the data module's split
    seed), independent of any training seed: ``round(test_fraction * N)``
    images, at least one, are held out, and at least one is kept for
    training. Labels are all zero (an image folder has none).

    Args:
        directory: the folder, searched recursively (see :func:`list_images`).
        size: the side every image is resized and centre-cropped to.
        channels: 3 (RGB, default) or 1 (grey).
        test_fraction: the share of images held out, in (0, 1) (default 0.1).
        name: the data set's name in reports (default ``"folder"``).

    Returns:
        :class:`colu_lab.framework.data.ImageData` whose ``x_train``/``x_test``
        are ``uint8`` (divide by 255 for [0, 1]); ``mean``/``std`` are the
        training images' per-channel statistics in [0, 1] units.

    Raises:
        DataError: the folder is missing, holds fewer than two images, or
            holds a file that cannot be decoded (the message names it).
    """
    if not (isinstance(size, int) and size >= 1):
        raise DataError(f"size={size!r}: the image side must be an integer >= 1")
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction={test_fraction!r}: must be between 0 and 1 (exclusive)")
    paths = list_images(directory)
    if len(paths) < 2:
        raise DataError(f"--data {directory!r} holds {len(paths)} image file(s) ({', '.join(IMAGE_SUFFIXES)}, "
                        "searched recursively); an image folder needs at least 2 (one to train on, one held out)")
    images = torch.from_numpy(np.stack([load_image(p, size, channels) for p in paths]))
    n = len(paths)
    n_test = min(n - 1, max(1, round(test_fraction * n)))
    perm = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(n))
    test, train = perm[:n_test], perm[n_test:]
    x_train, x_test = images[train], images[test]
    mean, std = channel_stats(x_train.float() / 255)
    zeros = lambda k: torch.zeros(k, dtype=torch.int64)
    description = (f"{n} images from {directory}, resized (shorter side) and centre-cropped to {size}x{size}, "
                   f"{channels} channel(s): {len(train)} train / {n_test} held out (fixed split, seed {SPLIT_SEED})")
    return ImageData(name, x_train, zeros(len(train)), x_test, zeros(n_test), description, mean=mean, std=std)
