# The two commands of the README:  make demo  |  make test
# Both create .venv, install the package and make FashionMNIST available offline if missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.paramlab-installed
DEBIAN_DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test install data bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# No NVIDIA GPU here: torch's CPU-only build when pip's sources offer one (tools/cpu_torch.py says
	# why: every process imports torch ~0.45 s faster; a new .venv is 1.4 GB instead of ~6)
	# (an older .venv's torchvision, built for the CUDA torch, would no longer import: it goes)
	@req="$$($(BIN)/python tools/cpu_torch.py)"; if [ -n "$$req" ]; then echo "installing $$req (no NVIDIA GPU)"; \
	  $(BIN)/python -m pip install -q "$$req" && $(BIN)/python -m pip uninstall -q -y torchvision 2>/dev/null \
	  || echo "$$req failed to install: pip's default torch instead"; fi
	# compat: a plain path entry, so Hydra finds hydra_plugins/ (the ensemble launcher) from any folder
	$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

# FashionMNIST: the Debian package dataset-fashion-mnist when root and apt are available,
# decompressed into data/FashionMNIST/raw (runner.data also tries the dataset's own download).
data: $(STAMP)
	@if [ ! -f data/FashionMNIST/raw/train-images-idx3-ubyte ] && [ ! -f $(DEBIAN_DATA) ] \
	    && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing the Debian package dataset-fashion-mnist"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi
	$(BIN)/python -m runner.data data

# Tied vs untied seed preset x 3 seeds on the full dataset (two ensembles side by side), then the
# report with 95% intervals (prints its path). A second `make demo` leaves the completed runs as
# they are and rewrites the report.
demo: data
	$(BIN)/python -m runner.train -m experiment=seed_sharing sharing=none,all_hidden seed=0,1,2 hydra.sweep.dir=outputs/demo
	$(BIN)/python -m runner.report outputs/demo

# The whole test suite (synthetic data; one test also checks the real dataset when present).
test: $(STAMP)
	-@$(MAKE) --no-print-directory data
	$(BIN)/python -m pytest -q

bench: data
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf outputs multirun
