/**
 * Test harness for the CLI: the client tests' real HTTPS server (re-exported), and
 * an in-process `run()` with captured streams.
 */
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import { run } from "../../src/cli/index.js";
import type { TestServer } from "../client/server.js";
import { selfSignedCert } from "../helpers/x509.js";

export { type Recorded, type Reply, startServer, type TestServer } from "../client/server.js";

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

/**
 * Writes a self-signed CA certificate (dir/wrong-ca.pem, its key beside it) that signed
 * nothing Custos serves: the CA a client trusts by mistake. Returns its path.
 */
export function foreignCa(dir: string): string {
  return selfSignedCert(join(dir, "wrong-ca"), "/CN=Not Custos").certFile;
}
