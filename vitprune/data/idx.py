"""Readers for the IDX format of MNIST-style datasets (optionally gzip-compressed)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> torch.Tensor:
    """Read one IDX file into a tensor of its stored shape.

    Raises:
        DataError: the file is truncated, not gzip when named .gz, or not IDX at all.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path} is corrupt or truncated ({exc}); delete it and get it again") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); delete it and get it again")
    dtype, ndim = np.dtype(_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header cut short); delete it and get it again")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path} is truncated or padded: {len(raw)} bytes where its header promises "
            f"{expected}; delete it and get it again"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=True))
