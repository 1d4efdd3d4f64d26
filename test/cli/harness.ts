/**
 * Test harness for the CLI: a real HTTPS server on 127.0.0.1 with a throwaway
 * self-signed certificate made by `openssl req`, which records every request and
 * answers as each test tells it; and an in-process `run()` with captured streams.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import { run } from "../../src/cli/index.js";

export interface Recorded {
  readonly method: string;
  readonly url: string;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
  /** Index of the TLS connection the request came on (keep-alive reuses one). */
  readonly connection: number;
}

export interface Reply {
  status?: number;
  /** JSON-serialised unless `raw` is given. */
  body?: unknown;
  raw?: string;
  headers?: Record<string, string>;
}

export interface TestServer {
  readonly url: string;
  readonly port: number;
  /** The PEM certificate the server presents (self-signed, SAN IP:127.0.0.1). */
  readonly certFile: string;
  readonly dir: string;
  readonly requests: Recorded[];
  /** How to answer; defaults to 200 `{}`. */
  reply: (req: Recorded) => Reply;
  close(): Promise<void>;
}

/** Starts an HTTPS server with a fresh self-signed certificate. */
export async function startServer(): Promise<TestServer> {
  const dir = mkdtempSync(join(tmpdir(), "custos-cli-test-"));
  const keyFile = join(dir, "key.pem");
  const certFile = join(dir, "cert.pem");
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-keyout",
      keyFile,
      "-out",
      certFile,
      "-days",
      "1",
      "-subj",
      "/CN=custos-cli-test",
      "-addext",
      "subjectAltName=IP:127.0.0.1",
    ],
    { stdio: "ignore" },
  );
  const requests: Recorded[] = [];
  let connections = 0;
  const server: Server = createServer({ key: readFileSync(keyFile), cert: readFileSync(certFile) });
  server.on("secureConnection", (socket) => {
    (socket as unknown as { testIndex: number }).testIndex = connections++;
  });
  const state: TestServer = {
    url: "",
    port: 0,
    certFile,
    dir,
    requests,
    reply: () => ({ body: {} }),
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
  server.on("request", (req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const recorded: Recorded = {
        method: req.method ?? "",
        url: req.url ?? "",
        headers: req.headers,
        body: Buffer.concat(chunks).toString("utf8"),
        connection: (req.socket as unknown as { testIndex: number }).testIndex,
      };
      requests.push(recorded);
      const reply = state.reply(recorded);
      const text = reply.raw ?? JSON.stringify(reply.body ?? {});
      res.writeHead(reply.status ?? 200, {
        "content-type": reply.raw === undefined ? "application/json" : "text/html",
        "x-request-id": `req-${requests.length}`,
        ...reply.headers,
      });
      res.end(text);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return Object.assign(state, { port, url: `https://127.0.0.1:${port}` });
}

export interface CliRun {
  readonly code: number;
  readonly stdout: Buffer;
  readonly out: string;
  readonly err: string;
}

/** Runs the CLI in process with the given environment and stdin. */
export async function runCli(
  args: readonly string[],
  env: NodeJS.ProcessEnv,
  stdin: string | Buffer = "",
): Promise<CliRun> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const sink = (into: Buffer[]): Writable =>
    new Writable({
      write(chunk: Buffer | string, _encoding, done) {
        into.push(Buffer.isBuffer(chunk) ? Buffer.from(chunk) : Buffer.from(chunk));
        done();
      },
    });
  const code = await run(args, {
    stdin: Readable.from([Buffer.from(stdin)]),
    stdout: sink(out),
    stderr: sink(err),
    env,
  });
  const stdout = Buffer.concat(out);
  return { code, stdout, out: stdout.toString("utf8"), err: Buffer.concat(err).toString("utf8") };
}

/** The environment that points the CLI at `server` with `token`. */
export function envFor(server: TestServer, token = "cst_test_token_value"): NodeJS.ProcessEnv {
  return { CUSTOS_ADDR: server.url, CUSTOS_CACERT: server.certFile, CUSTOS_TOKEN: token };
}
