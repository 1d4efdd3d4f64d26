/**
 * `npm run bench -- core`: datakey, encrypt and decrypt over HTTPS with keep-alive at
 * concurrency 1, 16 and 64, batch datakey, and — in the same run, on the same
 * machine — the two ceilings they are measured against: a plain fastify HTTPS
 * endpoint and the raw HSM AES-GCM rate.
 *
 * The server runs in its own process (as in production); wrk, a load generator in C,
 * drives it from one thread, so each gets about one of the two cores.
 */
import type { ChildProcess } from "node:child_process";
import { rmSync } from "node:fs";
import { benchInstall, call, startCustos, startPlainServer, stop } from "./custos-server.js";
import { rawHsmRates } from "./hsm.js";
import { ensureWrk, type LoadResult, profiledRotate, wrkPost } from "./http-load.js";

function row(name: string, r: LoadResult, ceiling?: LoadResult): string {
  const ratio = ceiling ? `${((100 * r.requestsPerSec) / ceiling.requestsPerSec).toFixed(0)}% of plain` : "";
  const errors = r.non2xx ? `  (${r.non2xx} non-2xx!)` : "";
  const cpu = r.serverUsPerOp
    ? `CPU/op ${r.serverUsPerOp.all.toFixed(0).padStart(4)} µs (event loop ${r.serverUsPerOp.main.toFixed(0).padStart(4)})  `
    : "";
  return `${name.padEnd(22)} c=${String(r.concurrency).padEnd(3)} ${r.requestsPerSec.toFixed(0).padStart(7)} ops/s  p50 ${r.p50Ms.toFixed(2).padStart(6)} ms  p99 ${r.p99Ms.toFixed(2).padStart(6)} ms  ${cpu}${ratio}${errors}`;
}

export default async function main(args: string[]): Promise<void> {
  const unknown = args.filter((a) => a !== "profile" && !/^\d+(\.\d+)?$/.test(a));
  if (unknown.length > 0)
    throw new Error(`core bench: unknown arguments ${unknown.join(" ")} (takes [seconds] [profile])`);
  const profileRun = args.includes("profile");
  const seconds = Number(args.find((a) => a !== "profile") ?? process.env.BENCH_SECONDS ?? 5);
  ensureWrk();
  const install = await benchInstall("custos-bench");
  const { dir, token, port, admin } = install;
  const children: ChildProcess[] = [];
  try {
    const server = await startCustos(install.env, port, install.caCertFile, admin);
    children.push(server.child);
    const { base, ca } = server;
    const post = (path: string, body: unknown) => call(`${base}${path}`, "POST", body, { ca, token: admin });
    await post("/v1/keys", { name: "bench", purpose: "encrypt" });

    const auth = { authorization: `Bearer ${admin}` };
    const context = { app: "bench", tenant: "t-1" };
    const plaintext = Buffer.alloc(32, 7).toString("base64");
    const { ciphertext } = await post("/v1/keys/bench/encrypt", { plaintext, context });
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
        levels.map((c) => wrkPost(base + s.path, JSON.stringify(s.body), auth, c, seconds, server.child.pid)),
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
          await post("/v1/keys/bench/datakey", { items });
          batchItems += items.length;
        }
      }),
    );
    const batchPerSec = batchItems / ((performance.now() - batchStart) / 1000);

    await stop(server.child);

    // ---- where the server's time goes, c=64 datakey, under the V8 profiler
    if (profileRun) {
      const load = {
        url: `${base}/v1/keys/bench/datakey`,
        bodies: [JSON.stringify({ context })],
        headers: auth,
        concurrency: 64,
      };
      await profiledRotate(install, children, load, { warmup: 2, measured: seconds }, "c=64 datakey", "ops/s");
    }

    const plain = await startPlainServer(port, dir);
    children.push(plain);
    const plainResults = levels.map((c) =>
      wrkPost(`${base}/plain`, JSON.stringify({ context }), auth, c, seconds, plain.pid),
    );
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
