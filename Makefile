# Two commands do all set-up on a fresh machine:
#   make demo   # venv + install + phantom -> shards -> 2-rank DDP Reg-STN -> video report
#   make test   # venv + install + the whole test suite (real torchrun, DeepSpeed, Ray, Slurm, HDF5)
# DEMO_ARGS passes key=value overrides to the demo's training, e.g. DEMO_ARGS=train.epochs=1
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lus-installed
DEMO_OUT ?= demo_out
DEMO_ARGS ?=
PYTEST_ARGS ?=
# The suite shares out over TEST_WORKERS pytest-xdist processes (most tests wait on
# subprocesses, ranks and daemons, so three keep two cores busy); tests/worker_groups.py keeps
# the tests of one costly fixture on one worker and starts the longest groups first.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3

export OMP_NUM_THREADS ?= 1
export RAY_USAGE_STATS_ENABLED := 0
export DS_ACCELERATOR ?= cpu
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE := 1

.PHONY: install demo test bench clean

install: $(STAMP)

# torch/torchvision first and pinned: they come from the machine's local wheels (no download);
# a bare `torch` requirement resolved by another package could otherwise pull a different build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip check
	touch $(STAMP)

demo: install
	$(VENV)/bin/lus demo --out $(DEMO_OUT) $(DEMO_ARGS)

test: install
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
