import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CommanderError, InvalidArgumentError } from "commander";
import {
  EXIT_CLIENT,
  EXIT_OK,
  EXIT_SERVER,
  EXIT_USAGE,
  exitCodeOf,
  formatError,
  usageError,
} from "../../src/cli/errors.js";
import { apiError, ClientError, configError, transportError } from "../../src/client/index.js";
import { CustosError } from "../../src/errors/index.js";

describe("exit codes", () => {
  test("API answers: 4xx is the caller's fault (1), 5xx the server's (2)", () => {
    assert.equal(exitCodeOf(apiError(400, "invalid_request", "bad")), EXIT_CLIENT);
    assert.equal(exitCodeOf(apiError(404, "not_found", "no such key")), EXIT_CLIENT);
    assert.equal(exitCodeOf(apiError(429, "rate_limited", "slow down")), EXIT_CLIENT);
    assert.equal(exitCodeOf(apiError(500, "internal", "request r1 failed")), EXIT_SERVER);
    assert.equal(exitCodeOf(apiError(503, "hsm_unavailable", "try later")), EXIT_SERVER);
  });

  test("no answer at all is exit 2, a bad invocation or unusable client settings 64", () => {
    assert.equal(exitCodeOf(transportError("unavailable", "refused")), EXIT_SERVER);
    assert.equal(exitCodeOf(transportError("tls_error", "self-signed")), EXIT_SERVER);
    assert.equal(exitCodeOf(new ClientError("internal", "not JSON", { status: 200 })), EXIT_SERVER);
    assert.equal(exitCodeOf(usageError("no")), EXIT_USAGE);
    assert.equal(exitCodeOf(configError('invalid address "x"')), EXIT_USAGE);
  });

  test("no token configured is the caller's fault (1)", () => {
    assert.equal(exitCodeOf(new ClientError("unauthenticated", "no token")), EXIT_CLIENT);
  });

  test("commander: help and version succeed, its parse errors are usage errors", () => {
    assert.equal(exitCodeOf(new CommanderError(0, "commander.helpDisplayed", "(outputHelp)")), EXIT_OK);
    assert.equal(exitCodeOf(new CommanderError(1, "commander.unknownOption", "unknown option")), EXIT_USAGE);
    assert.equal(exitCodeOf(new CommanderError(1, "commander.help", "(outputHelp)")), EXIT_USAGE);
    const invalid = new InvalidArgumentError("nope");
    assert.equal(exitCodeOf(invalid), EXIT_USAGE);
  });

  test("local CustosErrors follow their code's status family; anything else is exit 2", () => {
    assert.equal(exitCodeOf(new CustosError("invalid_request", "config: bad")), EXIT_CLIENT);
    assert.equal(exitCodeOf(new CustosError("hsm_unavailable", "no token")), EXIT_SERVER);
    assert.equal(exitCodeOf(new TypeError("boom")), EXIT_SERVER);
    assert.equal(exitCodeOf("a string"), EXIT_SERVER);
  });
});

describe("formatError", () => {
  test("prints error: <code>: <message>", () => {
    assert.equal(formatError(apiError(404, "not_found", 'key "x" not found')), 'error: not_found: key "x" not found');
    assert.equal(formatError(new CustosError("conflict", "taken")), "error: conflict: taken");
    assert.equal(
      formatError(configError("CUSTOS_CACERT x holds no PEM")),
      "error: invalid_config: CUSTOS_CACERT x holds no PEM",
    );
    assert.equal(formatError(usageError("--key is required")), "error: usage: --key is required");
    assert.equal(formatError(new Error("oops")), "error: internal: oops");
  });

  test("codes the server invents later pass through unchanged", () => {
    const e = apiError(409, "some_future_code", "later");
    assert.equal(formatError(e), "error: some_future_code: later");
    assert.equal(exitCodeOf(e), EXIT_CLIENT);
    assert.equal(exitCodeOf(apiError(507, "some_future_code", "later")), EXIT_SERVER);
  });

  test("control characters from the server cannot reach the terminal", () => {
    const line = formatError(apiError(400, "invalid_request", "bad\u001b[2J\r\nforged line\u0007"));
    assert.equal(line, "error: invalid_request: bad\ufffd[2J\ufffd\ufffdforged line\ufffd");
  });
});
