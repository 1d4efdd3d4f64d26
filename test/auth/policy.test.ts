import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ACTIONS, isPrivilegedAction, PRIVILEGED_ACTIONS } from "../../src/auth/actions.js";
import { globMatch } from "../../src/auth/glob.js";
import { ADMIN_POLICY, builtinAdminPolicy, PolicySet, validatePolicy } from "../../src/auth/policy.js";
import { isCustosError } from "../../src/errors/index.js";
import type { PolicyRecord, PolicyRule } from "../../src/store/index.js";

const AT = "2025-01-01T00:00:00.000Z";

function policy(name: string, rules: PolicyRule[]): PolicyRecord {
  return { name, description: "", rules, createdAt: AT, updatedAt: AT, revision: 1 };
}

describe("globMatch", () => {
  test("literal patterns match only themselves", () => {
    assert.equal(globMatch("key/app", "key/app"), true);
    assert.equal(globMatch("key/app", "key/app2"), false);
    assert.equal(globMatch("key/app", "key/ap"), false);
  });

  test("* matches any run, including none and slashes", () => {
    assert.equal(globMatch("key/app-a-*", "key/app-a-"), true);
    assert.equal(globMatch("key/app-a-*", "key/app-a-db"), true);
    assert.equal(globMatch("key/app-a-*", "key/app-b-db"), false);
    assert.equal(globMatch("*", ""), true);
    assert.equal(globMatch("*", "user/alice"), true);
    assert.equal(globMatch("key/*", "key/a/b"), true);
    assert.equal(globMatch("*-db", "key/app-db"), true);
    assert.equal(globMatch("*-db", "key/app-dbx"), false);
    assert.equal(globMatch("a*b*c", "axxbyyc"), true);
    assert.equal(globMatch("a*b*c", "axxbyy"), false);
  });

  test("regex metacharacters are literal", () => {
    assert.equal(globMatch("key/a.b", "key/aXb"), false);
    assert.equal(globMatch("key/a+", "key/aa"), false);
    assert.equal(globMatch("key/(x)", "key/(x)"), true);
  });

  test("a pattern full of stars stays cheap on a long non-matching resource", () => {
    // Exponential backtracking would not finish; the answer itself is what we assert.
    assert.equal(globMatch(`${"*a".repeat(40)}*b`, "a".repeat(5000)), false);
  });
});

describe("validatePolicy", () => {
  const ok = (rules: PolicyRule[]) => validatePolicy({ name: "P1", rules });
  const rejects = (fn: () => unknown, code = "invalid_request") =>
    assert.throws(fn, (e: unknown) => isCustosError(e) && e.code === code);

  test("normalises the name and de-duplicates actions", () => {
    const p = ok([{ resource: "key/app-a-*", actions: ["key:encrypt", "key:encrypt", "key:*"] }]);
    assert.equal(p.name, "p1");
    assert.equal(p.description, "");
    assert.deepEqual(p.rules, [{ resource: "key/app-a-*", actions: ["key:encrypt", "key:*"] }]);
  });

  test("refuses unknown actions, bad wildcards and privileged actions", () => {
    rejects(() => ok([{ resource: "*", actions: ["key:explode"] }]));
    rejects(() => ok([{ resource: "*", actions: ["*:read"] }]));
    rejects(() => ok([{ resource: "*", actions: ["ke*y"] }]));
    rejects(() => ok([{ resource: "*", actions: ["nothing:*"] }]));
    rejects(() => ok([{ resource: "*", actions: ["key:destroy"] }]));
    rejects(() => ok([{ resource: "*", actions: ["audit:read"] }]));
    rejects(() => ok([{ resource: "*", actions: [] }]));
  });

  test("refuses empty, spaced or over-long resource patterns and empty rule lists", () => {
    rejects(() => ok([{ resource: "", actions: ["key:read"] }]));
    rejects(() => ok([{ resource: "key/a b", actions: ["key:read"] }]));
    rejects(() => ok([{ resource: `key/${"x".repeat(300)}`, actions: ["key:read"] }]));
    rejects(() => ok([]));
    rejects(() => validatePolicy({ name: "Bad Name", rules: [{ resource: "*", actions: ["*"] }] }));
  });

  test("admin cannot be replaced", () => {
    rejects(() => validatePolicy({ name: "Admin", rules: [{ resource: "*", actions: ["*"] }] }), "forbidden");
  });
});

describe("PolicySet.allows", () => {
  const set = new PolicySet([
    policy("app-a", [{ resource: "key/app-a-*", actions: ["key:encrypt", "key:decrypt"] }]),
    policy("keys-all", [{ resource: "key/*", actions: ["key:*"] }]),
    policy("everything", [{ resource: "*", actions: ["*"] }]),
    // A stored record that names a privileged action (written before validation, say) still grants nothing privileged.
    policy("sneaky", [{ resource: "*", actions: ["key:destroy", "audit:read"] }]),
  ]);

  test("deny by default", () => {
    assert.equal(set.allows([], "key:read", "key/x"), false);
    assert.equal(set.allows(["no-such-policy"], "key:read", "key/x"), false);
  });

  test("a policy scoped to key/app-a-* can't touch key/app-b-*", () => {
    assert.equal(set.allows(["app-a"], "key:encrypt", "key/app-a-db"), true);
    assert.equal(set.allows(["app-a"], "key:decrypt", "key/app-a-db"), true);
    assert.equal(set.allows(["app-a"], "key:encrypt", "key/app-b-db"), false);
    assert.equal(set.allows(["app-a"], "key:sign", "key/app-a-db"), false);
  });

  test("wildcards cover non-privileged actions only", () => {
    assert.equal(set.allows(["keys-all"], "key:rotate", "key/x"), true);
    assert.equal(set.allows(["keys-all"], "key:destroy", "key/x"), false);
    assert.equal(set.allows(["keys-all"], "user:read", "user/x"), false);
    assert.equal(set.allows(["everything"], "user:write", "user/x"), true);
    for (const action of PRIVILEGED_ACTIONS) {
      assert.equal(set.allows(["everything", "sneaky"], action, "audit"), false, action);
    }
  });

  test("admin allows every action, privileged included, on anything", () => {
    for (const action of ACTIONS) assert.equal(set.allows([ADMIN_POLICY], action, "key/whatever"), true, action);
    assert.equal(set.has(ADMIN_POLICY), true);
  });

  test("a stored record named admin cannot narrow or widen the built-in one", () => {
    const odd = new PolicySet([policy(ADMIN_POLICY, [{ resource: "nothing", actions: ["key:read"] }])]);
    assert.equal(odd.allows([ADMIN_POLICY], "audit:verify", "audit"), true);
    assert.deepEqual(builtinAdminPolicy(AT).rules, [{ resource: "*", actions: ["*"] }]);
  });

  test("unknown actions are denied to non-admins", () => {
    assert.equal(set.allows(["everything"], "xks:encrypt", "xks/x"), false);
    assert.equal(isPrivilegedAction("key:encrypt"), false);
  });
});
