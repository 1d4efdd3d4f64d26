# The two commands of the README: `make run` and `make test`.
SHELL := /bin/bash
CUSTOS := node bin/custos.js

.PHONY: run test setup deps dev-token build lint typecheck bench clean

## Install what is missing, provision the development HSM token and store under var/, and serve HTTPS.
run: setup
	@echo
	@echo "  Custos is starting; it prints the address it serves on (CUSTOS_LISTEN or the config's listen)"
	@echo "  admin token:    var/admin.token (mode 0600)"
	@echo "  CA certificate: var/tls/ca.pem"
	@echo "  try:  CUSTOS_TOKEN_FILE=var/admin.token CUSTOS_CACERT=var/tls/ca.pem npx custos key list"
	@echo
	@exec $(CUSTOS) server

## The same set-up, then lint, type check and run the whole suite (each run on a SoftHSM token of its own).
test: setup lint typecheck
	npm test

## What both need: Debian packages and node modules, the development token and store under var/, initialised.
setup: deps dev-token build
	@$(CUSTOS) init

deps:
	@scripts/install-deps.sh

dev-token: deps
	@scripts/dev-token.sh

build: deps
	@npm run --silent build

lint: deps
	npm run --silent lint

typecheck: deps
	npm run --silent typecheck

## npm run bench -- <name>; e.g. make bench NAME=core
bench: deps build
	npm run bench -- $(NAME)

clean:
	rm -rf dist
