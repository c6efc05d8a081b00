"""Assertions whose failure messages teach: what was expected, what was received, and where."""

import numpy as np


def assert_shape(x, expected, what="output"):
    """Fail with `expected <what> of shape (...), got (...)` unless `x` has shape `expected`."""
    got = tuple(int(d) for d in np.shape(x))
    expected = tuple(expected)
    assert got == expected, f"expected {what} of shape {expected}, got {got}"


def assert_close(actual, expected, what="output", atol=1e-5, rtol=1e-5):
    """Compare arrays after their shapes, naming the largest difference and where it is."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert_shape(actual, expected.shape, what)
    if not np.allclose(actual, expected, atol=atol, rtol=rtol):
        diff = np.abs(actual - expected)
        where = tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape))
        raise AssertionError(
            f"{what} differs from the reference: largest difference {diff[where]:.3g} at index {where} "
            f"(got {actual[where]:.6g}, expected {expected[where]:.6g}; tolerance atol={atol}, rtol={rtol})"
        )


def step_value(result, what):
    """The value of one step of a tokenizer session (a probe's result); fails the test if the step raised."""
    assert "error" not in result, f"{what} raised {result.get('error')}: {result.get('message')}"
    return result["value"]


def step_ids(result, what):
    """The ids `encode` returned in one step of a tokenizer session, checked to be a 1-D int32 NumPy array."""
    ids = step_value(result, what)
    assert result["type"] == "ndarray", f"{what} must return a NumPy array, got {result['type']}"
    assert result["dtype"] == "int32", f"{what} must return int32 ids, got dtype {result['dtype']}"
    ids = np.asarray(ids)
    assert_shape(ids, (ids.size,), what)
    return ids
