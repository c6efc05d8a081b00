"""The judge's building blocks, without TensorFlow: the wire format lets only plain data through, uploads are read
as regular files only, the judge refuses the student's package, probes are top-level functions, student text is
capped."""

import os
import struct

import numpy as np
import pytest

from grading.runtime import grade, judge, probes, upload, wire


class Liar(np.ndarray):
    def __eq__(self, other):
        return True


def test_wire_round_trips_plain_data_and_strips_array_subclasses():
    value = {
        "a": np.arange(6, dtype=np.int32).reshape(2, 3),
        "f": float("nan"),
        "inf": float("-inf"),
        "t": (1, "x", None, True),
        "nested": [{"k": b"\x00\x01"}, np.float32(2.5)],
        3: "int key",
    }
    back = wire.roundtrip(value)
    assert back["a"].dtype == np.int32 and back["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert np.isnan(back["f"]) and back["inf"] == float("-inf")
    assert back["t"] == (1, "x", None, True) and back[3] == "int key"
    assert back["nested"][0]["k"] == b"\x00\x01" and float(back["nested"][1]) == 2.5
    liar = wire.roundtrip(np.zeros(3).view(Liar))
    assert type(liar) is np.ndarray and not np.array_equal(liar, [4, 0, 2])


def test_wire_refuses_objects_pickles_and_malformed_frames():
    with pytest.raises(wire.WireError):
        wire.encode(np.array([object()], dtype=object))
    with pytest.raises(wire.WireError):
        wire.encode(object())
    pickled = np.lib.format  # an .npy blob of an object array, as a hostile runner could send it
    import io

    buf = io.BytesIO()
    pickled.write_array(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    blob = buf.getvalue()
    header = b'{"value": {"$array": 0}, "arrays": 1}'
    body = struct.pack(">I", len(header)) + header + struct.pack(">Q", len(blob)) + blob
    with pytest.raises(wire.WireError):
        wire.decode(body)
    with pytest.raises(wire.WireError):
        wire.decode(b"\x00\x00\x00\x05hello")
    header = b'{"value": NaN, "arrays": 0}'
    with pytest.raises(wire.WireError):
        wire.decode(struct.pack(">I", len(header)) + header)


def test_uploads_are_read_as_regular_files_only(tmp_path):
    (tmp_path / "ok.py").write_text("x = 1\n")
    os.symlink("/etc/passwd", tmp_path / "link.py")
    os.symlink("/nonexistent", tmp_path / "dangling.py")
    (tmp_path / "big.py").write_bytes(b"#" * 100)
    assert upload.read_regular(tmp_path / "ok.py") == (b"x = 1\n", "")
    for name in ("link.py", "dangling.py"):
        data, reason = upload.read_regular(tmp_path / name)
        assert data is None and "symbolic link" in reason
    data, reason = upload.read_regular("/dev/zero")
    assert data is None and "not a regular file" in reason
    data, reason = upload.read_regular(tmp_path / "big.py", limit=10)
    assert data is None and "limit" in reason


def test_the_judge_refuses_the_students_package_and_tensorflow():
    finder = judge.ForbiddenImport()
    for name in ("assignment", "assignment.sampling", "tensorflow", "keras.layers"):
        with pytest.raises(ImportError, match="never imports"):
            finder.find_spec(name)
    assert finder.find_spec("numpy") is None


def _top_level(x):
    return x + 1


def test_probes_are_top_level_and_student_text_is_capped():
    source, first, name = probes.probe_source(_top_level)
    assert source.startswith("def _top_level") and name == "instructor/test_judge.py" and first > 1

    def nested(x):
        return x

    with pytest.raises(TypeError, match="top-level"):
        probes.probe_source(nested)
    error = probes.StudentError("ValueError", "A" * 10_000, "assignment/x.py:1 in f")
    assert len(str(error)) < 500 and "characters cut" in error.message
    assert probes.InProcessStudent().run(_top_level, np.int64(2)) == 3


# ------------------------------------------------------------------------------------------------------------
# The judged path end to end on the real course's sampling part (TensorFlow in the runner only)

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sampling_manifest():
    from grading.build import manifest as manifest_builder

    built, problems = manifest_builder.build_manifest(REPO, log=lambda line: None)
    assert problems == [] and "tests/test_sampling.py" in built["judged"]
    built["tests"] = [dict(t, timeout=8.0) for t in built["tests"]]
    return built


def _grade_sampling(tmp_path, manifest, sampling_source):
    sub = tmp_path / "submission" / "assignment"
    sub.mkdir(parents=True)
    (sub / "sampling.py").write_text(sampling_source)
    results, _ = grade.grade(
        tmp_path / "submission",
        None,
        bundle=REPO,
        manifest=manifest,
        only=["sampling"],
        drop_privileges=False,
        log=lambda line: None,
    )
    return {t["extra_data"]["nodeid"].split("::")[1]: t for t in results["tests"]}, results


@pytest.mark.slow
@pytest.mark.timeout(600)  # grades a whole part: about 40 s on a quiet machine, minutes on a loaded one
def test_a_judged_part_that_does_not_import_fails_each_test_once_with_the_error(tmp_path, sampling_manifest):
    source = (REPO / "assignment" / "sampling.py").read_text().replace("def greedy(", "def greedy(((", 1)
    tests, results = _grade_sampling(tmp_path, sampling_manifest, source)
    assert results["score"] == 0 and len(tests) == len(
        [t for t in sampling_manifest["tests"] if t["module"] == "sampling"]
    )
    visible = [t for t in tests.values() if not t["extra_data"]["hidden"]]
    hidden = [t for t in tests.values() if t["extra_data"]["hidden"]]
    assert all(t["extra_data"]["outcome"] == "error" for t in visible)
    assert all(
        "could not import assignment/sampling.py" in t["output"] and "SyntaxError" in t["output"] for t in visible
    )
    assert hidden and all(t["output"] == "This hidden test did not pass." for t in hidden), "hidden: pass or fail only"


@pytest.mark.slow
@pytest.mark.timeout(600)  # grades a whole part, one test of it hanging until its own 8 s limit
def test_a_judged_test_that_hangs_costs_only_itself(tmp_path, sampling_manifest):
    source = (REPO / "assignment" / "sampling.py").read_text()
    source += "\n\ndef greedy(logits, *args, **kwargs):\n    while True:\n        pass\n"
    tests, results = _grade_sampling(tmp_path, sampling_manifest, source)
    hung = tests["test_greedy_picks_the_argmax_of_each_row"]
    assert hung["extra_data"]["outcome"] == "timeout" and "time limit of 8 s" in hung["output"]
    others = [t for name, t in tests.items() if "greedy" not in name]
    assert others and all(t["status"] == "passed" for t in others), [
        t["output"][:200] for t in others if t["status"] != "passed"
    ]
