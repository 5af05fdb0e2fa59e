"""Shape passes: shape inference, fixed input dims, shape arithmetic, Transpose/Reshape layout."""
