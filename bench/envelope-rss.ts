/**
 * Peak RSS of a storage layer streaming through the envelope, measured the way one
 * runs: the library compiled to JavaScript (tsc, as `custos/envelope` is built), in
 * a plain node process of its own (bench/envelope-rss-child.ts, compiled with it), getting its data
 * keys from a Custos server in another process over HTTPS. The raw node:crypto
 * streams run in the same kind of child, for what node streams cost by themselves.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { benchInstall, call, startCustos, stop } from "./custos-server.js";

const ROOT = resolve(import.meta.dirname, "..");
const run = promisify(execFile);

/** VmHWM readings of one child, in KiB. */
export interface RssReadings {
  readonly atRest: number;
  readonly afterSetup: number;
  readonly afterEncrypt: number;
  readonly peak: number;
}

export async function streamingRss(total: number): Promise<{ envelope: RssReadings; raw: RssReadings }> {
  const out = mkdtempSync(join(tmpdir(), "custos-bench-rss-"));
  const install = await benchInstall("custos-bench-rss");
  try {
    // The build's settings, with the child and its fixtures compiled beside the library.
    const tsconfig = join(out, "tsconfig.json");
    writeFileSync(
      tsconfig,
      JSON.stringify({
        extends: join(ROOT, "tsconfig.build.json"),
        // typeRoots: @types/node is found from the repository, not from this temporary directory.
        compilerOptions: {
          rootDir: ROOT,
          outDir: out,
          declaration: false,
          typeRoots: [join(ROOT, "node_modules/@types")],
        },
        include: [join(ROOT, "src"), join(ROOT, "bench/envelope-rss-child.ts"), join(ROOT, "bench/stream-fixtures.ts")],
      }),
    );
    await run(process.execPath, [join(ROOT, "node_modules/typescript/bin/tsc"), "-p", tsconfig]);
    const server = await startCustos(install.env, install.port, install.caCertFile, install.admin);
    try {
      const { base, ca } = server;
      await call(`${base}/v1/keys`, "POST", { name: "bench", purpose: "encrypt" }, { ca, token: install.admin });
      const child = async (what: string): Promise<RssReadings> => {
        const args = [join(out, "bench/envelope-rss-child.js"), what, String(total)];
        const env = {
          PATH: process.env.PATH,
          CUSTOS_ADDR: base,
          CUSTOS_TOKEN: install.admin,
          CUSTOS_CACERT: install.caCertFile,
        };
        const { stdout } = await run(process.execPath, args, { env, maxBuffer: 1 << 20 });
        return JSON.parse(stdout.trim().split("\n").at(-1) as string) as RssReadings;
      };
      return { envelope: await child("envelope"), raw: await child("raw") };
    } finally {
      await stop(server.child);
    }
  } finally {
    install.token.remove();
    rmSync(install.dir, { recursive: true, force: true });
    rmSync(out, { recursive: true, force: true });
  }
}
