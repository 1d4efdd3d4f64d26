/**
 * `custos run` against a real Custos: a simulated platform agent (a token holding
 * only the platform-agent policy) registers instances of two apps and launches each
 * through `node bin/custos.js run`, as a container entry point would.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from "jose";
import { BrokerError, BrokerSession, bootstrap } from "../../src/broker-client/index.js";
import { type CustosInstance, startCustos } from "../helpers/custos.js";
import { follow, type Running } from "../helpers/process.js";
import { alive, waitFor } from "../helpers/wait.js";

const ROOT = resolve(import.meta.dirname, "../..");
const BIN = join(ROOT, "bin/custos.js");

/** What the printing app reports: its environment's credentials and the files it was pointed at. */
const PRINT = `
const fs = require("node:fs");
const e = process.env;
const pick = ["DB_PASSWORD", "API_KEY", "QUEUE_TOKEN", "SHARED_CA_BUNDLE", "CUSTOS_SPIFFE_ID", "CUSTOS_CERT_FILE",
  "CUSTOS_KEY_FILE", "CUSTOS_CA_FILE", "CUSTOS_JWT_FILE", "CUSTOS_BOOTSTRAP_TOKEN", "CUSTOS_INSTANCE_ID"];
const env = {};
for (const k of pick) if (k in e) env[k] = e[k];
const read = (f) => fs.readFileSync(f, "utf8");
const mode = (f) => fs.statSync(f).mode & 0o777;
process.stdout.write(JSON.stringify({
  env,
  cert: read(e.CUSTOS_CERT_FILE), key: read(e.CUSTOS_KEY_FILE), ca: read(e.CUSTOS_CA_FILE), jwt: read(e.CUSTOS_JWT_FILE),
  modes: { cert: mode(e.CUSTOS_CERT_FILE), key: mode(e.CUSTOS_KEY_FILE), jwt: mode(e.CUSTOS_JWT_FILE) },
}));
`;

interface Printed {
  env: Record<string, string>;
  cert: string;
  key: string;
  ca: string;
  jwt: string;
  modes: { cert: number; key: number; jwt: number };
}

let custos: CustosInstance;
let work: string;
let caFile: string;
let agentToken: string;

const SECRETS: Record<string, string> = {
  "acme/prod/web/db/password": "web-db-password-1",
  "acme/prod/web/api-key": "web-api-key-value",
  "acme/prod/api/db/password": "api-db-password-1",
  "acme/prod/api/queue/token": "api-queue-token-value",
  "shared/ca-bundle": "shared-bundle-value",
};

async function ok(
  method: string,
  path: string,
  body?: unknown,
  bearer?: string | null,
): Promise<Record<string, unknown>> {
  const r = await custos.call(method, path, body, bearer);
  assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${r.text}`);
  return r.body as Record<string, unknown>;
}

/** The platform agent registers an instance and gets its one-time bootstrap token. */
async function register(app: string, instance: string): Promise<string> {
  const answer = await ok("POST", "/v1/broker/instances", { org: "acme", space: "prod", app, instance }, agentToken);
  assert.equal(typeof answer.bootstrapToken, "string");
  return answer.bootstrapToken as string;
}

/** Starts `custos run` the way a container's entry point would. */
function launch(args: string[], env: Record<string, string>): Running {
  const proc = spawn(process.execPath, [BIN, "run", ...args], {
    env: { PATH: process.env.PATH ?? "", CUSTOS_ADDR: custos.url, CUSTOS_CACERT: caFile, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  return follow(proc);
}

function pemBlocks(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

/** GET over mutual TLS with the identity the instance was given. */
function mtlsGet(path: string, key: string, cert: string): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((ok, fail) => {
    const req = request(
      { host: "127.0.0.1", port: custos.port, path, method: "GET", ca: custos.ca, key, cert, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => ok({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString()) }));
      },
    );
    req.on("error", fail);
    req.end();
  });
}

describe("custos run", () => {
  before(async () => {
    // Short lives, so renewal and JWT refresh happen while a test watches.
    custos = await startCustos({ broker: { identityTtlSeconds: 60, jwtTtlSeconds: 30 } });
    work = mkdtempSync(join(tmpdir(), "custos-run-e2e-"));
    caFile = join(work, "custos-ca.pem");
    writeFileSync(caFile, custos.ca);
    const token = await ok("POST", "/v1/auth/tokens", { name: "node-agent", policies: ["platform-agent"] });
    agentToken = token.token as string;
    await ok("POST", "/v1/platform/orgs", { name: "acme" });
    await ok("POST", "/v1/platform/orgs/acme/spaces", { name: "prod" });
    await ok("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name: "web" });
    await ok("POST", "/v1/platform/orgs/acme/spaces/prod/apps", { name: "api" });
    for (const [path, value] of Object.entries(SECRETS)) await ok("PUT", `/v1/secrets/data/${path}`, { value });
    await ok("PUT", "/v1/secrets/grants/shared/ca-bundle", { apps: ["acme/prod/web", "acme/prod/api"] });
  });

  after(async () => {
    await custos?.dispose();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("the agent's credential can't read a secret", async () => {
    const r = await custos.call("GET", "/v1/secrets/data/acme/prod/web/db/password", undefined, agentToken);
    assert.equal(r.status, 403, r.text);
  });

  test("three instances of two apps: each its own identity, exactly its app's secrets, the shared one in both", async () => {
    const instances = [
      { app: "web", id: "web-1" },
      { app: "web", id: "web-2" },
      { app: "api", id: "api-1" },
    ];
    const runs = await Promise.all(
      instances.map(async ({ app, id }) => {
        const token = await register(app, id);
        const dir = join(work, id);
        const run = launch(["--dir", dir, "--", process.execPath, "-e", PRINT], {
          CUSTOS_BOOTSTRAP_TOKEN: token,
          CUSTOS_INSTANCE_ID: id,
        });
        const code = await run.exited;
        assert.equal(code, 0, `custos run for ${id} exited ${code}:\n${run.stderr}`);
        return { app, id, dir, printed: JSON.parse(run.stdout) as Printed, stderr: run.stderr };
      }),
    );
    const jwks = createLocalJWKSet((await ok("GET", "/v1/broker/jwks", undefined, null)) as unknown as JSONWebKeySet);

    const spiffeIds = new Set<string>();
    for (const { app, id, dir, printed, stderr } of runs) {
      const spiffeId = `spiffe://custos/org/acme/space/prod/app/${app}/instance/${id}`;
      assert.equal(printed.env.CUSTOS_SPIFFE_ID, spiffeId);
      spiffeIds.add(printed.env.CUSTOS_SPIFFE_ID);
      assert.equal(printed.env.CUSTOS_BOOTSTRAP_TOKEN, undefined, "the spent token is not passed on");
      assert.equal(printed.env.CUSTOS_CERT_FILE, join(dir, "cert.pem"));
      assert.equal(printed.env.CUSTOS_JWT_FILE, join(dir, "jwt"));

      // The certificate chains to the CA file it came with and names the instance.
      const [leafPem, ...chainPems] = pemBlocks(printed.cert);
      const leaf = new X509Certificate(leafPem ?? "");
      const caCerts = pemBlocks(printed.ca).map((p) => new X509Certificate(p));
      assert.ok(chainPems.length >= 1, "cert.pem carries the chain after the leaf");
      const issuer = caCerts.find((c) => leaf.checkIssued(c));
      assert.ok(issuer, `${id}: no certificate in ca.pem issued the leaf`);
      assert.ok(leaf.verify(issuer.publicKey), `${id}: the leaf's signature doesn't verify`);
      const root = caCerts.find((c) => c.subject === c.issuer);
      assert.ok(root && issuer.verify(root.publicKey), `${id}: the intermediate doesn't chain to the root`);
      assert.ok(leaf.subjectAltName?.includes(`URI:${spiffeId}`), leaf.subjectAltName);
      assert.ok(leaf.checkPrivateKey(createPrivateKey(printed.key)), `${id}: key.pem is not the certificate's key`);

      // Modes: private files 0600 in a 0700 directory.
      assert.equal(printed.modes.key, 0o600);
      assert.equal(printed.modes.jwt, 0o600);
      assert.equal(statSync(dir).mode & 0o777, 0o700);

      // The JWT verifies against the broker's JWKS and names the instance.
      const { payload } = await jwtVerify(printed.jwt, jwks, { audience: "custos" });
      assert.equal(payload.sub, spiffeId);

      // The identity works: the mTLS endpoint sees this instance.
      const who = await mtlsGet("/v1/broker/whoami", printed.key, printed.cert);
      assert.equal(who.status, 200);
      assert.equal(who.body.spiffeId, spiffeId);

      // Exactly the app's secrets, and the shared one.
      assert.equal(printed.env.SHARED_CA_BUNDLE, SECRETS["shared/ca-bundle"]);
      if (app === "web") {
        assert.equal(printed.env.DB_PASSWORD, SECRETS["acme/prod/web/db/password"]);
        assert.equal(printed.env.API_KEY, SECRETS["acme/prod/web/api-key"]);
        assert.equal(printed.env.QUEUE_TOKEN, undefined);
      } else {
        assert.equal(printed.env.DB_PASSWORD, SECRETS["acme/prod/api/db/password"]);
        assert.equal(printed.env.QUEUE_TOKEN, SECRETS["acme/prod/api/queue/token"]);
        assert.equal(printed.env.API_KEY, undefined);
      }
      // Never a secret in custos run's own log.
      for (const value of Object.values(SECRETS)) assert.ok(!stderr.includes(value), `${id}'s log holds a secret`);
      assert.ok(!stderr.includes(printed.jwt), `${id}'s log holds the JWT`);
      // Once the app has ended, the private files are gone; the public ones stay.
      assert.deepEqual(readdirSync(dir).sort(), ["ca.pem", "cert.pem"], `${id}: what the run left`);
    }
    assert.equal(spiffeIds.size, 3);
  });

  test("a rotated secret and a renewed certificate reach the running app; an outage and revocation don't stop it", async () => {
    const token = await register("web", "web-9");
    const dir = join(work, "web-9");
    const template = join(work, "app.conf.tmpl");
    const rendered = join(work, "app.conf");
    const events = join(work, "web-9-events");
    writeFileSync(
      template,
      'password={{ secret "db/password" }}\nbundle={{ secret "shared/ca-bundle" }}\nme={{ spiffe_id }} {{ instance }}\n',
    );
    // The app: records each SIGHUP with the rendered file's password line, exits 7 on SIGTERM.
    const app = `
      const fs = require("node:fs");
      const note = (t) => fs.appendFileSync(${JSON.stringify(events)}, t + "\\n");
      const password = () => fs.readFileSync(${JSON.stringify(rendered)}, "utf8").split("\\n")[0];
      note("start " + process.pid + " " + password());
      process.on("SIGHUP", () => note("hup " + password()));
      process.on("SIGTERM", () => { note("term"); process.exit(7); });
      setInterval(() => {}, 1000);
    `;
    const run = launch(
      ["--dir", dir, "--poll", "1", "--template", `${template}:${rendered}`, "--", process.execPath, "-e", app],
      { CUSTOS_BOOTSTRAP_TOKEN: token, CUSTOS_INSTANCE_ID: "web-9" },
    );
    const log = (): string[] => (existsSync(events) ? readFileSync(events, "utf8").trim().split("\n") : []);
    try {
      await waitFor("the app to start", () => log().some((l) => l.startsWith("start ")));
      const start = log().find((l) => l.startsWith("start ")) ?? "";
      assert.equal(start.split(" ").slice(2).join(" "), "password=web-db-password-1");
      const appPid = Number(start.split(" ")[1]);
      assert.equal(statSync(rendered).mode & 0o777, 0o600);
      assert.equal(
        readFileSync(rendered, "utf8"),
        "password=web-db-password-1\nbundle=shared-bundle-value\nme=spiffe://custos/org/acme/space/prod/app/web/instance/web-9 web-9\n",
      );

      // Rotation: a new version via the API reaches the file, then the app gets SIGHUP.
      await ok("PUT", "/v1/secrets/data/acme/prod/web/db/password", { value: "web-db-password-2" });
      await waitFor("the rotated secret's SIGHUP", () => log().includes("hup password=web-db-password-2"));
      assert.match(readFileSync(rendered, "utf8"), /^password=web-db-password-2\n/);
      // custos run names the change after the signal has gone, so the line may come after the app's note.
      await waitFor("the rotation's log line", () =>
        /custos run: secrets changed \(db\/password\): sent SIGHUP to the app/.test(run.stderr),
      );

      // Renewal at half-life (60 s certificates): new cert.pem and key.pem, and the app is told.
      const firstCert = readFileSync(join(dir, "cert.pem"), "utf8");
      await waitFor(
        "the certificate's renewal",
        () => readFileSync(join(dir, "cert.pem"), "utf8") !== firstCert,
        60_000,
      );
      await waitFor("the renewal's SIGHUP", () => /identity certificate renewed .*: sent SIGHUP/.test(run.stderr));
      const renewed = new X509Certificate(pemBlocks(readFileSync(join(dir, "cert.pem"), "utf8"))[0] ?? "");
      assert.ok(renewed.checkPrivateKey(createPrivateKey(readFileSync(join(dir, "key.pem"), "utf8"))));
      assert.notEqual(renewed.serialNumber, new X509Certificate(pemBlocks(firstCert)[0] ?? "").serialNumber);

      // Outage: Custos goes away; the app keeps running and custos run only warns.
      await custos.stop();
      const before = run.stderr.length;
      await waitFor("a warning about the outage", () =>
        /custos run: warning: cannot fetch the secrets: unavailable/.test(run.stderr.slice(before)),
      );
      await new Promise((r) => setTimeout(r, 2000));
      assert.equal(run.proc.exitCode, null, `custos run exited during the outage:\n${run.stderr}`);
      assert.ok(alive(appPid), "the app died during the outage");
      await custos.start();
      await waitFor("custos run to recover", () => /fetch the secrets: working again/.test(run.stderr));

      // Deregistration revokes everything: custos run says so and leaves the app running.
      await ok("DELETE", "/v1/broker/instances/web-9", undefined, agentToken);
      await waitFor("the revocation notice", () => /custos run: credentials revoked/.test(run.stderr));
      assert.ok(alive(appPid), "the app died at revocation");
      assert.equal(run.proc.exitCode, null);

      // SIGTERM is passed on; the app's exit code comes back.
      run.proc.kill("SIGTERM");
      assert.equal(await run.exited, 7);
      assert.ok(log().includes("term"));
      assert.ok(
        !existsSync(join(dir, "key.pem")) && !existsSync(join(dir, "jwt")),
        "the private files outlived the run",
      );
      assert.ok(!run.stderr.includes("web-db-password"), "a secret reached custos run's log");
    } finally {
      if (run.proc.exitCode === null) run.proc.kill("SIGKILL");
    }
  });

  test("the in-process client: bootstrap, mTLS session, own and granted secrets only, renewal, revocation", async () => {
    const token = await register("web", "web-7");
    const options = { address: custos.url, ca: custos.ca };
    const creds = await bootstrap({ ...options, token, instance: "web-7" });
    const spiffeId = "spiffe://custos/org/acme/space/prod/app/web/instance/web-7";
    assert.equal(creds.identity.spiffeId, spiffeId);
    assert.ok(
      new X509Certificate(creds.identity.certificate).checkPrivateKey(createPrivateKey(creds.identity.privateKeyPem)),
    );
    assert.ok(creds.identity.renewAt < creds.identity.notAfter);
    assert.deepEqual(creds.secrets.map((s) => s.name).sort(), ["api-key", "db/password", "shared/ca-bundle"]);
    // Credentials stay out of serialisations of the answer.
    const printed = JSON.stringify(creds);
    assert.ok(
      !printed.includes(creds.jwt) && !printed.includes("PRIVATE KEY") && !printed.includes("shared-bundle-value"),
    );

    // The token is spent.
    await assert.rejects(
      bootstrap({ ...options, token, instance: "web-7" }),
      (e: unknown) => e instanceof BrokerError && e.code === "unauthenticated" && e.status === 401,
    );

    const session = new BrokerSession(options, creds);
    try {
      assert.equal((await session.whoami()).spiffeId, spiffeId);
      assert.equal((await session.secret("shared/ca-bundle")).value, "shared-bundle-value");
      assert.equal((await session.secret("acme/prod/web/api-key")).value, "web-api-key-value");
      await assert.rejects(
        session.secret("acme/prod/api/queue/token"),
        (e: unknown) => e instanceof BrokerError && e.code === "forbidden" && e.status === 403,
      );
      assert.ok((await session.secrets()).some((s) => s.path === "acme/prod/web/db/password"));
      const fresh = await session.refreshJwt();
      assert.notEqual(fresh.jwt, creds.jwt);
      assert.equal(session.jwt, fresh.jwt);

      const renewed = await session.renew();
      assert.notEqual(renewed.identity.certificate, creds.identity.certificate);
      assert.notEqual(renewed.identity.privateKeyPem, creds.identity.privateKeyPem);
      const who = await session.whoami();
      assert.equal(
        who.serial,
        new X509Certificate(renewed.identity.certificate).serialNumber.toLowerCase().replace(/^0+/, ""),
      );

      await ok("DELETE", "/v1/broker/instances/web-7", undefined, agentToken);
      await assert.rejects(
        session.renew(),
        (e: unknown) => e instanceof BrokerError && e.code === "credential_revoked",
      );
      await assert.rejects(
        session.secrets(),
        (e: unknown) => e instanceof BrokerError && e.code === "credential_revoked",
      );
    } finally {
      session.close();
    }
    await assert.rejects(session.whoami(), (e: unknown) => e instanceof BrokerError && e.code === "closed");
  });

  test("a killed app's run ends with 128 + the signal", async () => {
    const token = await register("api", "api-2");
    const run = launch(
      ["--dir", join(work, "api-2"), "--", process.execPath, "-e", "process.kill(process.pid, 'SIGKILL')"],
      { CUSTOS_BOOTSTRAP_TOKEN: token, CUSTOS_INSTANCE_ID: "api-2" },
    );
    assert.equal(await run.exited, 137, run.stderr);
  });

  test("--on-change restart starts the app again with the new environment", async () => {
    const token = await register("api", "api-3");
    const events = join(work, "api-3-events");
    const app = `require("node:fs").appendFileSync(${JSON.stringify(events)}, process.env.QUEUE_TOKEN + "\\n");
      process.on("SIGTERM", () => process.exit(0)); setInterval(() => {}, 1000);`;
    const run = launch(
      ["--dir", join(work, "api-3"), "--poll", "1", "--on-change", "restart", "--", process.execPath, "-e", app],
      { CUSTOS_BOOTSTRAP_TOKEN: token, CUSTOS_INSTANCE_ID: "api-3" },
    );
    const lines = (): string[] => (existsSync(events) ? readFileSync(events, "utf8").trim().split("\n") : []);
    try {
      await waitFor("the app to start", () => lines().length === 1);
      await ok("PUT", "/v1/secrets/data/acme/prod/api/queue/token", { value: "api-queue-token-2" });
      await waitFor("the restart", () => lines().length === 2);
      assert.deepEqual(lines(), ["api-queue-token-value", "api-queue-token-2"]);
      assert.equal(run.proc.exitCode, null, "custos run ended with the first app");
      run.proc.kill("SIGTERM");
      assert.equal(await run.exited, 0);
    } finally {
      if (run.proc.exitCode === null) run.proc.kill("SIGKILL");
    }
  });

  test("a secret whose default name custos run inherits is a conflict to fix (64), not a missing secret", async () => {
    const token = await register("web", "web-11");
    const marker = join(work, "web-11-ran");
    const touch = ["--", process.execPath, "-e", `require("node:fs").writeFileSync(${JSON.stringify(marker)}, "")`];
    const env = { CUSTOS_BOOTSTRAP_TOKEN: token, CUSTOS_INSTANCE_ID: "web-11", API_KEY: "inherited" };
    const run = launch(["--dir", join(work, "web-11"), ...touch], env);
    assert.equal(await run.exited, 64, run.stderr);
    assert.match(run.stderr, /error: env_conflict: secret api-key would replace API_KEY, inherited by custos run/);
    assert.ok(!existsSync(marker), "the app ran despite the conflict");
  });

  test("refusals: a bad template stops the start before the token is spent; a spent token is refused", async () => {
    const token = await register("web", "web-5");
    const env = { CUSTOS_BOOTSTRAP_TOKEN: token, CUSTOS_INSTANCE_ID: "web-5" };
    const template = join(work, "bad.tmpl");
    writeFileSync(template, "x={{ secret_value }}\n");
    const marker = join(work, "web-5-ran");
    const touch = ["--", process.execPath, "-e", `require("node:fs").writeFileSync(${JSON.stringify(marker)}, "")`];
    const dir = ["--dir", join(work, "web-5")];

    const bad = launch([...dir, "--template", `${template}:${join(work, "bad.out")}`, ...touch], env);
    assert.equal(await bad.exited, 64, bad.stderr);
    assert.match(bad.stderr, /unknown placeholder \{\{ secret_value \}\}/);
    assert.ok(!existsSync(marker), "the app ran despite the bad template");

    // A template naming a secret the app doesn't get is refused too (after the exchange: the token is spent).
    writeFileSync(template, 'x={{ secret "queue/token" }}\n');
    const missing = launch([...dir, "--template", `${template}:${join(work, "bad.out")}`, ...touch], env);
    assert.equal(await missing.exited, 1, missing.stderr);
    assert.match(missing.stderr, /secret "queue\/token" is not one this instance receives/);
    assert.ok(!existsSync(marker));

    const replay = launch([...dir, ...touch], env);
    assert.equal(await replay.exited, 1, replay.stderr);
    assert.match(replay.stderr, /error: unauthenticated: invalid bootstrap token/);
    assert.ok(!existsSync(marker), "the app ran on a replayed token");
  });
});
