"""The training data: :class:`ImageCaptionFolder`, images and captions in Hugging Face's ``imagefolder`` layout.

Pillow is imported when a folder is opened, not when this module is imported.
"""

from __future__ import annotations

import json
import os
from typing import List, Tuple

import torch

from colu_lab.framework.data import DataError
from colu_lab.framework.image_folder import check_image_size, load_image

__all__ = ["ImageCaptionFolder"]


class ImageCaptionFolder(torch.utils.data.Dataset):
    """Images and captions in Hugging Face's ``imagefolder`` layout.

    ``root`` (or ``root/train``) holds ``metadata.jsonl``: one JSON object a
    line with the image's path relative to that file (``image_column``) and
    its caption (``caption_column``). Every row and image header is checked
    when the folder is opened, so a bad row or an unreadable image stops the
    run before training with the file (and line) named.

    Args:
        root: the folder.
        resolution: side of the square training images: the shorter side is
            resized to it (bicubic), then the centre is cropped.
        caption_column: the caption's key in ``metadata.jsonl``. Default: ``"text"``.
        image_column: the image path's key. Default: ``"file_name"``.

    Items are ``(image, caption)``: a float tensor ``(3, resolution,
    resolution)`` in ``[-1, 1]`` and a string.
    """

    def __init__(self, root: str, resolution: int, *, caption_column: str = "text", image_column: str = "file_name"):
        from PIL import Image

        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"resolution must be an int >= 8, got {resolution!r}")
        self.resolution = resolution
        if not os.path.isdir(root):
            raise FileNotFoundError(f"data folder {root!r} does not exist: pass --data a folder with metadata.jsonl")
        folder = root
        if not os.path.isfile(os.path.join(folder, "metadata.jsonl")) and os.path.isfile(
            os.path.join(root, "train", "metadata.jsonl")
        ):
            folder = os.path.join(root, "train")
        metadata = os.path.join(folder, "metadata.jsonl")
        if not os.path.isfile(metadata):
            raise FileNotFoundError(
                f"no metadata.jsonl in {root!r}: an image-caption folder holds the images and a metadata.jsonl with "
                f'one line per image, e.g. {{"{image_column}": "0001.png", "{caption_column}": "a red bird"}}'
            )
        self.items: List[Tuple[str, str]] = []
        with open(metadata, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{metadata}, line {number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{where}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
                for column in (image_column, caption_column):
                    if not isinstance(row.get(column), str):
                        what = "has no" if column not in row else "has a non-string"
                        raise ValueError(
                            f"{where}: {what} {column!r} column (keys: {sorted(row)}); name the columns with "
                            f"--image-column/--caption-column"
                        )
                path = os.path.normpath(os.path.join(folder, row[image_column]))
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{where}: image {row[image_column]!r} not found (looked for {path})")
                try:
                    with Image.open(path) as image:  # reads the header only
                        check_image_size(path, *image.size)
                except DataError as exc:
                    raise ValueError(f"{where}: {exc}") from None
                except Exception as exc:  # UnidentifiedImageError, OSError, DecompressionBombError, ...
                    raise ValueError(f"{where}: {path} is not a readable image ({type(exc).__name__}: {exc}); "
                                     "remove the row or the file") from None
                self.items.append((path, row[caption_column]))
        if not self.items:
            raise ValueError(f"{metadata} lists no images: add one line per image")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, str]:
        # the same decoding, resize (shorter side) and centre crop as diffusion-unet's image folders; a body
        # that fails to decode after its header opened is named in the error

        path, caption = self.items[index]
        data = torch.from_numpy(load_image(path, self.resolution, channels=3))
        return data.float() / 127.5 - 1.0, caption

    def captions(self, n: int) -> List[str]:
        """The first ``n`` captions (in file order)."""
        return [caption for _, caption in self.items[:n]]
