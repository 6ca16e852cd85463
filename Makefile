# The two commands: `make quickstart` (set up, then run the main job offline) and `make test`.
# Both create .venv when missing and install what they need; re-running skips what is already done.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# A matched pair that runs on CPU too (PyPI's CUDA build; the CPU-only torch wheel breaks torchvision).
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: quickstart test install data browser orthanc runtime-test docs docs-build bench clean

quickstart: install data
	$(PY) -m robust_student.cli quickstart

test: install data browser orthanc docs-build runtime-test
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

# The torch-free runtime (runtime/) first, editable: the SDK depends on it and it is not on PyPI.
$(STAMP): pyproject.toml runtime/pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check $(TORCH)
	$(PIP) install --quiet --disable-pip-version-check -e "./runtime[dicom,pacs,test]"
	$(PIP) install --quiet --disable-pip-version-check -e ".[all]"
	touch $(STAMP)

# Fashion-MNIST from Debian (MIT licence): installed when running as root, otherwise explained.
data:
	@if [ -f "$(FMNIST)" ] || [ -n "$$ROBUST_STUDENT_FASHION_MNIST" ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) ; \
	else \
		echo "Fashion-MNIST is missing. Run: sudo apt-get install dataset-fashion-mnist"; \
		echo "(or put the four idx .gz files in a folder and set ROBUST_STUDENT_FASHION_MNIST=/that/folder)"; \
		exit 1; \
	fi

# Debian's Orthanc and its DICOMweb plugin for the PACS node's tests (each starts a real one on loopback):
# installed when running as root, otherwise those tests are skipped with the reason.
orthanc:
	@if command -v Orthanc >/dev/null && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "Installing Orthanc (Debian packages orthanc, orthanc-dicomweb) for the PACS node's tests"; \
		(apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null)) || \
		 echo "warning: could not install Orthanc; the PACS node's tests will be skipped"; \
	else \
		echo "Orthanc is missing, so the PACS node's tests will be skipped; to run them: sudo apt-get install orthanc orthanc-dicomweb"; \
	fi

# The torch-free runtime alone (issue 32): built as a wheel, installed with its extras into a fresh virtualenv
# that has no torch (checked), and its own tests run there against the installed wheel (the PACS tests need
# Orthanc, hence the prerequisite). Part of make test, so a user's make test runs what CI runs. Its DICOM and PACS
# stack is pinned to the lowest versions the extras allow (runtime/constraints-lowest.txt); the SDK's virtualenv
# runs the same tests with the newest, so both ends of the bounds are tested.
runtime-test: orthanc
	@set -e; tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; rt="$$tmp/venv/bin"; \
	"$$rt/pip" wheel --quiet --disable-pip-version-check --no-deps -w "$$tmp/dist" ./runtime; \
	"$$rt/pip" install --quiet --disable-pip-version-check -c runtime/constraints-lowest.txt \
		"$$(ls "$$tmp"/dist/robust_student_runtime-*.whl)[dicom,pacs,test]"; \
	"$$rt/python" -c "from importlib.metadata import distributions; \
	lowest = {l.split('==')[0] for l in open('runtime/constraints-lowest.txt') if '==' in l and not l.startswith('#')}; \
	print('lowest allowed versions:', *sorted(f'{d.name}=={d.version}' for d in distributions() if d.name.lower() in lowest))"; \
	if "$$rt/python" -c "import torch" 2>/dev/null; then \
		echo "error: torch is importable in the runtime's virtualenv; the runtime must not need it" >&2; exit 1; \
	fi; \
	"$$rt/python" -c "import robust_student_runtime as r, sys; assert 'site-packages' in r.__file__, r.__file__; \
	assert 'torch' not in sys.modules; print('runtime', r.__version__, 'installed without torch:', r.__file__)"; \
	cd runtime && "$$rt/pytest" -q -p no:cacheprovider tests

# Headless Chromium (Debian) for the demo's real-browser test: installed when running as root, otherwise
# explained in one line (without it that one test is skipped, with the reason).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "Installing Chromium and its driver (Debian packages chromium, chromium-driver) for the demo's browser test"; \
		apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
		 { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		 echo "warning: could not install chromium; the demo's browser test will be skipped"; \
	else \
		echo "Chromium is missing, so the demo's browser test will be skipped; to run it: sudo apt-get install chromium chromium-driver"; \
	fi

# The documentation site (mkdocs.yml, docs/): docs-build fails on broken links and references; docs also serves it.
docs-build: install
	$(VENV)/bin/mkdocs build --strict --quiet

docs: docs-build
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

bench: install data
	$(PY) benchmarks/attack_speed.py

clean:
	rm -rf $(VENV) runs/quickstart .pytest_cache site build/api_src
