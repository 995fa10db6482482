# The two commands of the README. Both create or update .venv first.
#   make pretrain   fetch Shakespeare, prepare it, pretrain BERT-tiny on it (~10 min on 2 CPU cores)
#   make test       install the test extras and run the test suite
#   make test-fast  the unit tier alone (no end-to-end runs)
#   make pretrain-embedded  every embedded corpus, BERT-tiny for 10,000 steps (~1 hour on 2 cores):
#                   a model worth fine-tuning from (configs/embedded_tiny.py)
#   make pretrain-embedded-modern  the same corpora packed, ModernBERT-style (modernbert_tiny),
#                   the same 10,000 steps (configs/embedded_modern.py)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/shakespeare
DATA := $(WORKDIR)/data
# One worker per core; a test file stays on one worker so its module fixtures run once.
PYTEST_ARGS ?= -n auto --dist loadfile

.PHONY: pretrain pretrain-embedded pretrain-embedded-modern test test-fast install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-installs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

pretrain: install
	@test -f $(DATA)/manifest.json || \
	  $(VENV)/bin/jaxpt prepare --recipe=shakespeare --output=$(DATA) --vocab_size=8192 \
	    --validation_fraction=0.05
	$(VENV)/bin/jaxpt pretrain --config=shakespeare_tiny --workdir=$(WORKDIR) \
	  --config.data.dir=$(DATA)

pretrain-embedded: install
	@test -f workdirs/embedded/data/manifest.json || \
	  $(VENV)/bin/jaxpt prepare --recipe=all --output=workdirs/embedded/data --vocab_size=8192 \
	    --validation_fraction=0.02
	$(VENV)/bin/jaxpt pretrain --config=embedded_tiny --workdir=workdirs/embedded

pretrain-embedded-modern: install
	@test -f workdirs/embedded_packed/data/manifest.json || \
	  $(VENV)/bin/jaxpt prepare --recipe=all --output=workdirs/embedded_packed/data \
	    --tokenizer_type=bpe --examples=full_sentences --pack --vocab_size=8192 \
	    --seq_length=128 --validation_fraction=0.02
	$(VENV)/bin/jaxpt pretrain --config=embedded_modern --workdir=workdirs/embedded_modern

# Tests fetch the Debian packages of the recipes: they may refresh apt's lists (fresh machines).
# The `jaxpt` command backs large host blocks with huge pages itself (jaxpt/cli/allocator.py);
# the test processes that call the library in-process get the same tunable here.
TEST_ENV := JAXPT_APT_UPDATE=1 GLIBC_TUNABLES=glibc.malloc.hugetlb=1
test: install
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

# The unit tier: no end-to-end runs (`slow`); a few minutes on 2 cores.
test-fast: install
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) -m "not slow"

clean:
	rm -rf $(WORKDIR)
