import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CliError, EXIT_USAGE } from "../../src/cli/errors.js";
import { addContextPair, parseContextPair, parseDuration, parseInteger, parsePolicyRule } from "../../src/cli/parse.js";

function usage(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof CliError, `expected CliError, got ${String(e)}`);
    assert.equal(e.code, "usage");
    assert.equal(e.exitCode, EXIT_USAGE);
    assert.match(e.message, pattern);
    return true;
  });
}

describe("parseDuration", () => {
  test("accepts each unit", () => {
    assert.equal(parseDuration("90s"), 90);
    assert.equal(parseDuration("30m"), 1800);
    assert.equal(parseDuration("1h"), 3600);
    assert.equal(parseDuration("7d"), 604_800);
  });

  test("adds up compound durations and ignores surrounding blanks", () => {
    assert.equal(parseDuration("1h30m"), 5400);
    assert.equal(parseDuration(" 1d12h "), 129_600);
  });

  test("refuses bare numbers, unknown units, signs, decimals and blanks", () => {
    for (const bad of ["30", "5x", "-1h", "1.5h", "", "h", "1 h", "1H", "1w"]) {
      usage(() => parseDuration(bad), /invalid duration/);
    }
  });

  test("refuses zero and absurd lengths", () => {
    usage(() => parseDuration("0s"), /more than 0/);
    usage(() => parseDuration("36600d"), /100 years/);
    usage(() => parseDuration("99999999999999999999d"), /invalid duration/);
  });
});

describe("--context pairs", () => {
  test("split at the first =, so values may contain =", () => {
    assert.deepEqual(parseContextPair("app=a"), ["app", "a"]);
    assert.deepEqual(parseContextPair("q=a=b"), ["q", "a=b"]);
    assert.deepEqual(parseContextPair("empty="), ["empty", ""]);
  });

  test("a missing = or an empty key is a usage error", () => {
    usage(() => parseContextPair("nope"), /expected key=value/);
    usage(() => parseContextPair("=v"), /key is empty/);
  });

  test("__proto__ is refused, as the API refuses it; other Object.prototype names are plain keys", () => {
    usage(() => parseContextPair("__proto__=v"), /__proto__ is reserved/);
    const context = addContextPair("constructor=c", addContextPair("toString=t", undefined));
    assert.deepEqual(Object.entries(context), [
      ["toString", "t"],
      ["constructor", "c"],
    ]);
  });

  test("accumulate into a fresh object and refuse a repeated key", () => {
    const first = addContextPair("app=a", undefined);
    const both = addContextPair("bucket=photos", first);
    assert.deepEqual(both, { app: "a", bucket: "photos" });
    assert.deepEqual(first, { app: "a" }, "the previous object is not mutated");
    usage(() => addContextPair("app=b", both), /given twice/);
  });

  test("keys named like Object.prototype members are ordinary keys", () => {
    assert.deepEqual(addContextPair("constructor=x", undefined), { constructor: "x" });
    assert.deepEqual(addContextPair("toString=y", { a: "1" }), { a: "1", toString: "y" });
  });
});

describe("parsePolicyRule", () => {
  test("splits the resource from comma-separated actions", () => {
    assert.deepEqual(parsePolicyRule("key/app-a-*=key:encrypt,key:decrypt"), {
      resource: "key/app-a-*",
      actions: ["key:encrypt", "key:decrypt"],
    });
    assert.deepEqual(parsePolicyRule(" audit = audit:read , "), { resource: "audit", actions: ["audit:read"] });
  });

  test("splits at the last =, since actions never hold one", () => {
    assert.deepEqual(parsePolicyRule("key/a=b=key:sign"), { resource: "key/a=b", actions: ["key:sign"] });
  });

  test("refuses a missing =, an empty resource or no actions", () => {
    usage(() => parsePolicyRule("key/x"), /expected resource=action/);
    usage(() => parsePolicyRule("=key:encrypt"), /resource is empty/);
    usage(() => parsePolicyRule("key/x= , "), /no actions/);
  });
});

describe("parseInteger", () => {
  test("accepts decimal digits within bounds", () => {
    assert.equal(parseInteger("32", "bytes"), 32);
    assert.equal(parseInteger("0", "seq", 0), 0);
  });

  test("refuses other notations and out-of-range values, naming what was wanted", () => {
    for (const bad of ["1e3", "0x10", "-1", "1.0", "", "ten"]) usage(() => parseInteger(bad, "limit"), /invalid limit/);
    usage(() => parseInteger("0", "limit"), /from 1 to/);
    usage(() => parseInteger("10000", "limit", 1, 9999), /from 1 to 9999/);
  });
});
