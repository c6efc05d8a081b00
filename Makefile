# One entry point for the instructor, the student and CI. Every target installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN    ?= runs/main
SUBMISSION ?= dist/student
SUBMISSIONS ?= submissions
OUT ?= class-results
export TF_CPP_MIN_LOG_LEVEL ?= 2

.DEFAULT_GOAL := help
.PHONY: help install test lint train generate tensorboard compare experiments data bench student autograder verify mutants grade grade-class notebooks clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(STAMP)  ## create .venv and install the package with its test tools

test: $(STAMP)  ## run the whole test suite (graded, hidden and instructor tests)
	$(PY) -m pytest

lint: $(STAMP)  ## ruff: lint and format check (what CI runs)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

train: $(STAMP)  ## main job: train the reference transformer on the offline default corpus (RUN=runs/main)
	$(PY) -m lmrun train --model transformer --corpus pyref --run-dir $(RUN) $(ARGS)

generate: $(STAMP)  ## sample text from a trained run (RUN=runs/main)
	$(PY) -m lmrun generate --run-dir $(RUN) $(ARGS)

tensorboard: $(STAMP)  ## serve the TensorBoard logs under runs/
	$(VENV)/bin/tensorboard --logdir runs

compare: $(STAMP)  ## train RNN, LSTM and transformer on one token budget; print a table, save a plot
	$(PY) -m lmrun compare $(ARGS)

experiments: $(STAMP)  ## the lecture's questions by experiment: scaling, ablate, quantize, grok (ARGS=--quick: seconds)
	@for e in scaling ablate quantize grok; do echo "== $$e"; $(PY) -m lmrun experiments $$e $(ARGS) || exit 1; done

data: $(STAMP)  ## download and verify the named corpora into data/
	$(PY) -m lmrun data --download all

bench: $(STAMP)  ## run the benchmarks (they print figures; nothing passes or fails)
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

student: $(STAMP)  ## build the student release into dist/student/ (and dist/student.zip)
	$(PY) -m grading build-student

autograder: $(STAMP)  ## build the Gradescope bundle dist/autograder.zip
	$(PY) -m grading build-autograder

verify: $(STAMP)  ## prove the tests: reference 100%, stubs 0, bugs caught, degenerate submissions at 0
	$(PY) -m grading verify

mutants: $(STAMP)  ## mutation testing of the solution regions (cosmic-ray): survivors and score per part (ARGS=--only rnn)
	$(PY) -m grading mutants $(ARGS)

grade: $(STAMP)  ## grade one submission as the autograder does (SUBMISSION=dir) into results.json
	$(PY) -m grading grade $(SUBMISSION) --out results.json

grade-class: $(STAMP)  ## grade a whole class (SUBMISSIONS=dir OUT=dir): gradebook, report, similarity; resumable
	$(PY) -m grading grade-class $(SUBMISSIONS) --out $(OUT) $(ARGS)

notebooks: $(STAMP)  ## run every notebook top to bottom against the reference solution
	$(PY) -m grading.build.run_notebooks

clean:  ## remove build outputs (keeps .venv, runs/ and data/)
	rm -rf dist build *.egg-info .pytest_cache
