"""Loading pickled depth maps without executing code.

``pickle`` runs arbitrary callables on load.  The official depth maps are
pickled numpy arrays, so the unpickler here resolves only the handful of
numpy internals an array pickle needs and refuses every other global — the
refusal happens *before* anything is called.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

# the globals a numpy array pickle (protocols 0-5, numpy 1.x and 2.x) refers to
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes written by Python 3 at protocol ≤ 2
}


class DepthFileError(ValueError):
    """A depth-map file that cannot be read as a numpy array (truncated, corrupt, unsafe); names the file."""


class UnsafePickleError(DepthFileError):
    """The file is not a plain numpy array pickle."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def __init__(self, fh, path):
        super().__init__(fh, encoding="latin1")  # latin1: pickles written by Python 2
        self._path = path

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"{self._path}: refused to load: the pickle refers to {module}.{name}; "
                                "expected a plain numpy array (depth map)")


def load_array_pickle(path, max_bytes: int = 256 << 20) -> np.ndarray:
    """Read a pickled numeric numpy array; anything else raises with the file named.

    Raises:
        UnsafePickleError: the pickle names a global other than numpy's array internals,
            or holds something other than a numeric array.
        DepthFileError: truncated or corrupt file (a ValueError).
        FileNotFoundError: missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: depth map file not found")
    data = path.read_bytes()
    if len(data) > max_bytes:
        raise DepthFileError(f"{path}: {len(data)} bytes, larger than the {max_bytes} expected of a depth map")
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(data), path).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # EOFError, UnpicklingError, struct errors… on truncation or corruption
        raise DepthFileError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e}); "
                         "expected a pickled numpy array") from None
    if not isinstance(obj, np.ndarray):
        raise UnsafePickleError(f"{path}: expected a numpy array, got {type(obj).__name__}")
    if obj.dtype.kind not in "fiub":
        raise UnsafePickleError(f"{path}: expected a numeric array, got dtype {obj.dtype}")
    return obj


def save_array_pickle(path, array: np.ndarray) -> Path:
    """Write ``array`` as the official depth-map pickle (protocol 2, readable by Python 2 and 3)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(np.ascontiguousarray(array), fh, protocol=2)
    return path
