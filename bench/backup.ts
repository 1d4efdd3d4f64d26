/**
 * `npm run bench -- backup [MiB]`: a store grown to about MiB (default 64) through the
 * API (32 KiB secrets, as incompressible as secrets are), then `GET /v1/store/backup`
 * downloaded over HTTPS as `custos backup` does (streamed to a file, SHA-256 checked),
 * with and without datakey load beside it. In the same run, the limits: SQLite's own
 * online backup of the same file and a plain file copy, on the same disk; and
 * datakey's rate with no backup running, so what a backup costs the service shows.
 */
import { createHash } from "node:crypto";
import { copyFileSync, createWriteStream, rmSync, statSync } from "node:fs";
import { type Agent, Agent as HttpsAgent, request } from "node:https";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import Database from "better-sqlite3";
import { benchInstall, call, startCustos, stop } from "./custos-server.js";
import { ensureWrk, wrkPostAsync } from "./http-load.js";

const MiB = 1024 * 1024;
const SECRET_BYTES = 24 * 1024; // 32 KiB once base64, the largest value a secret takes

/** Downloads a backup to `file` as `custos backup` does; answers bytes and seconds. */
function download(base: string, ca: string, token: string, file: string): Promise<{ bytes: number; seconds: number }> {
  const started = performance.now();
  return new Promise((ok, fail) => {
    const req = request(
      `${base}/v1/store/backup`,
      { ca, agent: false, headers: { authorization: `Bearer ${token}` } },
      (res) => {
        if (res.statusCode !== 200) return fail(new Error(`backup: ${res.statusCode}`));
        const expected = String(res.headers["x-custos-backup-sha256"]);
        const hash = createHash("sha256");
        res.on("data", (c: Buffer) => hash.update(c));
        pipeline(res, createWriteStream(file, { mode: 0o600 }))
          .then(() => {
            if (hash.digest("hex") !== expected) throw new Error("backup: SHA-256 mismatch");
            ok({ bytes: statSync(file).size, seconds: (performance.now() - started) / 1000 });
          })
          .catch(fail);
      },
    );
    req.on("error", fail);
    req.end();
  });
}

/** Fills the store with 32 KiB secrets, 16 in flight, until the database reaches `bytes`. */
async function grow(base: string, ca: string, token: string, db: string, bytes: number): Promise<number> {
  const agent: Agent = new HttpsAgent({ keepAlive: true, maxSockets: 16 });
  let written = 0;
  const size = () => statSync(db).size + (statSync(`${db}-wal`, { throwIfNoEntry: false })?.size ?? 0);
  try {
    while (size() < bytes) {
      await Promise.all(
        Array.from({ length: 64 }, () => {
          const value = Buffer.from(crypto.getRandomValues(new Uint8Array(SECRET_BYTES))).toString("base64");
          return call(`${base}/v1/secrets/data/shared/bench/s-${written++}`, "PUT", { value }, { ca, token, agent });
        }),
      );
    }
  } finally {
    agent.destroy();
  }
  return written;
}

function rate(bytes: number, seconds: number): string {
  return `${(bytes / MiB / seconds).toFixed(0).padStart(5)} MiB/s`;
}

export default async function main(args: string[]): Promise<void> {
  const target = Number(args[0] ?? 64);
  if (!Number.isFinite(target) || target <= 0) throw new Error("backup bench: takes [MiB] (default 64)");
  ensureWrk();
  const install = await benchInstall("custos-bench-backup");
  const { dir, token, port, admin } = install;
  const db = join(dir, "custos.db");
  const copy = join(dir, "bench-copy.db");
  try {
    let server = await startCustos(install.env, port, install.caCertFile, admin);
    const secrets = await grow(server.base, server.ca, admin, db, target * MiB);
    await call(
      `${server.base}/v1/keys`,
      "POST",
      { name: "bench", purpose: "encrypt" },
      { ca: server.ca, token: admin },
    );
    const quiet = await download(server.base, server.ca, admin, copy);
    await stop(server.child);

    // The limits, on the same file and disk, with nothing else running.
    const bytes = statSync(db).size;
    rmSync(copy, { force: true });
    const source = new Database(db, { readonly: true });
    let started = performance.now();
    await source.backup(copy);
    const sqliteSeconds = (performance.now() - started) / 1000;
    source.close();
    rmSync(copy, { force: true });
    started = performance.now();
    copyFileSync(db, copy);
    const copySeconds = (performance.now() - started) / 1000;

    // Datakey at c=16 for 10 s, alone and then with backups running back to back beside it.
    server = await startCustos(install.env, port, install.caCertFile, admin);
    const { base, ca } = server;
    const auth = { authorization: `Bearer ${admin}` };
    const body = JSON.stringify({ context: { app: "bench" } });
    const datakey = () => wrkPostAsync(`${base}/v1/keys/bench/datakey`, body, auth, 16, 10);
    const alone = await datakey();
    let busy = true;
    const loaded: Array<{ bytes: number; seconds: number }> = [];
    const backups = (async () => {
      while (busy) loaded.push(await download(base, ca, admin, copy));
    })();
    const beside = await datakey();
    busy = false;
    await backups;
    await stop(server.child);

    const pct = (a: number, b: number) => `${((100 * a) / b).toFixed(0)}%`;
    const quietRate = quiet.bytes / quiet.seconds;
    console.log(`store: ${(bytes / MiB).toFixed(1)} MiB (${secrets} secrets of 32 KiB, and what the API recorded)`);
    console.log(
      `backup over HTTPS, idle server    ${rate(quiet.bytes, quiet.seconds)}  ${quiet.seconds.toFixed(2)} s  ` +
        `${pct(quietRate, bytes / sqliteSeconds)} of SQLite's online backup, ${pct(quietRate, bytes / copySeconds)} of a file copy`,
    );
    const loadedBytes = loaded.reduce((s, r) => s + r.bytes, 0);
    const loadedSeconds = loaded.reduce((s, r) => s + r.seconds, 0);
    console.log(
      `backup over HTTPS, datakey c=16   ${rate(loadedBytes, loadedSeconds)}  ${loaded.length} backups in ${loadedSeconds.toFixed(1)} s ` +
        "(the store grows under the load)",
    );
    console.log(`limit: SQLite online backup      ${rate(bytes, sqliteSeconds)}  ${sqliteSeconds.toFixed(2)} s`);
    console.log(`limit: file copy                 ${rate(bytes, copySeconds)}  ${copySeconds.toFixed(2)} s`);
    console.log(
      `datakey c=16 while backups run: ${beside.requestsPerSec.toFixed(0)} ops/s (p99 ${beside.p99Ms.toFixed(1)} ms), ` +
        `${pct(beside.requestsPerSec, alone.requestsPerSec)} of ${alone.requestsPerSec.toFixed(0)} ops/s with none ` +
        `(p99 ${alone.p99Ms.toFixed(1)} ms)${beside.non2xx + alone.non2xx > 0 ? `  (${beside.non2xx + alone.non2xx} non-2xx!)` : ""}`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
    token.remove();
  }
}
