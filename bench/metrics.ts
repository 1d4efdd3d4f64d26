/**
 * `npm run bench -- metrics [seconds]`: what the metrics cost.
 *
 * - Recording: every answered request is observed once (`Metrics.observeRequest`), so
 *   its cost is paid by every request. Measured in process over as many label sets as
 *   the API has routes, beside the time a plain fastify HTTPS endpoint doing no work
 *   takes per request at c=64 (wrk, same run): the cheapest request there is.
 * - Scraping: `GET /v1/metrics` over HTTPS with keep-alive, after some load made its
 *   series, beside `GET /v1/health` on the same connection (the cheapest request the
 *   server answers, audited like a scrape); and rendering a registry holding as many
 *   request series as every route answering three status codes would make, in process.
 */
import { rmSync } from "node:fs";
import { Agent } from "node:https";
import { Metrics } from "../src/metrics/index.js";
import { benchInstall, call, startCustos, startPlainServer, stop } from "./custos-server.js";
import { ensureWrk, wrkPost } from "./http-load.js";

/** About the API's number of routes, each seen with a few status codes. */
const ROUTES = 120;
const CODES = [200, 400, 404];
const OBSERVATIONS = 2_000_000;
const SCRAPES = 200;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

/** ns per observation, over ROUTES × CODES label sets in turn. */
function recordingNs(): { ns: number; metrics: Metrics } {
  const metrics = new Metrics("bench");
  const keys = Array.from({ length: ROUTES }, (_, i) => `/v1/bench/route-${i}/:name`);
  const observe = (n: number) => {
    for (let i = 0; i < n; i++) {
      metrics.observeRequest(
        "POST",
        keys[i % ROUTES] as string,
        CODES[i % CODES.length] as number,
        0.0004 + (i % 7) * 1e-4,
      );
    }
  };
  observe(100_000); // warm: every child exists, the JIT has compiled the loop
  const start = process.hrtime.bigint();
  observe(OBSERVATIONS);
  return { ns: Number(process.hrtime.bigint() - start) / OBSERVATIONS, metrics };
}

async function renderMs(metrics: Metrics): Promise<{ p50: number; bytes: number }> {
  const times: number[] = [];
  let bytes = 0;
  for (let i = 0; i < SCRAPES; i++) {
    const t = performance.now();
    bytes = Buffer.byteLength(await metrics.render());
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return { p50: percentile(times, 50), bytes };
}

export default async function main(args: string[]): Promise<void> {
  const unknown = args.filter((a) => !/^\d+(\.\d+)?$/.test(a));
  if (unknown.length > 0) throw new Error(`metrics bench: unknown arguments ${unknown.join(" ")} (takes [seconds])`);
  const seconds = Number(args[0] ?? process.env.BENCH_SECONDS ?? 5);
  ensureWrk();

  const recording = recordingNs();
  const rendered = await renderMs(recording.metrics);

  const install = await benchInstall("custos-bench-metrics");
  const { dir, token, port, admin } = install;
  try {
    const server = await startCustos(install.env, port, install.caCertFile, admin);
    const { base, ca } = server;
    type Timed = { p50: number; p99: number; bytes: number };
    let scrape: Timed;
    let health: Timed;
    try {
      // Series from real traffic: successes, refusals and misses on a few routes.
      const auth = { authorization: `Bearer ${admin}` };
      await call(`${base}/v1/keys`, "POST", { name: "bench", purpose: "encrypt" }, { ca, token: admin });
      const context = { app: "bench" };
      wrkPost(`${base}/v1/keys/bench/datakey`, JSON.stringify({ context }), auth, 16, 1);
      wrkPost(`${base}/v1/keys/bench/encrypt`, JSON.stringify({ plaintext: "!" }), auth, 4, 1);
      wrkPost(`${base}/v1/no-such-route`, "{}", auth, 4, 1);

      const agent = new Agent({ keepAlive: true, maxSockets: 1 });
      const timed = async (path: string) => {
        const times: number[] = [];
        let bytes = 0;
        for (let i = 0; i < SCRAPES; i++) {
          const t = performance.now();
          const answer = await call(`${base}${path}`, "GET", undefined, { ca, token: admin, agent });
          times.push(performance.now() - t);
          bytes = Buffer.byteLength(typeof answer.text === "string" ? answer.text : JSON.stringify(answer));
        }
        times.sort((a, b) => a - b);
        return { p50: percentile(times, 50), p99: percentile(times, 99), bytes };
      };
      health = await timed("/v1/health");
      scrape = await timed("/v1/metrics");
      agent.destroy();
    } finally {
      await stop(server.child);
    }

    const plain = await startPlainServer(port, dir);
    let plainUs: number;
    try {
      const r = wrkPost(`https://127.0.0.1:${port}/plain`, "{}", {}, 64, seconds);
      plainUs = 1e6 / r.requestsPerSec;
    } finally {
      await stop(plain);
    }

    console.log(
      `metrics bench (${ROUTES * CODES.length} request series; plain fastify at c=64 as the per-request floor)`,
    );
    console.log(
      `recording a request   ${recording.ns.toFixed(0).padStart(6)} ns   plain fastify ${plainUs.toFixed(1)} µs/request: ` +
        `${((100 * recording.ns) / 1000 / plainUs).toFixed(2)}% of the cheapest request`,
    );
    console.log(
      `scrape over HTTPS     p50 ${scrape.p50.toFixed(2)} ms  p99 ${scrape.p99.toFixed(2)} ms  ${scrape.bytes} bytes; ` +
        `GET /v1/health p50 ${health.p50.toFixed(2)} ms: ${(scrape.p50 / health.p50).toFixed(1)}× the cheapest request`,
    );
    console.log(
      `render in process     p50 ${rendered.p50.toFixed(2)} ms  ${rendered.bytes} bytes (${ROUTES * CODES.length} series: ` +
        `more than any one server here has)`,
    );
  } finally {
    token.remove();
    rmSync(dir, { recursive: true, force: true });
  }
}
