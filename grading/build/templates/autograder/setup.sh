#!/usr/bin/env bash
# Gradescope runs this once, as root, while it builds the autograder image (Ubuntu 22.04 or 24.04). It installs
# Python and exactly what the graded tests need into /autograder/venv: keep it lean, every grading container
# carries it.
set -euxo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends python3 python3-venv python3-pip
python3 -c 'import sys; assert sys.version_info >= (3, 10), "TensorFlow 2.16+ needs Python 3.10+, got " + sys.version'
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install --no-cache-dir --upgrade pip
/autograder/venv/bin/pip install --no-cache-dir -r /autograder/source/requirements.txt
# The student's code runs as this unprivileged user, and only as it: the grader refuses to run it as root.
id -u student >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin --user-group student
# The interpreter is everyone's; the bundle (tests, hidden tests, manifest, grader) is root's alone: the grader
# copies what the runner needs into a folder of its own at every submission.
chmod -R a+rX /autograder/venv
chown -R root:root /autograder/source
chmod -R go-rwx /autograder/source
# Fail the image build now, not at the first submission, if anything is missing.
/autograder/venv/bin/python -c "import tensorflow, keras, numpy, pytest, pytest_timeout, regex; print('tensorflow', tensorflow.__version__, 'keras', keras.__version__)"
# ... and if the student's code could not run as `student` (the grader would then refuse every submission).
(cd /autograder/source && /autograder/venv/bin/python -c "from grading.runtime import sandbox; sandbox.python_for(sandbox.sandbox_policy(True)[0]); print('sandbox: the student user runs the interpreter')")
