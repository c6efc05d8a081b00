"""The course's parts and the grader's limits: the one place to change labels, expected points or timeouts."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    module: str  # assignment/<module>.py, graded by tests/test_<module>*.py and tests/hidden/test_<module>*.py
    label: str  # what students call it: "1", "2a", ...
    title: str
    points: int  # core points, visible plus hidden (CONVENTIONS.md); `make verify` checks the tests add up to it
    bonus: int = 0  # bonus points (tests marked @pytest.mark.bonus)


PARTS = (
    Part("preprocess", "1", "tokenizers, vocabulary, training sequences, tf.data; bonus: byte-level BPE", 15, bonus=10),
    Part("rnn", "2a", "RNN cell and RNN language model", 8),
    Part("lstm", "2b", "LSTM cell and LSTM language model", 12),
    Part("sampling", "3", "greedy, temperature, top-k, top-p, generate", 20),
    Part("transformer", "4", "causal mask, attention, decoder-only transformer, KV cache", 25, bonus=20),
    Part("train", "5", "the training loop: train_step, evaluate, checkpoints, summaries, fit", 20),
)

# Limits, in seconds. Gradescope stops a run after 10 minutes by default: the grader must write results.json first.
TEST_TIMEOUT = 120.0  # per test, unless the test sets @pytest.mark.timeout(n) (the same default as pyproject.toml)
COLLECT_TIMEOUT = 60.0  # importing one test module, and with it the student's module
TOTAL_TIMEOUT = 480.0  # the whole run; tests that have not started by then fail with "not run"

# Limits of the runner, the process that runs the student's code (grading/runtime/sandbox.py enforces them; the
# manifest carries them). Measured on the reference (docs/release-and-grading.md, "Resources"): a runner's cgroup
# peaks at 450 to 520 MB and 22 tasks; the runner at 910 MB resident (shared libraries included), 447 MB anonymous,
# 700 MB of private writable memory (VmData) and 19 threads on one CPU.
RUNNER_LIMITS = {
    "memory_mb": 600,  # cgroup memory.max of the runner and its processes: resident + page cache, as a container
    "data_mb": 2048,  # without a cgroup: RLIMIT_DATA of each runner process (private writable memory, mapped or not)
    "processes": 160,  # processes and threads: cgroup pids.max; without a cgroup, RLIMIT_NPROC of the runner's user
    "open_files": 256,  # RLIMIT_NOFILE of each runner process
    "cpu_seconds": 600,  # RLIMIT_CPU of each runner process (the per-test and whole-run clocks stop it earlier)
    "file_size_mb": 64,  # RLIMIT_FSIZE: the largest file it may write
    "cgroup": True,  # a cgroup per runner when the grader can make one (root, writable /sys/fs/cgroup)
}

# Imported once in the child before any timeout starts, so no test or import alarm pays for them.
PREIMPORT = ("numpy", "tensorflow", "keras")

# Gradescope's default container, which `make verify` compares the graded suite with.
GRADESCOPE_CPUS = 1
GRADESCOPE_MEMORY_MB = 768
GRADESCOPE_TIMEOUT_S = 600
