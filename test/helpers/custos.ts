import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { loadConfig } from "../../src/config/index.js";
import { initialize } from "../../src/main.js";
import { freePort } from "./ports.js";
import { createTestToken, type TestToken } from "./softhsm.js";

const ROOT = resolve(import.meta.dirname, "../..");

export interface HttpAnswer {
  readonly status: number;
  readonly body: unknown;
  readonly text: string;
}

/** The JSON body of an answer that must have `status` (200 by default); fails the test otherwise. */
export function ok(a: HttpAnswer, status = 200): Record<string, unknown> {
  assert.equal(a.status, status, a.text);
  return a.body as Record<string, unknown>;
}

/** The `error.code` of an error answer, if it has one. */
export function errorCode(a: HttpAnswer): string | undefined {
  const error = (a.body as { error?: { code?: unknown } } | null)?.error;
  return typeof error?.code === "string" ? error.code : undefined;
}

export interface CliResult {
  readonly status: number;
  readonly stdout: string;
  /** stdout exactly as written (binary output does not survive UTF-8 decoding). */
  readonly stdoutBytes: Buffer;
  readonly stderr: string;
}

/** A real Custos: its own SoftHSM token, data dir and HTTPS server process. */
export interface CustosInstance {
  readonly dir: string;
  readonly port: number;
  readonly url: string;
  /** The CA file clients trust (`tls/ca.pem`), read afresh: a migration may replace it. */
  readonly ca: string;
  readonly adminToken: string;
  readonly token: TestToken;
  readonly env: NodeJS.ProcessEnv;
  /** Where the server's stdout and stderr go (appended across restarts). */
  readonly logFile: string;
  call(method: string, path: string, body?: unknown, bearer?: string | null): Promise<HttpAnswer>;
  /** Runs bin/custos.js against this server as `token`'s holder (the admin by default), `env` added last. */
  cli(args: string[], options?: { input?: string | Buffer; token?: string; env?: NodeJS.ProcessEnv }): CliResult;
  /** Rows of the live database, read through a separate read-only connection, as someone holding the file would. */
  query<T>(sql: string, ...params: unknown[]): T[];
  start(): Promise<void>;
  stop(): Promise<void>;
  kill9(): Promise<void>;
  dispose(): Promise<void>;
}

/** Whether the server process has ended: exitCode stays null for one ended by a signal. */
function gone(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** One HTTPS request to a local Custos; `client` presents a certificate (mutual TLS). */
export function httpsJson(o: {
  port: number;
  ca: string;
  method: string;
  path: string;
  body?: unknown;
  bearer?: string | null;
  client?: { key: string; cert: string } | null;
}): Promise<HttpAnswer> {
  const { body, bearer, client } = o;
  const data = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
  return httpsRaw({
    ...o,
    client: client ?? null,
    body: data,
    headers: {
      ...(data !== undefined ? { "content-type": "application/json" } : {}),
      ...(bearer ? { authorization: `Bearer ${bearer}` } : {}),
    },
  });
}

/** One HTTPS request with exactly the headers and bytes given; the answer's body parsed as JSON where it is. */
export function httpsRaw(o: {
  port: number;
  ca: string;
  method: string;
  path: string;
  headers: OutgoingHttpHeaders;
  body?: string | Buffer | undefined;
  client?: { key: string; cert: string } | null;
}): Promise<HttpAnswer & { readonly headers: IncomingHttpHeaders }> {
  return new Promise((ok, fail) => {
    const req = request(
      {
        host: "127.0.0.1",
        port: o.port,
        path: o.path,
        method: o.method,
        ca: o.ca,
        agent: false,
        ...(o.client ? { key: o.client.key, cert: o.client.cert } : {}),
        headers: o.headers,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let parsed: unknown = null;
          try {
            parsed = JSON.parse(text);
          } catch {
            parsed = null;
          }
          ok({ status: res.statusCode ?? 0, headers: res.headers, body: parsed, text });
        });
      },
    );
    req.on("error", fail);
    req.end(o.body);
  });
}

/** A binary answer: its status, content type, headers and bytes (CRLs, OCSP, DER, KRLs). */
export interface RawAnswer {
  readonly status: number;
  readonly type: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

/** GET `path` (or POST `post.body` as `post.type`) from a running Custos, the answer's bytes untouched. */
export function fetchRaw(
  custos: CustosInstance,
  path: string,
  post?: { type: string; body: Buffer },
): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: "127.0.0.1",
        port: custos.port,
        path,
        method: post ? "POST" : "GET",
        ca: custos.ca,
        agent: false,
        headers: post ? { "content-type": post.type } : {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            type: String(res.headers["content-type"]),
            headers: res.headers,
            body: Buffer.concat(chunks),
          }),
        );
      },
    );
    req.on("error", reject);
    req.end(post?.body);
  });
}

/**
 * Initialises a fresh Custos (as `custos init` does) and starts its server.
 * `config` becomes the data dir's custos.json (settings beyond the defaults).
 */
export async function startCustos(config: Record<string, unknown> = {}): Promise<CustosInstance> {
  const token = createTestToken("custos-e2e");
  const dir = mkdtempSync(join(tmpdir(), "custos-e2e-"));
  writeFileSync(join(dir, "hsm.pin"), token.pin, { mode: 0o600 });
  writeFileSync(join(dir, "custos.json"), JSON.stringify(config));
  const port = await freePort();
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    CUSTOS_DATA_DIR: dir,
    CUSTOS_HSM_TOKEN: token.label,
    CUSTOS_HSM_PIN_FILE: join(dir, "hsm.pin"),
    CUSTOS_LISTEN: `127.0.0.1:${port}`,
    CUSTOS_LOG_LEVEL: "info",
  };
  const init = await initialize(loadConfig({ env }), { adminName: "admin" });
  const adminToken = readFileSync(init.adminTokenFile, "utf8").trim();
  const trusted = (): string => readFileSync(init.caCertFile, "utf8");
  const logFile = join(dir, "server.log");
  let child: ChildProcess | undefined;

  const call = (method: string, path: string, body?: unknown, bearer: string | null = adminToken) =>
    httpsJson({ port, ca: trusted(), method, path, body, bearer });

  const instance: CustosInstance = {
    dir,
    port,
    url: `https://127.0.0.1:${port}`,
    get ca() {
      return trusted();
    },
    adminToken,
    token,
    env,
    logFile,
    call,
    cli(args, options = {}) {
      const r = spawnSync(process.execPath, [join(ROOT, "bin/custos.js"), ...args], {
        input: options.input ?? "",
        env: {
          ...env,
          CUSTOS_ADDR: `https://127.0.0.1:${port}`,
          CUSTOS_CACERT: init.caCertFile,
          CUSTOS_TOKEN: options.token ?? adminToken,
          CUSTOS_TOKEN_FILE: "",
          ...options.env,
        },
        timeout: 120_000,
      });
      return {
        status: r.status ?? -1,
        stdout: r.stdout.toString("utf8"),
        stdoutBytes: r.stdout,
        stderr: r.stderr.toString("utf8"),
      };
    },
    query<T>(sql: string, ...params: unknown[]): T[] {
      const db = new Database(join(dir, "custos.db"), { readonly: true, fileMustExist: true });
      try {
        return db.prepare(sql).all(...params) as T[];
      } finally {
        db.close();
      }
    },
    async start() {
      const out = openSync(logFile, "a");
      child = spawn(process.execPath, [join(ROOT, "bin/custos.js"), "server"], { env, stdio: ["ignore", out, out] });
      closeSync(out);
      for (let i = 0; i < 300; i++) {
        if (child.exitCode !== null)
          throw new Error(`custos server exited (${child.exitCode}):\n${readFileSync(logFile, "utf8")}`);
        try {
          const r = await call("GET", "/v1/health", undefined, null);
          if (r.status === 200) return;
        } catch {
          // not listening yet
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`custos server did not become healthy:\n${readFileSync(logFile, "utf8")}`);
    },
    async stop() {
      if (!child || gone(child)) return;
      const exited = new Promise((r) => child?.once("exit", r));
      child.kill("SIGTERM");
      await exited;
    },
    async kill9() {
      if (!child || gone(child)) return;
      const exited = new Promise((r) => child?.once("exit", r));
      child.kill("SIGKILL");
      await exited;
    },
    async dispose() {
      await instance.kill9();
      rmSync(dir, { recursive: true, force: true });
      try {
        token.remove();
      } catch {
        // already gone
      }
    },
  };
  await instance.start();
  return instance;
}
