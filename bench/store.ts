/**
 * Store write throughput: `appendAudit` one at a time (each its own fsynced
 * transaction) against 64 in flight (group commit), beside the raw limit of a
 * one-row autocommit insert in SQLite WAL with synchronous=FULL, measured in the
 * same run on the same disk.
 *
 *   npm run bench -- store [--ops N] [--inflight K]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import type { AuditEntry } from "../src/store/index.js";
import { SqliteStore } from "../src/store/index.js";

function option(args: string[], name: string, fallback: number): number {
  const i = args.indexOf(name);
  const value = i >= 0 ? Number(args[i + 1]) : fallback;
  if (!Number.isSafeInteger(value) || value <= 0) throw new Error(`${name} must be a positive integer`);
  return value;
}

function entry(n: number): AuditEntry {
  return {
    time: new Date().toISOString(),
    requestId: `bench-${n}`,
    principal: "token:bench",
    source: "127.0.0.1",
    action: "key.encrypt",
    resource: "key/app-a",
    outcome: "success",
    errorCode: null,
    details: { n, context: { app: "a", env: "bench" } },
  };
}

function rate(ops: number, startNs: bigint): number {
  return Math.round(ops / (Number(process.hrtime.bigint() - startNs) / 1e9));
}

function rawAutocommit(path: string, ops: number): number {
  const db = new Database(path);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  db.exec("CREATE TABLE t (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)");
  const insert = db.prepare("INSERT INTO t (body) VALUES (?)");
  const body = JSON.stringify(entry(0));
  const start = process.hrtime.bigint();
  for (let i = 0; i < ops; i++) insert.run(body);
  const r = rate(ops, start);
  db.close();
  return r;
}

async function sequential(store: SqliteStore, ops: number): Promise<number> {
  const start = process.hrtime.bigint();
  for (let i = 0; i < ops; i++) await store.appendAudit(entry(i));
  return rate(ops, start);
}

async function concurrent(store: SqliteStore, ops: number, inflight: number): Promise<number> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < ops) {
      next++;
      await store.appendAudit(entry(next));
    }
  };
  const start = process.hrtime.bigint();
  await Promise.all(Array.from({ length: inflight }, worker));
  return rate(ops, start);
}

export default async function main(args: string[]): Promise<void> {
  const ops = option(args, "--ops", 5000);
  const inflight = option(args, "--inflight", 64);
  const dir = mkdtempSync(join(tmpdir(), "custos-bench-store-"));
  try {
    const raw = rawAutocommit(join(dir, "raw.db"), ops);
    const store = await SqliteStore.open(join(dir, "store.db"));
    const seq = await sequential(store, ops);
    const grouped = await concurrent(store, ops * 10, inflight);
    await store.close();
    console.log(`store bench (${ops} sequential / ${ops * 10} concurrent appends, WAL, synchronous=FULL)`);
    console.log(`  limit: raw SQLite one-row autocommit insert      ${raw.toLocaleString("en")} /s`);
    console.log(`  appendAudit, one at a time (awaited)             ${seq.toLocaleString("en")} /s`);
    console.log(`  appendAudit, ${inflight} in flight (group commit)       ${grouped.toLocaleString("en")} /s`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
