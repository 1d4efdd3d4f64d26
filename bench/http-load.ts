import { type ChildProcess, execFile, execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type BenchInstall, cpuSeconds, startCustos, stop } from "./custos-server.js";
import { monotonicUs, reportProfileIn } from "./profile.js";

/** One load run's figures. */
export interface LoadResult {
  readonly concurrency: number;
  readonly requestsPerSec: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly non2xx: number;
  /** The server's CPU time per request, in µs: all its threads, and its event loop's thread alone. */
  readonly serverUsPerOp?: { readonly all: number; readonly main: number };
}

/** Installs wrk (Debian package) if missing: an efficient, independent HTTP load generator in C. */
export function ensureWrk(): void {
  if (spawnSync("which", ["wrk"]).status === 0) return;
  execFileSync("bash", ["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk"], {
    stdio: "inherit",
  });
}

/**
 * POSTs `body` to `url` with keep-alive at `concurrency` for `seconds`, using wrk
 * (one thread: the other core belongs to the server under test). Given the server's
 * pid, also measures the CPU time it spent per request: steadier than the rate on a
 * machine whose speed swings, and it shows whether the event loop's thread is the limit.
 */
export function wrkPost(
  url: string,
  body: string,
  headers: Record<string, string>,
  concurrency: number,
  seconds: number,
  serverPid?: number,
): LoadResult {
  return withWrkScript(body, headers, (script) => {
    const before = { all: cpuSeconds(serverPid), main: cpuSeconds(serverPid, true) };
    const result = wrkResult(
      concurrency,
      execFileSync("wrk", wrkArgs(url, script, concurrency, seconds), { encoding: "utf8" }),
    );
    if (serverPid === undefined) return result;
    const requests = result.requestsPerSec * seconds;
    const perOp = (now: number, then: number) => ((now - then) * 1e6) / requests;
    return {
      ...result,
      serverUsPerOp: {
        all: perOp(cpuSeconds(serverPid), before.all),
        main: perOp(cpuSeconds(serverPid, true), before.main),
      },
    };
  });
}

/** `wrkPost` leaving this process's event loop free, for load beside work the bench itself drives. */
export function wrkPostAsync(
  url: string,
  body: string,
  headers: Record<string, string>,
  concurrency: number,
  seconds: number,
): Promise<LoadResult> {
  return withWrkScript(
    body,
    headers,
    (script) =>
      new Promise<LoadResult>((ok, fail) => {
        execFile("wrk", wrkArgs(url, script, concurrency, seconds), { encoding: "utf8" }, (e, out) => {
          if (e) fail(e);
          else ok(wrkResult(concurrency, out));
        });
      }),
  );
}

function withWrkScript<T>(body: string, headers: Record<string, string>, run: (script: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), "custos-wrk-"));
  const cleanup = () => rmSync(dir, { recursive: true, force: true });
  let result: T;
  try {
    const script = join(dir, "post.lua");
    const headerLines = Object.entries({ "content-type": "application/json", ...headers })
      .map(([k, v]) => `wrk.headers[${JSON.stringify(k)}] = ${JSON.stringify(v)}`)
      .join("\n");
    writeFileSync(
      script,
      `wrk.method = "POST"\nwrk.body = ${JSON.stringify(body)}\n${headerLines}\n` +
        `done = function(summary, latency, requests)\n` +
        `  io.write(string.format("RESULT %d %d %.3f %.3f %d\\n", summary.requests, summary.duration, ` +
        `latency:percentile(50)/1000, latency:percentile(99)/1000, summary.errors.status))\nend\n`,
    );
    result = run(script);
  } catch (e) {
    cleanup();
    throw e;
  }
  if (result instanceof Promise) return result.finally(cleanup) as T;
  cleanup();
  return result;
}

function wrkArgs(url: string, script: string, concurrency: number, seconds: number): string[] {
  return ["-t1", `-c${concurrency}`, `-d${seconds}s`, "--latency", "-s", script, url];
}

function wrkResult(concurrency: number, out: string): LoadResult {
  const m = /RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) (\d+)/.exec(out);
  if (!m) throw new Error(`unexpected wrk output:\n${out}`);
  const requests = Number(m[1]);
  const durationUs = Number(m[2]);
  return {
    concurrency,
    requestsPerSec: requests / (durationUs / 1e6),
    p50Ms: Number(m[3]),
    p99Ms: Number(m[4]),
    non2xx: Number(m[5]),
  };
}

/** One load run's figures; only 2xx answers count as certificates. */
export interface CertLoad {
  readonly concurrency: number;
  readonly certsPerSec: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly non2xx: number;
  readonly socketErrors: number;
  /** CPU time of the server process (all its threads) per second of wall time: 1.0 is one core. */
  readonly serverCores: number;
}

/** One printed line of a load run, with its refusals and socket errors called out. */
export function certLoadRow(name: string, r: CertLoad, note = "", unit = "certs/s"): string {
  const errors =
    (r.non2xx ? `  (${r.non2xx} non-2xx!)` : "") + (r.socketErrors ? `  (${r.socketErrors} socket errors!)` : "");
  return (
    `${name.padEnd(26)} c=${String(r.concurrency).padEnd(2)} ${r.certsPerSec.toFixed(0).padStart(7)} ${unit.padEnd(7)}  ` +
    `p50 ${r.p50Ms.toFixed(2).padStart(6)} ms  p99 ${r.p99Ms.toFixed(2).padStart(7)} ms  ` +
    `server CPU ${r.serverCores.toFixed(2)} cores  ${note}${errors}`
  );
}

/** A Lua long string that cannot be closed early by its content. */
function luaString(text: string): string {
  let eq = "=";
  while (text.includes(`]${eq}]`)) eq += "=";
  return `[${eq}[${text}]${eq}]`;
}

/**
 * POSTs the bodies to `url` in turn with keep-alive at `concurrency` for `seconds`,
 * using wrk (one thread: the other core belongs to the server under test).
 * wrkPost sends one fixed body; certificates need distinct requests, so this
 * rotates through them with wrk's `request` hook.
 */
export function wrkRotate(
  url: string,
  bodies: readonly string[],
  headers: Record<string, string>,
  concurrency: number,
  seconds: number,
  serverPid: number | undefined,
): CertLoad {
  const dir = mkdtempSync(join(tmpdir(), "custos-wrk-"));
  try {
    const script = join(dir, "rotate.lua");
    const headerLines = Object.entries({ "content-type": "application/json", ...headers })
      .map(([k, v]) => `wrk.headers[${JSON.stringify(k)}] = ${JSON.stringify(v)}`)
      .join("\n");
    writeFileSync(
      script,
      `wrk.method = "POST"\n${headerLines}\n` +
        `local bodies = {\n${bodies.map(luaString).join(",\n")}\n}\n` +
        `local i = 0\n` +
        `request = function()\n  i = i % #bodies + 1\n  return wrk.format(nil, nil, nil, bodies[i])\nend\n` +
        `done = function(summary, latency, requests)\n` +
        `  local e = summary.errors\n` +
        `  io.write(string.format("RESULT %d %d %.3f %.3f %d %d\\n", summary.requests, summary.duration, ` +
        `latency:percentile(50)/1000, latency:percentile(99)/1000, e.status, e.connect + e.read + e.write + e.timeout))\n` +
        `end\n`,
    );
    const cpuBefore = cpuSeconds(serverPid);
    const wallBefore = performance.now();
    const out = execFileSync(
      "wrk",
      ["-t1", `-c${concurrency}`, `-d${seconds}s`, "--timeout", "10s", "--latency", "-s", script, url],
      { encoding: "utf8" },
    );
    const serverCores = (cpuSeconds(serverPid) - cpuBefore) / ((performance.now() - wallBefore) / 1000);
    const m = /RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) (\d+) (\d+)/.exec(out);
    if (!m) throw new Error(`unexpected wrk output:\n${out}`);
    const requests = Number(m[1]);
    const non2xx = Number(m[5]);
    return {
      concurrency,
      // wrk counts answers >= 400 as status errors; nothing here redirects, so the rest are 200s: certificates.
      certsPerSec: (requests - non2xx) / (Number(m[2]) / 1e6),
      p50Ms: Number(m[3]),
      p99Ms: Number(m[4]),
      non2xx,
      socketErrors: Number(m[6]),
      serverCores,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Where the server's time goes under one wrkRotate load: a Custos server of its own
 * under the V8 profiler, a warm-up run, the measured run (printed), then the
 * profile's report. The server joins `children` so that the caller's clean-up
 * kills it if anything here throws. Returns the measured run.
 */
export async function profiledRotate(
  install: BenchInstall,
  children: ChildProcess[],
  load: { url: string; bodies: readonly string[]; headers: Record<string, string>; concurrency: number },
  seconds: { warmup: number; measured: number },
  label: string,
  unit = "certs/s",
): Promise<CertLoad> {
  const profileDir = join(install.dir, "profile");
  mkdirSync(profileDir);
  const custos = await startCustos(install.env, install.port, install.caCertFile, install.admin, profileDir);
  children.push(custos.child);
  const run = (s: number) => wrkRotate(load.url, load.bodies, load.headers, load.concurrency, s, custos.child.pid);
  run(seconds.warmup);
  const from = monotonicUs();
  const profiled = run(seconds.measured);
  const to = monotonicUs();
  await stop(custos.child);
  console.log(`\n${certLoadRow(`profiled ${label}`, profiled, "(under --cpu-prof)", unit)}`);
  reportProfileIn(profileDir, { from, to }, label);
  return profiled;
}
