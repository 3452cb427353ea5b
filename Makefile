# Two entry points for a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench clean

# The tested versions (constraints.txt; pip also applies any `constraint` of its own config).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job: convert resnetv2_50.a1h_in1k (hub weights, or a labelled local fallback),
# classify the bundled photo with JAX, compare with timm.
demo: $(STAMP)
	$(VENV)/bin/resnets-jax demo

# The suite (CI runs this). The very large variants are marked `slow`: `make test-slow`.
test: $(STAMP)
	RESNETS_JAX_REQUIRE_REFERENCE=1 $(PY) -m pytest -n 2 --dist loadgroup --durations=15

test-slow: $(STAMP)
	RESNETS_JAX_REQUIRE_REFERENCE=1 $(PY) -m pytest -m slow --durations=15

# Our models against timm eager and torch.compile (images/s, first call, peak memory), per CPU
# kind: benchmarks/results/<cpu-kind>.{csv,md,png} (benchmarks/README.md). ~30 min on 2 cores.
BENCH_ARGS ?= --batch 1 8 --dtype fp32 bf16 --torch-compile 1 8
bench: $(STAMP)
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo_out .pytest_cache
