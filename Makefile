# operator/ at the top of the tree must never shadow the standard library module
# "operator": keep the current directory off sys.path for every Python we start.
export PYTHONSAFEPATH := 1

.PHONY: demo test test-deps lint unit unit-min integration bench e2e-kind clean

# Run kvol's main job on the embedded filesystem store: no cluster, no server.
demo:
	hack/setup-venv.sh
	.venv/bin/kvol demo

# Install every test dependency (Python packages, Go-built tools) and run all tests (some
# of them beside the e2e tier: hack/run-tests.sh).
test: test-deps lint
	hack/run-tests.sh

test-deps:
	hack/setup-venv.sh test
	hack/install-test-deps.sh

lint:
	hack/lint.sh

unit:
	hack/setup-venv.sh test
	.venv/bin/python -m pytest -ra tests/unit

# The unit tests against the lowest dependency versions pyproject.toml declares, in a venv
# of their own (.venv-min; hack/min_constraints.py pins them).
unit-min:
	hack/setup-venv-min.sh
	.venv-min/bin/python -m pytest -ra -p no:cacheprovider tests/unit

# Benchmarks (opt-in; JSON on stdout). `python -m bench` needs the repository root on
# sys.path, which it gets only after start-up, when the standard library's operator
# module is already loaded: so here, and only here, PYTHONSAFEPATH is dropped.
bench:
	hack/setup-venv.sh test
	env -u PYTHONSAFEPATH .venv/bin/python -m bench $(BENCH_ARGS)

# kvol on a three-node kind cluster with no registry (root, Linux; not part of `make test`):
# builds the node image and every image locally (cached under ~/.cache/kvol/kind), creates
# the cluster, runs the e2e tier (tests/e2e, multi-node tests included) against it and
# removes it all again (hack/kind-e2e.sh; KVOL_KIND_KEEP=1 keeps it).
e2e-kind:
	hack/setup-venv.sh test
	hack/install-test-deps.sh
	hack/kind-e2e.sh

clean:
	rm -rf .venv .venv-min build *.egg-info
