import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** One load run's figures. */
export interface LoadResult {
  readonly concurrency: number;
  readonly requestsPerSec: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly non2xx: number;
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
 * (one thread: the other core belongs to the server under test).
 */
export function wrkPost(
  url: string,
  body: string,
  headers: Record<string, string>,
  concurrency: number,
  seconds: number,
): LoadResult {
  const dir = mkdtempSync(join(tmpdir(), "custos-wrk-"));
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
    const out = execFileSync("wrk", ["-t1", `-c${concurrency}`, `-d${seconds}s`, "--latency", "-s", script, url], {
      encoding: "utf8",
    });
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
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
