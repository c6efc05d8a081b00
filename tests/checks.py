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


def tfrecords(data):
    """The records of a TFRecord file's bytes (a TensorBoard event file): each is an 8-byte little-endian length,
    a 4-byte CRC of the length, the data, and a 4-byte CRC of the data (the CRCs are not checked here)."""
    records, at = [], 0
    while at + 12 <= len(data):
        (length,) = np.frombuffer(data[at : at + 8], "<u8")
        start, end = at + 12, at + 12 + int(length)
        assert end + 4 <= len(data), f"an event file ends inside a record ({len(data)} bytes, record to {end + 4})"
        records.append(bytes(data[start:end]))
        at = end + 4
    return records


def summary_values(files):
    """`[(step, tag, kind, value)]` of every summary value in event files `{name: bytes}`, read with TensorBoard's
    protocol buffers (no TensorFlow): kind "float" for a scalar (value a float), "string" for a text (value a str),
    else the tensor's dtype number."""
    from tensorboard.compat.proto import event_pb2, types_pb2

    values = []
    for name in sorted(files):
        for record in tfrecords(files[name]):
            event = event_pb2.Event.FromString(record)
            for v in event.summary.value:
                tensor = v.tensor
                if v.HasField("simple_value"):
                    values.append((event.step, v.tag, "float", float(v.simple_value)))
                elif tensor.dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
                    dtype = "<f4" if tensor.dtype == types_pb2.DT_FLOAT else "<f8"
                    flat = list(tensor.float_val or tensor.double_val) or np.frombuffer(tensor.tensor_content, dtype)
                    assert len(flat) == 1, f"the summary {v.tag!r} at step {event.step} holds {len(flat)} numbers"
                    values.append((event.step, v.tag, "float", float(flat[0])))
                elif tensor.dtype == types_pb2.DT_STRING:
                    assert len(tensor.string_val) == 1, f"the text {v.tag!r} at step {event.step} is not one string"
                    values.append((event.step, v.tag, "string", tensor.string_val[0].decode("utf-8")))
                else:
                    values.append((event.step, v.tag, int(tensor.dtype), None))
    return values
