"""Names for the NumPy array types in bevkd's signatures (shape, frame and unit go in docstrings)."""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

Float64Array: TypeAlias = npt.NDArray[np.float64]
Float32Array: TypeAlias = npt.NDArray[np.float32]
Int64Array: TypeAlias = npt.NDArray[np.int64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
UInt8Array: TypeAlias = npt.NDArray[np.uint8]
#: An array whose dtype the caller chooses (e.g. a cache component of any stored dtype).
AnyDtypeArray: TypeAlias = npt.NDArray[Any]

__all__ = ["AnyDtypeArray", "BoolArray", "Float32Array", "Float64Array", "Int64Array", "UInt8Array"]
