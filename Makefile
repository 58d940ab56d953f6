# Two commands on a fresh clone: `make demo` (the main job) and `make test` (all tests).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv chromium promtool demo demo-loop test test-unit bench lint clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,embedded]'  # embedded: the Tansu broker (not in the image)
	touch $(STAMP)

venv: $(STAMP)             ## create .venv and install the project (only when needed)

# ~30 s each on 2 busy cores: the scoring demo, then the closed loop (issue 14: alert → retrain → shadow → promotion)
demo: venv                 ## embedded broker + worker + producer; predictions, dead letters, drift; then the closed loop
	$(VENV)/bin/streamscore demo
	$(VENV)/bin/streamscore demo --closed-loop

demo-loop: venv            ## only the closed loop: concept change → alert → retrain → shadow → gate → promotion
	$(VENV)/bin/streamscore demo --closed-loop

# The status-page test (tests/e2e/test_status_page.py) renders the worker's page in headless Debian chromium.
# Installed only when missing, and only as root with apt-get (CI runs as root); anywhere else this says how,
# and that test skips with the same sentence.
chromium:                  ## Debian's chromium for the browser test (apt-get, as root; nothing when present)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) || \
		echo "could not install chromium: the status-page browser test will skip"; \
	else \
		echo "chromium is not installed (as root: apt-get install chromium): the status-page browser test will skip"; \
	fi

# The live metrics test (tests/e2e/test_metrics_live.py) runs `promtool check metrics` on a worker's /metrics;
# Debian's prometheus package ships promtool (where systemd runs, it also starts a server: `systemctl disable --now
# prometheus`). As for chromium: only when missing, only as root; otherwise the test checks with its strict parser
# alone and says so.
promtool:                  ## Debian's promtool for the strict /metrics test (apt-get, as root; nothing when present)
	@command -v promtool >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus) || \
		echo "could not install promtool: the live metrics test checks without it"; \
	else \
		echo "promtool is not installed (as root: apt-get install prometheus): the live metrics test checks without it"; \
	fi

# Two pytest processes, whole files each (module fixtures stay in one process), each with its own embedded
# broker: the end-to-end tests mostly wait on workers and group joins, so two run side by side on 2 cores.
test: venv chromium promtool ## unit + end-to-end tests (starts its own embedded brokers)
	$(PY) -m pytest -q -ra -n 2 --dist loadfile --durations=25

test-unit: venv
	$(PY) -m pytest -q -m "not e2e"

bench: venv                ## throughput/latency vs raw confluent-kafka and raw onnxruntime
	$(VENV)/bin/streamscore bench

lint: venv
	$(VENV)/bin/ruff check .

clean:
	-$(VENV)/bin/streamscore broker down
	rm -rf .streamscore artifacts
