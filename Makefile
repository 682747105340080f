# calibseg — developer entry points. Every target bootstraps .venv itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
# nnU-Net extra (calibseg[nnunet]) on the pinned CPU torch: `make nnunet`; make test installs it
# first (fresh clone: 73 s, +447 MB). NNUNET=0 leaves it out (its tests then skip with a reason).
NNUNET ?= 1
NNUNET_STAMP := $(VENV)/.nnunet-installed
TEST_DEPS := $(STAMP) $(if $(filter 1,$(NNUNET)),$(NNUNET_STAMP))

export MPLBACKEND := Agg

.PHONY: venv nnunet demo test test-fast lint format bench clean

venv: $(STAMP)

# constraints.txt pins every dependency to the versions the tests ran with
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt $(TORCH)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# no torchvision/timm: PyPI's torchvision is a CUDA build (see constraints/nnunet.txt)
nnunet: $(NNUNET_STAMP)

$(NNUNET_STAMP): $(STAMP) constraints/nnunet.txt requirements/nnunet-cpu.txt
	$(PY) -m pip install --quiet -c constraints/nnunet.txt -r requirements/nnunet-cpu.txt
	$(PY) -m pip install --quiet --no-deps -c constraints/nnunet.txt nnunetv2 dynamic-network-architectures
	$(PY) -c "import torch, nnunetv2.training.nnUNetTrainer.nnUNetTrainer; assert torch.__version__.startswith('2.13.0')"
	touch $(NNUNET_STAMP)

demo: $(STAMP)
	$(VENV)/bin/calibseg demo

# one pytest-xdist worker process per core (conftest gives each one thread); a test module runs
# in one worker, so its module-scoped fixtures are built once
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

test: $(TEST_DEPS)
	$(PYTEST)

test-fast: $(TEST_DEPS)
	$(PYTEST) -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks experiments
	$(VENV)/bin/ruff format src tests benchmarks experiments

bench: $(STAMP)
	$(PY) benchmarks/bench_binning.py
	$(PY) benchmarks/bench_losses.py --train-step
	$(PY) benchmarks/bench_evaluate.py --breakdown

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
