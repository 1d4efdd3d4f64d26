/**
 * The ceiling: a plain fastify HTTPS endpoint on the same certificate, answering a
 * JSON POST with a small JSON body and doing nothing else. Run as a child process.
 * argv: <port> <certFile> <keyFile>
 */
import { readFileSync } from "node:fs";
import Fastify from "fastify";

const [port, certFile, keyFile] = process.argv.slice(2);
const app = Fastify({
  logger: false,
  https: { cert: readFileSync(certFile ?? ""), key: readFileSync(keyFile ?? ""), minVersion: "TLSv1.2" },
});
app.post("/plain", async (req) => ({ ok: true, echo: (req.body as { context?: unknown }).context ?? null }));
await app.listen({ host: "127.0.0.1", port: Number(port) });
process.stdout.write("ready\n");
