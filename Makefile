# The two commands of the README: `make book` (set up, then build the book) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Datasets: $MLKIT_DATA, else ../shared/data where it exists, else mlkit's per-user folder (~/.local/share/mlkit).
export MLKIT_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
# Notebooks draw with the inline backend; an inherited MPLBACKEND (e.g. Agg) would drop their figures.
unexport MPLBACKEND

.PHONY: setup book test test-unit test-notebooks clean

setup: $(VENV)/.installed

# torch first and pinned: on a CPU-only machine this is the CPU wheel; an unpinned torch pulls a CUDA build.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.txt -e .
	touch $@

# Both editions, neither executing a notebook (execute_notebooks is off: the committed outputs are shown). English
# into _build/html; Chinese (book/_config.zh_CN.yml, the catalogues of book/locales/) into its own folder, with its own
# doctrees, fully rebuilt (--all: a translated title must reach every page's sidebar), then copied to _build/html/zh_CN
# where the language switch of each page expects it.
book: setup
	$(BIN)/jupyter-book build . -W -n --keep-going
	$(BIN)/jupyter-book build . --config book/_config.zh_CN.yml --path-output _build/zh_CN -W -n --keep-going --all
	rm -rf _build/html/zh_CN
	cp -R _build/zh_CN/_build/html _build/html/zh_CN

# The unit tests, then every notebook of the book re-executed and compared with its committed outputs: decimal
# numbers are masked (book/sanitize.cfg) and every claim is asserted in the notebooks, so the check holds on any
# CPU. Another kernel set: `ATEN_CPU_CAPABILITY=default make test` (or avx2, avx512; ONEDNN_MAX_CPU_ISA=AVX2).
test: test-unit test-notebooks

test-unit: setup
	$(BIN)/python -m pytest tests

test-notebooks: setup
	$(BIN)/python -m pytest --nbval book --nbval-sanitize-with book/sanitize.cfg -p no:cacheprovider

clean:
	rm -rf _build $(VENV)
