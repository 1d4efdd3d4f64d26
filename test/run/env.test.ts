import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseEnvMapping, secretVariables, variableFor } from "../../src/agent/run-env.js";

const secret = (name: string, value: string, path = `acme/prod/web/${name}`) => ({ path, name, value });
/** What custos run inherited in these tests: nothing a secret's default name meets, unless a test says. */
const NONE: ReadonlySet<string> = new Set();
const WEB = [
  secret("db/password", "pw"),
  secret("api-key", "key"),
  secret("shared/ca-bundle", "bundle", "shared/ca-bundle"),
];

describe("custos run environment", () => {
  test("default names: upper case, every other character _, a leading digit prefixed", () => {
    assert.equal(variableFor("db/password"), "DB_PASSWORD");
    assert.equal(variableFor("shared/ca-bundle"), "SHARED_CA_BUNDLE");
    assert.equal(variableFor("api.v2-key"), "API_V2_KEY");
    assert.equal(variableFor("1st/token"), "_1ST_TOKEN");
    assert.equal(variableFor("Already_UPPER"), "ALREADY_UPPER");
  });

  test("--env NAME=<secret> parses; bad names and reserved ones are refused", () => {
    assert.deepEqual(parseEnvMapping("PGPASSWORD=db/password"), { variable: "PGPASSWORD", secret: "db/password" });
    assert.deepEqual(parseEnvMapping("X=a=b"), { variable: "X", secret: "a=b" });
    assert.throws(() => parseEnvMapping("db/password"), /expected NAME=<secret name>/);
    assert.throws(() => parseEnvMapping("1X=db"), /expected NAME=<secret name>/);
    assert.throws(() => parseEnvMapping("A-B=db"), /expected NAME=<secret name>/);
    assert.throws(() => parseEnvMapping("X="), /the secret name is empty/);
    assert.throws(() => parseEnvMapping("CUSTOS_KEY_FILE=db"), /set by custos run itself/);
  });

  test("automatic: every secret under its default name", () => {
    const { variables, conflicts, missing } = secretVariables(WEB, { automatic: true, mappings: [] }, NONE);
    assert.deepEqual(variables, { API_KEY: "key", DB_PASSWORD: "pw", SHARED_CA_BUNDLE: "bundle" });
    assert.deepEqual([...conflicts, ...missing], []);
  });

  test("an explicit mapping replaces the default name; by name or whole path", () => {
    const { variables, conflicts, missing } = secretVariables(
      WEB,
      {
        automatic: true,
        mappings: [
          { variable: "PGPASSWORD", secret: "db/password" },
          { variable: "CA", secret: "shared/ca-bundle" },
        ],
      },
      NONE,
    );
    assert.deepEqual(variables, { PGPASSWORD: "pw", CA: "bundle", API_KEY: "key" });
    assert.deepEqual([...conflicts, ...missing], []);
    const byPath = secretVariables(
      WEB,
      {
        automatic: false,
        mappings: [{ variable: "K", secret: "acme/prod/web/api-key" }],
      },
      NONE,
    );
    assert.deepEqual(byPath.variables, { K: "key" });
  });

  test("--no-env: only the mapped ones", () => {
    assert.deepEqual(secretVariables(WEB, { automatic: false, mappings: [] }, NONE).variables, {});
    assert.deepEqual(
      secretVariables(WEB, { automatic: false, mappings: [{ variable: "P", secret: "db/password" }] }, NONE).variables,
      { P: "pw" },
    );
  });

  test("a mapped secret that didn't come is missing; two secrets for one name, a reserved name conflict; no value shown", () => {
    const clash = [...WEB, secret("db-password", "other"), secret("custos/spiffe-id", "sneaky")];
    const { variables, conflicts, missing } = secretVariables(
      clash,
      {
        automatic: true,
        mappings: [{ variable: "Q", secret: "queue/token" }],
      },
      NONE,
    );
    assert.equal(variables.DB_PASSWORD, undefined, "a clash puts neither in");
    assert.equal(variables.CUSTOS_SPIFFE_ID, undefined);
    assert.equal(variables.API_KEY, "key");
    assert.deepEqual(missing, ['--env Q: secret "queue/token" is not one this instance receives']);
    assert.equal(conflicts.length, 2);
    assert.ok(conflicts.some((p) => /custos\/spiffe-id would go into CUSTOS_SPIFFE_ID/.test(p)));
    assert.ok(conflicts.some((p) => /db-password and db\/password both go into DB_PASSWORD/.test(p)));
    for (const p of conflicts) assert.ok(!/\bpw\b|other|sneaky/.test(p), p);
  });

  test("a default name never replaces an inherited variable or takes a loader one; an explicit --env may", () => {
    const risky = [secret("path", "/tmp/evil"), secret("ld_preload", "/tmp/evil.so"), secret("dyld/insert", "x")];
    const inherited = new Set(["PATH", "HOME"]);
    const { variables, conflicts: problems } = secretVariables(risky, { automatic: true, mappings: [] }, inherited);
    assert.deepEqual(variables, {});
    assert.equal(problems.length, 3);
    assert.match(problems[0] ?? "", /secret dyld\/insert would replace DYLD_INSERT, which makes a program load code/);
    assert.match(problems[1] ?? "", /secret ld_preload would replace LD_PRELOAD, which makes a program load code/);
    assert.match(problems[2] ?? "", /secret path would replace PATH, inherited by custos run: .*--env PATH=path/);
    for (const p of problems) assert.ok(!p.includes("evil"), p);
    const mapped = secretVariables(
      risky,
      { automatic: false, mappings: [{ variable: "PATH", secret: "path" }] },
      inherited,
    );
    assert.deepEqual(mapped, { variables: { PATH: "/tmp/evil" }, conflicts: [], missing: [], unusable: [] });
  });

  test("a value no environment can hold (a NUL byte) stays out, named by secret and variable, never shown", () => {
    const nul = [...WEB, secret("token", "before\u0000after")];
    for (const policy of [
      { automatic: true, mappings: [] },
      { automatic: false, mappings: [{ variable: "TOKEN", secret: "token" }] },
    ]) {
      const { variables, conflicts, missing, unusable } = secretVariables(nul, policy, NONE);
      assert.equal(variables.TOKEN, undefined);
      assert.deepEqual([...conflicts, ...missing], []);
      assert.deepEqual(unusable, ["secret token can't go into TOKEN: its value holds a NUL byte"]);
    }
    assert.deepEqual(secretVariables(WEB, { automatic: true, mappings: [] }, NONE).unusable, []);
  });
});
