/**
 * A real HTTPS server on 127.0.0.1 for the client's and the CLI's tests, with a
 * throwaway self-signed certificate made by `openssl req`. It records every request
 * (with the index of the TLS connection it came on) and answers as each test tells it.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { selfSignedCert } from "../helpers/x509.js";

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
  /** Destroy the connection instead of answering (a server that closed the socket). */
  destroy?: boolean;
  /** JSON-serialised unless `raw` is given. */
  body?: unknown;
  raw?: string | Buffer;
  headers?: Record<string, string>;
  /** Send the headers and only this many bytes of the body, then destroy the connection (an answer cut short). */
  cutAfter?: number;
}

export interface TestServer {
  readonly url: string;
  readonly port: number;
  /** The PEM certificate the server presents (self-signed, SAN IP:127.0.0.1). */
  readonly certFile: string;
  /** Its contents, for `ClientOptions.ca`. */
  readonly ca: Buffer;
  readonly dir: string;
  readonly requests: Recorded[];
  /** How to answer; defaults to 200 `{}`. */
  reply: (req: Recorded) => Reply;
  close(): Promise<void>;
}

/** Starts an HTTPS server with a fresh self-signed certificate. */
export async function startServer(): Promise<TestServer> {
  const dir = mkdtempSync(join(tmpdir(), "custos-client-test-"));
  const { certFile, keyFile } = selfSignedCert(join(dir, "server"), "/CN=custos-client-test", "127.0.0.1");
  const requests: Recorded[] = [];
  let connections = 0;
  const ca = readFileSync(certFile);
  const server: Server = createServer({ key: readFileSync(keyFile), cert: ca });
  server.on("secureConnection", (socket) => {
    (socket as unknown as { testIndex: number }).testIndex = connections++;
  });
  const state: TestServer = {
    url: "",
    port: 0,
    certFile,
    ca,
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
      if (reply.destroy === true) {
        req.socket.destroy();
        return;
      }
      const text = reply.raw ?? JSON.stringify(reply.body ?? {});
      res.writeHead(reply.status ?? 200, {
        "content-type": reply.raw === undefined ? "application/json" : "text/html",
        "x-request-id": `req-${requests.length}`,
        ...reply.headers,
      });
      if (reply.cutAfter === undefined) res.end(text);
      else res.write(Buffer.from(text).subarray(0, reply.cutAfter), () => req.socket.destroy());
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return Object.assign(state, { port, url: `https://127.0.0.1:${port}` });
}
