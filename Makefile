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

.PHONY: quickstart test install data bench clean

quickstart: install data
	$(PY) -m robust_student.cli quickstart

test: install data
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check $(TORCH)
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

bench: install data
	$(PY) benchmarks/attack_speed.py

clean:
	rm -rf $(VENV) runs/quickstart .pytest_cache
