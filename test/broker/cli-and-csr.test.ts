import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type CustosInstance, startCustos } from "../helpers/custos.js";

type Json = Record<string, unknown>;

function csrFor(dir: string, name: string, curve: "P-256" | "P-384" = "P-256"): string {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: curve });
  const keyFile = join(dir, `${name}.key`);
  writeFileSync(keyFile, privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
  const r = spawnSync("openssl", ["req", "-new", "-key", keyFile, "-subj", `/CN=${name}`], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

/** The same CSR with one bit of its signature flipped. */
function tampered(csrPem: string): string {
  const der = Buffer.from(csrPem.replace(/-----[A-Z ]+-----/g, "").replace(/\s+/g, ""), "base64");
  der[der.length - 5] = (der[der.length - 5] ?? 0) ^ 0x01;
  const body = der.toString("base64").replace(/(.{64})/g, "$1\n");
  return `-----BEGIN CERTIFICATE REQUEST-----\n${body}\n-----END CERTIFICATE REQUEST-----\n`;
}

describe("broker: CLI and CSR checks", () => {
  let custos: CustosInstance;
  let dir: string;
  let agentFile: string;

  before(async () => {
    custos = await startCustos();
    dir = mkdtempSync(join(tmpdir(), "custos-broker-cli-"));
    for (const [path, name] of [
      ["/v1/platform/orgs", "acme"],
      ["/v1/platform/orgs/acme/spaces", "dev"],
      ["/v1/platform/orgs/acme/spaces/dev/apps", "shop"],
    ] as const) {
      const a = await custos.call("POST", path, { name });
      assert.ok(a.status === 200 || a.status === 201, a.text);
    }
    agentFile = join(dir, "agent.token");
  });

  after(async () => {
    await custos?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("custos broker: agent-token, register (token file 0600), instance, lease, deregister", async () => {
    const made = custos.cli(["broker", "agent-token", "node-7", "--token-file", agentFile]);
    assert.equal(made.status, 0, made.stderr);
    assert.equal(statSync(agentFile).mode & 0o777, 0o600);
    const agent = readFileSync(agentFile, "utf8").trim();
    assert.match(agent, /^cst_/);
    assert.ok(!made.stdout.includes(agent), "the token went to the file only");
    // Standalone: it acts for no user, so it outlives the admin who made it.
    const listed = (await custos.call("GET", "/v1/auth/tokens")).body as {
      tokens: { name: string; userId: unknown }[];
    };
    assert.equal(listed.tokens.find((t) => t.name === "node-7")?.userId, null);

    const tokenFile = join(dir, "boot.token");
    const reg = custos.cli(
      ["broker", "register", "acme/dev/shop", "shop-1", "--ttl", "1h", "--token-file", tokenFile],
      {
        token: agent,
      },
    );
    assert.equal(reg.status, 0, reg.stderr);
    assert.equal(statSync(tokenFile).mode & 0o777, 0o600);
    const bootstrap = readFileSync(tokenFile, "utf8").trim();
    assert.match(bootstrap, /^cbt\./);
    assert.ok(!reg.stdout.includes(bootstrap));

    const printed = custos.cli(["broker", "register", "acme/dev/shop", "shop-2"], { token: agent });
    assert.equal(printed.status, 0, printed.stderr);
    assert.match(printed.stdout.trim(), /^cbt\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{43}$/);

    const shown = custos.cli(["--json", "broker", "instance", "shop-1"], { token: agent });
    assert.equal(shown.status, 0, shown.stderr);
    const view = JSON.parse(shown.stdout) as Json;
    assert.equal(view.state, "registered");
    assert.equal(view.spiffeId, "spiffe://custos/org/acme/space/dev/app/shop/instance/shop-1");
    assert.equal((view.bootstrapToken as Json).state, "unused");
    const leaseBefore = Date.parse(String(view.leaseExpiresAt));
    assert.ok(leaseBefore - Date.now() <= 3600 * 1000 && leaseBefore - Date.now() > 3000 * 1000);

    const lease = custos.cli(["--json", "broker", "lease", "shop-1", "--ttl", "2d"], { token: agent });
    assert.equal(lease.status, 0, lease.stderr);
    assert.ok(Date.parse(String((JSON.parse(lease.stdout) as Json).leaseExpiresAt)) - Date.now() > 86_400 * 1000);

    const stop = custos.cli(["--json", "broker", "deregister", "shop-1"], { token: agent });
    assert.equal(stop.status, 0, stop.stderr);
    const stopped = JSON.parse(stop.stdout) as Json;
    assert.equal(stopped.state, "stopped");
    assert.equal(stopped.stopReason, "deregistered");
    assert.equal((stopped.bootstrapToken as Json).state, "void");
    // Its token is void: the exchange is refused, audited as such.
    const ex = await custos.call(
      "POST",
      "/v1/broker/exchange",
      { token: bootstrap, instance: "shop-1", csr: csrFor(dir, "shop-1") },
      null,
    );
    assert.equal(ex.status, 401, ex.text);
    const audit = await custos.call("GET", "/v1/audit?action=broker.exchange&limit=100");
    const reasons = (audit.body as { records: Json[] }).records.map((r) => (r.details as Json).reason);
    assert.ok(reasons.includes("void"), JSON.stringify(reasons));

    const again = custos.cli(["broker", "deregister", "shop-1"], { token: agent });
    assert.notEqual(again.status, 0);
    assert.match(again.stderr, /already stopped/);
    const bad = custos.cli(["broker", "register", "acme/dev", "x-1"], { token: agent });
    assert.equal(bad.status, 64, bad.stderr);
  });

  test("a CSR whose signature fails or whose key type is not allowed is refused; the token stays usable", async () => {
    const reg = await custos.call("POST", "/v1/broker/instances", {
      org: "acme",
      space: "dev",
      app: "shop",
      instance: "shop-9",
    });
    assert.equal(reg.status, 201, reg.text);
    const token = (reg.body as Json).bootstrapToken;

    const forged = await custos.call(
      "POST",
      "/v1/broker/exchange",
      { token, instance: "shop-9", csr: tampered(csrFor(dir, "forged")) },
      null,
    );
    assert.equal(forged.status, 400, forged.text);
    assert.equal(((forged.body as Json).error as Json).code, "csr_invalid");

    const p384 = await custos.call(
      "POST",
      "/v1/broker/exchange",
      { token, instance: "shop-9", csr: csrFor(dir, "p384", "P-384") },
      null,
    );
    assert.equal(p384.status, 400, p384.text);
    assert.equal(((p384.body as Json).error as Json).code, "key_type_not_allowed");

    const ok = await custos.call(
      "POST",
      "/v1/broker/exchange",
      { token, instance: "shop-9", csr: csrFor(dir, "good") },
      null,
    );
    assert.equal(ok.status, 200, ok.text);
    const failures = await custos.call("GET", "/v1/audit?action=broker.exchange&limit=100");
    const codes = (failures.body as { records: Json[] }).records
      .filter((r) => r.resource === "instance/acme/dev/shop/shop-9")
      .map((r) => r.errorCode);
    assert.deepEqual(codes, ["csr_invalid", "key_type_not_allowed", null]);
  });
});
