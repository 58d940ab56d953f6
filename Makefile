# Two commands on a fresh clone: `make demo` (the main job) and `make test` (all tests).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-unit bench lint clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)             ## create .venv and install the project (only when needed)

demo: venv                 ## embedded broker + worker + producer; shows predictions and dead letters
	$(VENV)/bin/streamscore demo

test: venv                 ## unit + end-to-end tests (starts its own embedded broker)
	$(PY) -m pytest -q -ra

test-unit: venv
	$(PY) -m pytest -q -m "not e2e"

bench: venv                ## throughput/latency vs raw confluent-kafka and raw onnxruntime
	$(VENV)/bin/streamscore bench

lint: venv
	$(VENV)/bin/ruff check .

clean:
	-$(VENV)/bin/streamscore broker down
	rm -rf .streamscore artifacts
