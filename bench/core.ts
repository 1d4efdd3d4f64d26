/**
 * `npm run bench -- core`: datakey, encrypt and decrypt over HTTPS with keep-alive at
 * concurrency 1, 16 and 64, batch datakey, and — in the same run, on the same
 * machine — the two ceilings they are measured against: a plain fastify HTTPS
 * endpoint and the raw HSM AES-GCM rate.
 *
 * The server runs in its own process (as in production); wrk, a load generator in C,
 * drives it from one thread, so each gets about one of the two cores.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { loadConfig } from "../src/config/index.js";
import { initialize } from "../src/main.js";
import { freePort } from "../test/helpers/custos.js";
import { createTestToken } from "../test/helpers/softhsm.js";
import { startPlainServer, waitReady } from "./custos-server.js";
import { rawHsmRates } from "./hsm.js";
import { ensureWrk, type LoadResult, wrkPost } from "./http-load.js";

const ROOT = resolve(import.meta.dirname, "..");

function post(port: number, ca: string, token: string, path: string, body: unknown): Promise<unknown> {
  return new Promise((ok, fail) => {
    const data = JSON.stringify(body);
    const req = request(
      {
        host: "127.0.0.1",
        port,
        path,
        method: "POST",
        ca,
        // A fresh connection each time: a pooled one left idle through the long wrk runs
        // can be closed under us (the setup calls are few; batch calls are ~100 ms each).
        agent: false,
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          if ((res.statusCode ?? 500) >= 400) fail(new Error(`${path}: ${res.statusCode} ${text}`));
          else ok(JSON.parse(text));
        });
      },
    );
    req.on("error", fail);
    req.end(data);
  });
}

function row(name: string, r: LoadResult, ceiling?: LoadResult): string {
  const ratio = ceiling ? `${((100 * r.requestsPerSec) / ceiling.requestsPerSec).toFixed(0)}% of plain` : "";
  const errors = r.non2xx ? `  (${r.non2xx} non-2xx!)` : "";
  return `${name.padEnd(22)} c=${String(r.concurrency).padEnd(3)} ${r.requestsPerSec.toFixed(0).padStart(7)} ops/s  p50 ${r.p50Ms.toFixed(2).padStart(6)} ms  p99 ${r.p99Ms.toFixed(2).padStart(6)} ms  ${ratio}${errors}`;
}

export default async function main(args: string[]): Promise<void> {
  const seconds = Number(args[0] ?? process.env.BENCH_SECONDS ?? 5);
  ensureWrk();
  const token = createTestToken("custos-bench");
  const dir = mkdtempSync(join(tmpdir(), "custos-bench-"));
  const children: ChildProcess[] = [];
  try {
    writeFileSync(join(dir, "hsm.pin"), token.pin, { mode: 0o600 });
    const port = await freePort();
    const env = {
      ...process.env,
      CUSTOS_DATA_DIR: dir,
      CUSTOS_HSM_TOKEN: token.label,
      CUSTOS_HSM_PIN_FILE: join(dir, "hsm.pin"),
      CUSTOS_LISTEN: `127.0.0.1:${port}`,
      CUSTOS_LOG_LEVEL: "warn",
    };
    const config = loadConfig({ env });
    const init = await initialize(config, { adminName: "admin" });
    const admin = readFileSync(init.adminTokenFile, "utf8").trim();

    const server = spawn(process.execPath, ["--import", "tsx", join(ROOT, "src/cli/main.ts"), "server"], {
      env,
      stdio: ["ignore", "ignore", "inherit"],
    });
    children.push(server);
    let ca = "";
    await waitReady(server, async () => {
      ca = readFileSync(init.caCertFile, "utf8");
      return post(port, ca, admin, "/v1/random", { bytes: 1 });
    });
    await post(port, ca, admin, "/v1/keys", { name: "bench", purpose: "encrypt" });

    const base = `https://127.0.0.1:${port}`;
    const auth = { authorization: `Bearer ${admin}` };
    const context = { app: "bench", tenant: "t-1" };
    const plaintext = Buffer.alloc(32, 7).toString("base64");
    const { ciphertext } = (await post(port, ca, admin, "/v1/keys/bench/encrypt", { plaintext, context })) as {
      ciphertext: string;
    };
    const scenarios = [
      { name: "datakey", path: "/v1/keys/bench/datakey", body: { context } },
      { name: "encrypt 32 B", path: "/v1/keys/bench/encrypt", body: { plaintext, context } },
      { name: "decrypt 32 B", path: "/v1/keys/bench/decrypt", body: { ciphertext, context } },
    ];
    const levels = [1, 16, 64];

    // wrk has no CA option and does not verify certificates; the server is ours, on loopback.
    const results = new Map<string, LoadResult[]>();
    for (const s of scenarios) {
      results.set(
        s.name,
        levels.map((c) => wrkPost(base + s.path, JSON.stringify(s.body), auth, c, seconds)),
      );
    }

    // Batch datakey: 1000 items a request, two requests in flight.
    const items = Array.from({ length: 1000 }, () => ({ context }));
    let batchItems = 0;
    const batchStart = performance.now();
    const until = batchStart + seconds * 1000;
    await Promise.all(
      [0, 1].map(async () => {
        while (performance.now() < until) {
          await post(port, ca, admin, "/v1/keys/bench/datakey", { items });
          batchItems += items.length;
        }
      }),
    );
    const batchPerSec = batchItems / ((performance.now() - batchStart) / 1000);

    server.kill("SIGTERM");
    await new Promise((r) => server.once("exit", r));

    const plain = await startPlainServer(port, dir);
    children.push(plain);
    const plainResults = levels.map((c) => wrkPost(`${base}/plain`, JSON.stringify({ context }), auth, c, seconds));
    plain.kill("SIGTERM");

    const raw = await rawHsmRates({ modulePath: token.modulePath, tokenLabel: token.label, pin: token.pin });

    console.log(`\ncore benchmark (${seconds} s a measurement, 2 cores shared by server and load generator)\n`);
    for (const r of plainResults) console.log(row("plain fastify ceiling", r));
    for (const s of scenarios) {
      for (const [i, r] of (results.get(s.name) ?? []).entries()) console.log(row(s.name, r, plainResults[i]));
    }
    console.log(
      `\nbatch datakey (1000 items/request, 2 in flight): ${batchPerSec.toFixed(0)} items/s = ` +
        `${((100 * batchPerSec) / raw.aesGcmEncryptPerSec).toFixed(0)}% of the raw HSM AES-GCM encrypt rate ` +
        `(${raw.aesGcmEncryptPerSec.toFixed(0)}/s, sync, one session)`,
    );
    const dk64 = results.get("datakey")?.[2];
    const plain64 = plainResults[2];
    if (dk64 && plain64) {
      console.log(
        `goal check: datakey c=64 at ${((100 * dk64.requestsPerSec) / plain64.requestsPerSec).toFixed(0)}% of plain (goal >= 50%), ` +
          `p99 ${dk64.p99Ms.toFixed(2)} ms (goal <= 10 ms); batch at ${((100 * batchPerSec) / raw.aesGcmEncryptPerSec).toFixed(0)}% of raw (goal >= 70%)`,
      );
    }
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
    token.remove();
  }
}
