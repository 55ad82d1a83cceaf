"""Reading one 2-D image or mask file into a numpy array, whatever its format.

Formats, by file name ending (case-insensitive):

* ``.png``, ``.tif``, ``.tiff``, ``.jpg``, ``.jpeg``, ``.bmp`` (Pillow): 8- and 16-bit grey,
  32-bit float TIFF, RGB(A); palette PNGs give their palette indices (label maps).
* ``.npy`` (numpy, no pickles): ``[H, W]`` or ``[H, W, C]``.
* ``.nii``, ``.nii.gz`` (nibabel): 2-D ``[X, Y]`` or a single-slice volume ``[X, Y, 1]``; the
  first axis becomes the rows. The stored dtype is kept (scaling applied if the header has it).

Every array comes back as ``[H, W]`` or ``[H, W, C]``; any failure is a ValueError naming the
file and the problem (unknown type, unreadable or truncated, more than one slice).
"""

import os

import numpy as np

_PILLOW = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_NIFTI = (".nii", ".nii.gz")
SUFFIXES = (*_PILLOW, ".npy", *_NIFTI)


def _read_pillow(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return np.array(image)


def _read_nifti(path: str) -> np.ndarray:
    import nibabel

    return np.asanyarray(nibabel.load(path).dataobj)


def _single_slice(array: np.ndarray, path: str) -> np.ndarray:
    """A NIfTI array as [X, Y]: 2-D as is, [X, Y, 1] squeezed, anything else an error."""
    if array.ndim == 3 and array.shape[2] == 1:
        return array[:, :, 0]
    if array.ndim != 2:
        raise ValueError(
            f"{path}: a NIfTI volume of shape {array.shape}; expected a 2-D image or a 3-D "
            "volume with one slice ([X, Y, 1])."
        )
    return array


def read_array(path: str) -> np.ndarray:
    """The array in the file at ``path``: ``[H, W]`` or ``[H, W, C]`` in the file's dtype."""
    name = os.path.basename(path).lower()
    if not name.endswith(SUFFIXES):
        raise ValueError(f"{path}: unknown file type; expected one of {SUFFIXES}.")
    nifti = name.endswith(_NIFTI)
    try:
        if nifti:
            array = _read_nifti(path)
        elif name.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
        else:
            array = _read_pillow(path)
    except Exception as e:  # Decoders raise many types (OSError, EOFError, zlib, nibabel).
        raise ValueError(f"{path}: unreadable or truncated file ({type(e).__name__}: {e}).") from e
    if nifti:
        array = _single_slice(array, path)
    if array.ndim not in (2, 3) or array.dtype.kind not in "biuf":
        raise ValueError(
            f"{path}: an array of shape {array.shape} and dtype {array.dtype}; expected a "
            "numeric [H, W] or [H, W, C] array."
        )
    return array
