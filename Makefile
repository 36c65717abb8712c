# segstream: `make up` runs everything, `make test` tests everything.
# Both install what is missing first: Node 24 (npm package), npm dependencies,
# a pinned nats-server (go install), PostgreSQL server binaries (apt, for tests).

SHELL := /bin/bash
NATS_SERVER_VERSION := v2.15.2
ROOT := $(CURDIR)
export PATH := $(ROOT)/node_modules/.bin:$(ROOT)/.tools/bin:/usr/local/go/bin:$(PATH)
export GOBIN := $(ROOT)/.tools/bin

.PHONY: setup up test test-chaos typecheck graph browser clean-data help bench bench-ingest bench-runtime bench-explore bench-funnels

help:
	@echo "make up        run the local stack (nats-server, database, operators, gateway on :8080)"
	@echo "make test      run the whole test suite against real servers"
	@echo "make graph     print the dataflow as Mermaid"
	@echo "make bench     end to end: collector -> enrich -> sessionize -> sink (about 8 minutes)"
	@echo "make bench-explore  exploration queries on 1,000,000 users and 20,000,000 events loaded by COPY"
	@echo "make bench-funnels  funnels: pure logic (10 funnels, 100,000 users), state RSS at 1,000,000 users, one funnel step on nats-server, a backfill from the stream, a backfill over 10,000,000 events in PostgreSQL (about 15 minutes)"

setup: node_modules/.installed .tools/nats-server-$(NATS_SERVER_VERSION) .tools/postgresql.ok

node_modules/.installed: package.json package-lock.json .npmrc
	npm ci --no-audit --no-fund
	# tap compiles its plugin set; ours leaves out ts-node (Node 24 strips types itself)
	tap build
	@node -e 'const [a,b]=process.versions.node.split(".").map(Number); if (a<22||(a===22&&b<18)) { console.error("node_modules/.bin/node is " + process.version + ", expected >= 22.18"); process.exit(1) }'
	touch $@

.tools/nats-server-$(NATS_SERVER_VERSION):
	@mkdir -p .tools/bin
	@command -v go >/dev/null || { echo "Go is needed once, to build nats-server $(NATS_SERVER_VERSION) (apt-get install golang or see https://go.dev/dl)"; exit 1; }
	go install github.com/nats-io/nats-server/v2@$(NATS_SERVER_VERSION)
	.tools/bin/nats-server --version
	touch $@

.tools/postgresql.ok:
	@mkdir -p .tools
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "$$PG_BINDIR" ]; then \
	  echo "installing PostgreSQL server binaries (tests start their own clusters)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi
	touch $@

.tools/chromium.ok: scripts/ensure-chromium.sh
	@mkdir -p .tools
	bash scripts/ensure-chromium.sh
	touch $@

tracker/dist/t.js: node_modules/.installed tracker/src/index.ts scripts/build-browser.ts package.json
	node scripts/build-browser.ts

browser: tracker/dist/t.js

typecheck: setup
	tsc --noEmit -p tsconfig.json

up: setup tracker/dist/t.js
	node bin/segstream.js up

test: setup typecheck .tools/chromium.ok
	tap

test-chaos: setup
	SEGSTREAM_CHAOS=1 tap test/chaos/*.test.ts

graph: setup
	@node bin/segstream.js topology graph

clean-data:
	rm -rf data

bench: setup
	node bench/e2e.ts $(BENCH_ARGS)

bench-ingest: setup
	node bench/ingest.ts

bench-runtime: setup
	node bench/runtime.ts

bench-explore: setup
	node bench/explore.ts $(BENCH_ARGS)

bench-funnels: setup
	node bench/funnels.ts $(BENCH_ARGS)
