# The two commands: `make demo` runs the main job end to end, `make test` runs the tests.
# Both install what they need into .venv first (once; again when the pins change).
# `make test-fast` is the edit loop: the tests not marked `integration` (they start no service or process).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-long test test-fast lint bench install
demo: $(VENV)/.installed
	$(PY) -m pipeline demo --workdir runs/demo

# The same demo with 1,000 fine-tuning steps per objective (about 30 minutes on 2 cores): the
# smallest scale at which its report shows what the objectives are for (docs/evaluation.md,
# "Which scale shows what").
demo-long: $(VENV)/.installed
	$(PY) -m pipeline demo --workdir runs/demo-long --scale long

# Every test: the fast tier, then the integration tier, each with its own time in the log.
test: test-fast
	$(PY) -m pytest -q -m integration --durations=15

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not integration"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_prep.py
	$(PY) benchmarks/bench_prep_e2e.py
	$(PY) benchmarks/soak_prep.py
	$(PY) benchmarks/bench_objectives.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_storage.py

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml constraints.txt scripts/install.sh
	scripts/install.sh
	touch $@
