import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { replaceFilesUndoably, writeFileAtomic } from "../../src/files/index.js";

const dir = mkdtempSync(join(tmpdir(), "custos-files-"));
after(() => rmSync(dir, { recursive: true, force: true }));

test("a target whose name is the longest a file system takes is still written atomically", async () => {
  const target = join(dir, "n".repeat(255));
  await writeFileAtomic(target, "long\n", 0o600);
  assert.equal(readFileSync(target, "utf8"), "long\n");
  assert.equal(statSync(target).mode & 0o777, 0o600);
  assert.deepEqual(readdirSync(dir), ["n".repeat(255)], "no temporary file left");
  rmSync(target);
});

test("an undone replacement puts the old files back and removes the ones that were new", async () => {
  const work = mkdtempSync(join(dir, "undo-"));
  const key = join(work, "key.pem");
  const cert = join(work, "cert.pem");
  writeFileSync(key, "old key", { mode: 0o600 });
  const change = await replaceFilesUndoably([
    { path: key, data: "new key", mode: 0o600 },
    { path: cert, data: "new cert", mode: 0o644 },
  ]);
  assert.equal(readFileSync(key, "utf8"), "new key");
  assert.equal(readFileSync(cert, "utf8"), "new cert");
  await change.undo();
  assert.equal(readFileSync(key, "utf8"), "old key");
  assert.equal(statSync(key).mode & 0o777, 0o600);
  assert.ok(!existsSync(cert), "a file that did not exist before is gone again");
  assert.deepEqual(readdirSync(work), ["key.pem"], "no copies left behind");
});

test("a kept replacement drops the copies of the old files", async () => {
  const work = mkdtempSync(join(dir, "keep-"));
  const key = join(work, "key.pem");
  writeFileSync(key, "old key", { mode: 0o600 });
  const change = await replaceFilesUndoably([{ path: key, data: "new key", mode: 0o600 }]);
  assert.equal(readdirSync(work).length, 2, "the old key's copy waits beside it until the change is kept");
  await change.keep();
  assert.equal(readFileSync(key, "utf8"), "new key");
  assert.deepEqual(readdirSync(work), ["key.pem"]);
});
