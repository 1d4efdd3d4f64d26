/**
 * What the benchmarks share to run a Custos server of their own: a fresh SoftHSM
 * token and data dir, `custos init`, the server in its own process, and JSON calls.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { type Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { loadConfig } from "../src/config/index.js";
import { initialize } from "../src/main.js";
import { freePort } from "../test/helpers/ports.js";
import { createTestToken, type TestToken } from "../test/helpers/softhsm.js";

const ROOT = resolve(import.meta.dirname, "..");

/** An initialised install in a temporary directory, not yet serving. */
export interface BenchInstall {
  readonly dir: string;
  readonly token: TestToken;
  readonly env: NodeJS.ProcessEnv;
  readonly port: number;
  readonly admin: string;
  readonly caCertFile: string;
}

export async function benchInstall(label: string, settings: Record<string, unknown> = {}): Promise<BenchInstall> {
  const token = createTestToken(label);
  const dir = mkdtempSync(join(tmpdir(), `${label}-`));
  writeFileSync(join(dir, "hsm.pin"), token.pin, { mode: 0o600 });
  writeFileSync(join(dir, "custos.json"), JSON.stringify(settings));
  const port = await freePort();
  const env = {
    ...process.env,
    CUSTOS_DATA_DIR: dir,
    CUSTOS_HSM_TOKEN: token.label,
    CUSTOS_HSM_PIN_FILE: join(dir, "hsm.pin"),
    CUSTOS_LISTEN: `127.0.0.1:${port}`,
    CUSTOS_LOG_LEVEL: "warn",
  };
  const init = await initialize(loadConfig({ env }), { adminName: "admin" });
  const admin = readFileSync(init.adminTokenFile, "utf8").trim();
  return { dir, token, env, port, admin, caCertFile: init.caCertFile };
}

/** One JSON call (HTTPS when `ca` is given, else plain HTTP); rejects on >= 400. */
export function call(
  url: string,
  method: string,
  body: unknown,
  options: { ca?: string; token?: string; agent?: HttpsAgent } = {},
): Promise<Record<string, unknown>> {
  return new Promise((ok, fail) => {
    const u = new URL(url);
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (options.token) headers.authorization = `Bearer ${options.token}`;
    const onResponse = (res: import("node:http").IncomingMessage) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        if ((res.statusCode ?? 500) >= 400) fail(new Error(`${method} ${u.pathname}: ${res.statusCode} ${text}`));
        else ok(text.startsWith("{") ? JSON.parse(text) : { text });
      });
    };
    // A fresh connection each time unless the caller brings a pool: most calls are
    // few, and a pooled connection left idle through a long wrk run can be closed under us.
    const common = { host: u.hostname, port: u.port, path: u.pathname, method, headers, agent: options.agent ?? false };
    const req = options.ca ? httpsRequest({ ...common, ca: options.ca }, onResponse) : httpRequest(common, onResponse);
    req.on("error", fail);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

export async function waitReady(child: ChildProcess, probe: () => Promise<unknown>): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`);
    try {
      await probe();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error("server did not become ready");
}

/** waitReady, killing the child when it never gets ready: the caller has no handle on it yet. */
export async function readyOrKill(child: ChildProcess, probe: () => Promise<unknown>): Promise<void> {
  try {
    await waitReady(child, probe);
  } catch (e) {
    child.kill("SIGKILL");
    throw e;
  }
}

export function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  child.kill("SIGTERM");
  return exited;
}

/**
 * CPU seconds (user + system) the process has used so far: all its threads, or with
 * `mainThread` only the thread running its event loop (Linux gives it the process's id).
 */
export function cpuSeconds(pid: number | undefined, mainThread = false): number {
  if (pid === undefined) return 0;
  try {
    const stat = readFileSync(mainThread ? `/proc/${pid}/task/${pid}/stat` : `/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces) start at the last ')'.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return 0;
  }
}

const CLOCK_TICKS = (() => {
  const r = spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" });
  return Number(r.stdout.trim()) || 100;
})();

export interface CustosRun {
  readonly child: ChildProcess;
  readonly base: string;
  readonly ca: string;
}

export async function startCustos(
  env: NodeJS.ProcessEnv,
  port: number,
  caFile: string,
  admin: string,
  profileDir?: string,
): Promise<CustosRun> {
  const profile = profileDir ? ["--cpu-prof", "--cpu-prof-dir", profileDir] : [];
  const child = spawn(process.execPath, [...profile, "--import", "tsx", join(ROOT, "src/cli/main.ts"), "server"], {
    env,
    stdio: ["ignore", "ignore", "inherit"],
  });
  const base = `https://127.0.0.1:${port}`;
  let ca = "";
  await readyOrKill(child, async () => {
    ca = readFileSync(caFile, "utf8");
    return call(`${base}/v1/random`, "POST", { bytes: 1 }, { ca, token: admin });
  });
  return { child, base, ca };
}

/**
 * The ceiling the benchmarks measure beside Custos: bench/plain-server.ts (fastify,
 * HTTPS, no work) on `port`, with the server certificate of the install in `dir`.
 */
export async function startPlainServer(port: number, dir: string): Promise<ChildProcess> {
  const plain = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      join(ROOT, "bench/plain-server.ts"),
      String(port),
      ...["server.pem", "server.key"].map((f) => join(dir, "tls", f)),
    ],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  await new Promise((r) => plain.stdout?.once("data", r));
  return plain;
}
