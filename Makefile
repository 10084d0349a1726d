# Dreamsculpt: `make demo` and `make test` on a fresh machine (Python 3.11 and make needed).

PYTHON ?= python3.11
VENV := .venv
# Written after a successful install; reinstalls only when pyproject.toml changes.
STAMP := $(VENV)/.dreamsculpt-installed

.PHONY: venv demo test test-fast bench

venv: $(STAMP)

$(STAMP): pyproject.toml VERSION
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e ".[test,blender]"
	touch $(STAMP)

# Blender (bpy) headless: the add-on starts the backend, makes "a red cube", renders out/demo.png, saves out/demo.blend.
demo: venv
	$(VENV)/bin/python scripts/blender_demo.py --out out

# The whole suite (what CI runs, through .ci/run); prints the 15 slowest tests at the end.
test: venv
	$(VENV)/bin/python -m pytest -q --durations=15

# The unit tier for the edit-run loop: everything not marked slow (no server, Blender or CLI
# process, no long optimisation run). One OpenMP thread: its tensors are tiny, and on a busy
# 2-core machine torch's two threads wait on each other (measured at load 3.5: 29 s with one
# thread, 2 min 49 s with two).
test-fast: venv
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -m "not slow"

# Prints the markdown tables of bench/README.md (about 35 minutes on 2 cores; run it on a quiet machine).
bench: venv
	$(VENV)/bin/python bench/bench_encodings.py
	$(VENV)/bin/python bench/bench_step.py
	$(VENV)/bin/python bench/bench_shapes.py
	$(VENV)/bin/python bench/bench_server.py
	$(VENV)/bin/python bench/bench_addon.py
	$(VENV)/bin/python bench/bench_image.py
	$(VENV)/bin/python bench/bench_zero123.py
	$(VENV)/bin/python bench/bench_assets.py
	$(VENV)/bin/python bench/bench_backgrounds.py
	$(VENV)/bin/python bench/bench_refine.py --shapes cube
	$(VENV)/bin/python bench/bench_farm.py
	$(VENV)/bin/python bench/bench_priors.py
