import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, test } from "node:test";
import {
  bootstrapTokenId,
  bootstrapTokenMatches,
  hashBootstrapToken,
  newBootstrapToken,
} from "../../src/broker/bootstrap-token.js";
import { renewAtOf } from "../../src/broker/identity.js";
import { checkLabel, isDnsLabel, spiffeIdOf } from "../../src/broker/names.js";

describe("bootstrap tokens", () => {
  test("are cbt.<id>.<secret>, distinct, and stored as SHA-256 of the whole string", () => {
    const a = newBootstrapToken();
    const b = newBootstrapToken();
    assert.match(a.token, /^cbt\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{43}$/);
    assert.notEqual(a.token, b.token);
    assert.notEqual(a.id, b.id);
    assert.equal(bootstrapTokenId(a.token), a.id);
    assert.equal(a.hash, createHash("sha256").update(a.token).digest("hex"));
    assert.ok(!a.hash.includes(a.token.split(".")[2] ?? "-"));
  });

  test("only the exact token matches its hash", () => {
    const t = newBootstrapToken();
    assert.equal(bootstrapTokenMatches(t.token, t.hash), true);
    const last = t.token.at(-1) === "A" ? "B" : "A";
    assert.equal(bootstrapTokenMatches(`${t.token.slice(0, -1)}${last}`, t.hash), false);
    assert.equal(bootstrapTokenMatches(t.token, hashBootstrapToken("other")), false);
    assert.equal(bootstrapTokenMatches(t.token, "not-hex"), false);
  });

  test("malformed strings have no id", () => {
    for (const bad of [
      undefined,
      42,
      "",
      "cbt..",
      `cst_${"a".repeat(16)}`,
      `cbt.${"a".repeat(15)}.${"b".repeat(43)}`,
    ]) {
      assert.equal(bootstrapTokenId(bad), undefined, String(bad));
    }
    assert.equal(bootstrapTokenId(`cbt.${"a".repeat(16)}.${"b".repeat(43)}\n`), undefined);
  });
});

describe("instance names", () => {
  test("DNS labels only", () => {
    for (const ok of ["a", "web-1", "0", "a".repeat(63)]) assert.equal(isDnsLabel(ok), true, ok);
    for (const bad of ["", "-a", "a-", "A", "web_1", "a.b", "a".repeat(64), "a/b", null]) {
      assert.equal(isDnsLabel(bad), false, String(bad));
    }
    assert.throws(() => checkLabel("instance", "Web"), { code: "invalid_request" });
  });

  test("SPIFFE ids follow the documented layout", () => {
    assert.equal(
      spiffeIdOf("custos", { org: "acme", space: "prod", app: "web", instance: "web-1" }),
      "spiffe://custos/org/acme/space/prod/app/web/instance/web-1",
    );
  });

  test("renewal is due at half-life", () => {
    assert.equal(renewAtOf("2026-01-01T00:00:00.000Z", "2026-01-01T01:00:00.000Z"), "2026-01-01T00:30:00.000Z");
  });
});
