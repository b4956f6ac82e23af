# keycloak-pep: build the filter, run the real stack, test, benchmark.
SHELL := /bin/bash
.DEFAULT_GOAL := help
WASM := dist/keycloak_pep.wasm
# The same filter checking token signatures in wasm (hosts without Envoy's verify_signature,
# RSA-PSS or EdDSA realm keys).
WASM_RUST_CRYPTO := dist/keycloak_pep_rust_crypto.wasm

.PHONY: help build wasm wasm-rust-crypto policies-jar test unit abi e2e test-istio e2e-matrix test-docker fuzz fuzz-diff lint up down demo bench profile size soak failover oci clean

help:
	@echo "make demo    build the filter, start Keycloak + Envoy + an echo upstream on 127.0.0.1, show allowed/denied requests"
	@echo "make test    lint, then all tests: unit, wasmtime ABI, and end-to-end against the real Keycloak and Envoy"
	@echo "make build   dist/keycloak_pep.wasm (wasm32-wasip1, release; signatures checked by Envoy) and the kcpep CLI"
	@echo "make wasm-rust-crypto   dist/keycloak_pep_rust_crypto.wasm: signatures checked in wasm (hosts without verify_signature)"
	@echo "make up / make down   start / stop the stack in the background"
	@echo "make test-istio   istiod (Istio's control plane, in-process, no cluster) serving envoy/istio/ to Envoy as the ingress gateway, against the real Keycloak"
	@echo "make e2e-matrix   the end-to-end suites against Keycloak 26.7, 26.0 and the /auth path"
	@echo "make test-docker  the end-to-end suites against envoy/docker-compose.yaml's containers (installs Docker from Debian as root, builds the images)"
	@echo "make policies-jar dist/kcpep-policies.jar: the realm's JavaScript policies, which the compose file mounts into Keycloak"
	@echo "make fuzz         every parser under generated input, long (PROPTEST_CASES, 200000)"
	@echo "make fuzz-diff    path normalization and matching against Keycloak's own matchers, new seeds for KCPEP_FUZZ_MINUTES (10)"
	@echo "make bench   benchmarks (prints figures)"
	@echo "make profile where a cache hit spends its time in the module (perf)"
	@echo "make size    where the module's bytes go, per crate and function (twiggy)"
	@echo "make soak    production-like load for KCPEP_SOAK_SECONDS (600): 1,000 users, rotating tokens; CSV + PNG in results/"
	@echo "make failover   two Keycloak nodes on PostgreSQL behind the filter: kill -9 one mid-run, restart it, stop both"
	@echo "make oci     dist/oci: an OCI image layout of the filter for Istio (no container engine needed)"

build: wasm
	cargo build --release --bin kcpep

wasm: $(WASM)

$(WASM): Cargo.toml scripts/build-wasm.sh $(shell find src -name '*.rs' 2>/dev/null)
	scripts/build-wasm.sh

wasm-rust-crypto: $(WASM_RUST_CRYPTO)

# The realm's JavaScript policies as a provider jar, the bytes scripts/stack.sh puts into the native
# Keycloak's providers/; envoy/docker-compose.yaml mounts this one.
POLICIES_JAR := dist/kcpep-policies.jar
policies-jar: $(POLICIES_JAR)

$(POLICIES_JAR): scripts/policies-jar.py $(shell find envoy/keycloak/policies -type f 2>/dev/null)
	python3 scripts/policies-jar.py envoy/keycloak/policies $@

$(WASM_RUST_CRYPTO): Cargo.toml scripts/build-wasm.sh $(shell find src -name '*.rs' 2>/dev/null)
	KCPEP_WASM_FEATURES=rust-crypto scripts/build-wasm.sh Cargo.toml $(WASM_RUST_CRYPTO)

# fmt, clippy on the native crate (every target, the e2e suites included) and clippy on the wasm32
# shell, where clippy.toml's bans on the panicking proxy-wasm getters apply.
lint:
	cargo fmt --check
	cargo clippy --all-targets --features abi,istio,e2e -- -D warnings
	scripts/clippy-wasm.sh

unit:
	cargo test --lib --bins

abi: $(WASM) $(WASM_RUST_CRYPTO)
	cargo test --features abi --test abi --test host_selftest

# The suites that run against the real stack, listed once. They run on one thread; outage runs
# after them (it stops and starts Keycloak). manifests, mesh, per_route and reload check the native
# configuration with an Envoy of their own, and grpc needs the native stack's gRPC upstream and grpcio client, so
# the containers' run (make test-docker) leaves them out.
STACK_SUITES := authzen binding claims contract e2e grpc hostile hostile_requests manifests mesh operator oracle per_route reload replay
HOST_ONLY_SUITES := grpc manifests mesh per_route reload
DOCKER_SUITES := $(filter-out $(HOST_ONLY_SUITES),$(STACK_SUITES))
suites = $(addprefix --test ,$(1))

e2e: $(WASM) $(POLICIES_JAR)
	cargo test --features e2e $(call suites,$(STACK_SUITES) outage) --no-run
	scripts/istio-mesh.sh --build >/dev/null
	scripts/stack.sh test -- bash -c 'cargo test --features e2e $(call suites,$(STACK_SUITES)) -- --test-threads=1 && cargo test --features e2e --test outage'

# tests/mesh.rs alone under the stack: istiod's discovery server (scripts/istio-mesh.sh, built
# first: minutes the first time) serving envoy/istio/ to an Envoy as the ingress gateway.
test-istio: $(WASM) $(POLICIES_JAR)
	cargo test --features e2e --test mesh --no-run
	scripts/istio-mesh.sh --build >/dev/null
	scripts/stack.sh test -- cargo test --features e2e --test mesh -- --test-threads=1

# The e2e suites against envoy/docker-compose.yaml's containers (docker/README.md): Debian's Docker
# engine and docker-compose installed when missing (root), dockerd started (and stopped after, if
# this started it), the images built locally (docker/build-images.sh, skipped when present), then
# docker/stack.sh test.
test-docker: $(WASM) $(POLICIES_JAR)
	cargo test --features e2e $(call suites,$(DOCKER_SUITES) outage) --no-run
	docker/test-docker.sh bash -c 'cargo test --features e2e $(call suites,$(DOCKER_SUITES)) -- --test-threads=1 && cargo test --features e2e --test outage'

# tests/fuzz.rs' property runs over every parser, with many more cases than make test gives them.
fuzz:
	PROPTEST_CASES=$${PROPTEST_CASES:-200000} cargo test --test fuzz

# The differential corpus of tests/oracle.rs (the filter's path normalization and matching against
# Keycloak's own matchers) with a new seed each round, for KCPEP_FUZZ_MINUTES (10) minutes; stops at
# the first disagreement and prints its seed.
fuzz-diff:
	@end=$$(( $$(date +%s) + 60 * $${KCPEP_FUZZ_MINUTES:-10} )); seed=$$(date +%s); \
	while [ $$(date +%s) -lt $$end ]; do \
	  seed=$$((seed + 1)); echo "fuzz-diff: KCPEP_ORACLE_SEED=$$seed"; \
	  KCPEP_ORACLE_SEED=$$seed cargo test -q --features e2e --test oracle -- --nocapture generated || exit 1; \
	done

# The contract and e2e suites against the newest Keycloak, 26.0.x, and the legacy /auth path.
e2e-matrix: $(WASM)
	$(MAKE) e2e
	KCPEP_KEYCLOAK_VERSION=26.0.8 $(MAKE) e2e
	KCPEP_KEYCLOAK_RELATIVE_PATH=/auth $(MAKE) e2e

# The compose stack last: scripts/stack.sh test has taken the native stack down (same ports).
test: lint $(WASM) $(WASM_RUST_CRYPTO)
	cargo test --features abi,istio
	$(MAKE) e2e
	$(MAKE) test-docker

up: $(WASM)
	scripts/stack.sh up

down:
	scripts/stack.sh down

demo: $(WASM)
	scripts/stack.sh up
	scripts/demo.sh

bench: $(WASM)
	scripts/bench.sh

# where a cache hit's time goes inside the module (perf, wasmtime's perf map)
profile:
	scripts/profile.sh

size:
	scripts/size.sh

# Long runs with stacks of their own (their own ports, never the test stack's): see docs/soak.md and
# docs/failover.md.
soak: $(WASM)
	scripts/soak.sh

failover: $(WASM)
	scripts/failover.sh

oci: $(WASM)
	scripts/oci.sh

clean:
	rm -rf target dist .run
