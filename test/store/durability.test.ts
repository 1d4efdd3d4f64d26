import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { auditRecordHash, GENESIS_HASH, SqliteStore } from "../../src/store/index.js";
import { tempDir } from "./helpers.js";

const tmp = tempDir();
after(() => tmp.remove());

const writer = fileURLToPath(new URL("./fixtures/durability-writer.ts", import.meta.url));
const ACKS_BEFORE_KILL = 4000;

test("kill -9 mid-burst: every acknowledged write survives and the chain is intact", async () => {
  const path = tmp.path("durable.db");
  const child = spawn(process.execPath, ["--import", "tsx", writer, path], { stdio: ["ignore", "pipe", "inherit"] });
  const audits = new Map<number, string>();
  const users: string[] = [];
  let buffered = "";
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on("exit", (_code, signal) => resolve(signal)));
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (chunk: string) => {
    buffered += chunk;
    const lines = buffered.split("\n");
    buffered = lines.pop() ?? "";
    for (const line of lines) {
      const [kind, a, b] = line.split(" ");
      if (kind === "A" && a !== undefined && b !== undefined) audits.set(Number(a), b);
      else if (kind === "U" && a !== undefined) users.push(a);
      if (audits.size + users.length >= ACKS_BEFORE_KILL && child.exitCode === null && !child.killed) {
        child.kill("SIGKILL");
      }
    }
  });
  const signal = await exited;
  assert.equal(signal, "SIGKILL", "the writer was killed, not finished");
  assert.ok(audits.size + users.length >= ACKS_BEFORE_KILL);

  const store = await SqliteStore.open(path);
  try {
    const head = await store.auditHead();
    const records = await store.readAuditRange(1, head.seq);
    assert.equal(records.length, head.seq, "no gaps");
    let prevHash = GENESIS_HASH;
    for (const r of records) {
      assert.equal(r.prevHash, prevHash, `link at ${r.seq}`);
      assert.equal(r.hash, auditRecordHash(r.seq, r.prevHash, r, r.detailsJson), `hash at ${r.seq}`);
      prevHash = r.hash;
    }
    for (const [seq, hash] of audits) {
      assert.equal(records[seq - 1]?.hash, hash, `acknowledged record ${seq} is present`);
    }
    for (const id of users) {
      assert.ok(await store.getUser(id), `acknowledged user ${id} is present`);
    }
    // Every user row has its audit record: the change and its record are atomic.
    const userCount = (await store.listUsers()).length;
    assert.equal(userCount, records.filter((r) => r.action === "user.create").length);
    // The store keeps working on the recovered file.
    const next = await store.appendAudit({ ...records[0]!, requestId: "after-crash" });
    assert.equal(next.seq, head.seq + 1);
    assert.equal(next.prevHash, head.hash);
  } finally {
    await store.close();
  }
});
