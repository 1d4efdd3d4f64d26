/**
 * `npm run bench -- broker [quick] [profile]`: N container instances (100, then 1,000) booting
 * at once. A platform agent (a token holding only `platform-agent`) registers them;
 * then every instance exchanges its bootstrap token and a CSR for its identity
 * certificate, JWT and its app's 5 secrets, each on its own fresh TLS connection as
 * separate containers would. Measured: the time until all hold their credentials,
 * and p50/p99 of one exchange.
 *
 * In the same run, the limits: plain fastify answering the same number of POSTs on
 * fresh TLS connections at the same concurrency (TLS handshakes and HTTP, no work),
 * and the raw HSM ECDSA rate (an exchange signs twice: the certificate and the JWT).
 *
 * The instances' keys and CSRs are made before the clock starts: on a platform each
 * container makes its own on its own node, not on the machine running Custos.
 */
import "reflect-metadata";
import type { ChildProcess } from "node:child_process";
import { webcrypto, X509Certificate } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { Agent as HttpsAgent, type RequestOptions, request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createSecureContext, type SecureContext } from "node:tls";
import * as x509 from "@peculiar/x509";
import { benchInstall, call, startCustos, startPlainServer, stop } from "./custos-server.js";
import { rawHsmRates } from "./hsm.js";
import { monotonicUs, reportProfile } from "./profile.js";

/** Exchanges in flight at once: the agents launch containers in a burst; the listener's backlog is 511. */
const IN_FLIGHT = 128;
const SECRETS = 5;
/** The goal: 1,000 instances hold their credentials within 3 s. */
const GOAL_SECONDS = 3;

interface Boot {
  readonly n: number;
  readonly seconds: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly failures: number;
}

/** One POST on a connection of its own; resolves with the status and parsed body. */
function post(
  url: string,
  body: string,
  trust: SecureContext,
): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((ok, fail) => {
    const u = new URL(url);
    const options: RequestOptions & { secureContext: SecureContext } = {
      host: u.hostname,
      port: u.port,
      path: u.pathname,
      method: "POST",
      secureContext: trust,
      agent: false,
      headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) },
    };
    const req = request(options, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => ok({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString()) }));
    });
    req.on("error", fail);
    req.end(body);
  });
}

/** Runs `bodies` through `url` with at most IN_FLIGHT at once; `check` says whether an answer is complete. */
async function burst(
  url: string,
  bodies: readonly string[],
  ca: string,
  check: (answer: { status: number; body: Record<string, unknown> }) => boolean,
): Promise<Boot> {
  // One trust store for every connection, as each container builds its own once: without
  // it node would parse the CA again for every connection, on the machine Custos runs on.
  const trust = createSecureContext({ ca });
  const latencies: number[] = [];
  let failures = 0;
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: Math.min(IN_FLIGHT, bodies.length) }, async () => {
      while (next < bodies.length) {
        const body = bodies[next++] as string;
        const t = performance.now();
        try {
          if (!check(await post(url, body, trust))) failures++;
        } catch {
          failures++;
        }
        latencies.push(performance.now() - t);
      }
    }),
  );
  const seconds = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0;
  return { n: bodies.length, seconds, p50Ms: at(0.5), p99Ms: at(0.99), failures };
}

async function csrs(n: number): Promise<string[]> {
  const alg = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const keys = await webcrypto.subtle.generateKey(alg, false, ["sign", "verify"]);
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({
      name: "CN=instance",
      keys,
      signingAlgorithm: alg,
    });
    out.push(csr.toString("pem"));
  }
  return out;
}

function row(name: string, b: Boot, extra = ""): string {
  return (
    `${name.padEnd(30)} ${String(b.n).padStart(5)} in ${b.seconds.toFixed(2).padStart(6)} s  ` +
    `${(b.n / b.seconds).toFixed(0).padStart(5)}/s  p50 ${b.p50Ms.toFixed(1).padStart(6)} ms  ` +
    `p99 ${b.p99Ms.toFixed(1).padStart(6)} ms  failures ${b.failures}${extra}`
  );
}

export default async function main(args: string[]): Promise<void> {
  const sizes = args.includes("quick") ? [100, 1000] : [100, 1000, 1000];
  const profileDir = args.includes("profile") ? mkdtempSync(join(tmpdir(), "custos-broker-profile-")) : undefined;
  const install = await benchInstall("custos-broker-bench");
  const { env, port, admin, caCertFile, token, dir } = install;
  const children: ChildProcess[] = [];
  try {
    const custos = await startCustos(env, port, caCertFile, admin, profileDir);
    children.push(custos.child);
    const { base, ca } = custos;
    const asAdmin = { ca, token: admin };
    await call(`${base}/v1/platform/orgs`, "POST", { name: "bench" }, asAdmin);
    await call(`${base}/v1/platform/orgs/bench/spaces`, "POST", { name: "prod" }, asAdmin);
    await call(`${base}/v1/platform/orgs/bench/spaces/prod/apps`, "POST", { name: "web" }, asAdmin);
    for (let i = 0; i < SECRETS; i++) {
      const value = Buffer.from(webcrypto.getRandomValues(new Uint8Array(24))).toString("base64url");
      await call(`${base}/v1/secrets/data/bench/prod/web/secret-${i}`, "PUT", { value }, asAdmin);
    }
    const agent = (
      await call(`${base}/v1/auth/tokens`, "POST", { name: "agent", policies: ["platform-agent"] }, asAdmin)
    ).token as string;

    const boots: Boot[] = [];
    const windows: { n: number; from: number; to: number }[] = [];
    const registrations: Boot[] = [];
    const agentPool = new HttpsAgent({ keepAlive: true, maxSockets: 16 });
    let checked = "";
    for (const [round, n] of sizes.entries()) {
      const ids = Array.from({ length: n }, (_, i) => `r${round}-i${i}`);
      // Registration, by the agent, before the containers start (timed on its own). A
      // platform agent is one long-lived process: it keeps its connections open.
      const tokens = new Map<string, string>();
      const regStart = performance.now();
      let next = 0;
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          while (next < ids.length) {
            const instance = ids[next++] as string;
            const r = await call(
              `${base}/v1/broker/instances`,
              "POST",
              { org: "bench", space: "prod", app: "web", instance, ttlSeconds: 3600 },
              { ca, token: agent, agent: agentPool },
            );
            tokens.set(instance, r.bootstrapToken as string);
          }
        }),
      );
      registrations.push({ n, seconds: (performance.now() - regStart) / 1000, p50Ms: 0, p99Ms: 0, failures: 0 });
      const requests = await csrs(n);
      if (profileDir) windows.push({ n, from: monotonicUs(), to: 0 });
      const bodies = ids.map((instance, i) =>
        JSON.stringify({ token: tokens.get(instance), instance, csr: requests[i] }),
      );
      boots.push(
        await burst(`${base}/v1/broker/exchange`, bodies, ca, ({ status, body }) => {
          const complete =
            status === 200 &&
            typeof body.certificate === "string" &&
            typeof body.jwt === "string" &&
            Array.isArray(body.secrets) &&
            body.secrets.length === SECRETS;
          if (complete && !checked) {
            const leaf = new X509Certificate(body.certificate as string);
            checked = `${leaf.subjectAltName}; ${((Date.parse(leaf.validTo) - Date.parse(leaf.validFrom)) / 60_000).toFixed(0)} min`;
          }
          return complete;
        }),
      );
      const window = windows.at(-1);
      if (profileDir && window) window.to = monotonicUs();
    }
    agentPool.destroy();
    await stop(custos.child);
    const profile = profileDir && readdirSync(profileDir).find((f) => f.endsWith(".cpuprofile"));

    // ---- the ceiling: plain fastify, the same bodies, fresh TLS connections, same concurrency
    const plain = await startPlainServer(port, dir);
    children.push(plain);
    const plainBodies = Array.from({ length: 1000 }, () => JSON.stringify({ context: "x".repeat(600) }));
    const ceiling = await burst(`${base}/plain`, plainBodies, ca, ({ status }) => status === 200);
    await stop(plain);

    const raw = await rawHsmRates({ modulePath: token.modulePath, tokenLabel: token.label, pin: token.pin });
    const hsmLimit = raw.ecdsaSignPerSec / 2;

    console.log(
      `\nbroker benchmark: instances booting at once (${IN_FLIGHT} exchanges in flight, each on a fresh TLS ` +
        `connection; ${SECRETS} secrets each; 2 cores shared by Custos and the instances)\n`,
    );
    for (const r of registrations) console.log(row("agent registers (c=16)", r));
    for (const b of boots) {
      const perSec = b.n / b.seconds;
      console.log(
        row("instances exchange", b) +
          `  (${((100 * perSec) / (ceiling.n / ceiling.seconds)).toFixed(1)}% of plain fastify, ` +
          `${((100 * perSec) / hsmLimit).toFixed(1)}% of the HSM limit)`,
      );
    }
    console.log(row("plain fastify POST (limit)", ceiling, "  (fresh TLS connection, no work)"));
    console.log(
      `${"raw HSM ECDSA P-256".padEnd(30)} ${raw.ecdsaSignPerSec} signs/s: at 2 signs an exchange, ${hsmLimit.toFixed(0)} exchanges/s`,
    );
    console.log(`\nan identity certificate: ${checked}`);
    const thousand = boots.filter((b) => b.n === 1000);
    const best = Math.min(...thousand.map((b) => b.seconds));
    console.log(
      `\ngoal check: 1,000 instances hold identity, JWT and secrets in ${best.toFixed(2)} s (best of ` +
        `${thousand.map((b) => b.seconds.toFixed(2)).join(", ")} s; the agent registered them beforehand; ` +
        `goal <= ${GOAL_SECONDS} s): ${best <= GOAL_SECONDS && thousand.every((b) => b.failures === 0) ? "MET" : "NOT MET"}`,
    );
    const last = windows.at(-1);
    if (profileDir && profile && last) {
      reportProfile(join(profileDir, profile), last, `${last.n} instances exchanging (under --cpu-prof)`);
    }
  } finally {
    for (const c of children) await stop(c);
    token.remove();
    rmSync(dir, { recursive: true, force: true });
    if (profileDir) rmSync(profileDir, { recursive: true, force: true });
  }
}
