import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, test } from "node:test";

const ROOT = resolve(import.meta.dirname, "../..");
const dir = mkdtempSync(join(tmpdir(), "custos-package-"));
after(() => rmSync(dir, { recursive: true, force: true }));

// What a storage layer does: import the built package by name, and round-trip a blob
// with its own EnvelopeKms (here a local AES-GCM stand-in: packaging is what is tested).
const consumer = `
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { Envelope, DEFAULT_CACHE_LIMITS } from "custos/envelope";
const master = randomBytes(32);
const seal = (key) => {
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", master, iv);
  return Buffer.concat([iv, c.update(key), c.final(), c.getAuthTag()]).toString("base64");
};
const open = (wrapped) => {
  const b = Buffer.from(wrapped, "base64");
  const d = createDecipheriv("aes-256-gcm", master, b.subarray(0, 12));
  d.setAuthTag(b.subarray(b.length - 16));
  return Buffer.concat([d.update(b.subarray(12, b.length - 16)), d.final()]);
};
const secret = (bytes) => ({ use: (fn) => fn(bytes), destroy: () => bytes.fill(0), destroyed: false });
const kms = {
  async generateDataKey() { const k = randomBytes(32); return { plaintext: secret(Buffer.from(k)), wrapped: seal(k), version: 1 }; },
  async decryptDataKey(_n, wrapped) { return { plaintext: secret(open(wrapped)), version: 1 }; },
  async rewrapDataKeys() { throw new Error("unused"); },
};
const envelope = new Envelope({ kms });
const message = await envelope.encrypt(Buffer.from("stored blob"), { key: "storage", context: { bucket: "b" } });
const back = await envelope.decrypt(message, { context: { bucket: "b" } });
console.log(JSON.stringify({ back: back.toString(), maxAgeMs: DEFAULT_CACHE_LIMITS.maxAgeMs }));
`;

test("custos/envelope is importable from the built package", () => {
  execFileSync(
    process.execPath,
    [
      join(ROOT, "node_modules/typescript/bin/tsc"),
      "-p",
      join(ROOT, "tsconfig.build.json"),
      "--outDir",
      join(dir, "dist"),
    ],
    {
      stdio: "pipe",
    },
  );
  copyFileSync(join(ROOT, "package.json"), join(dir, "package.json"));
  symlinkSync(join(ROOT, "node_modules"), join(dir, "node_modules"));
  assert.ok(existsSync(join(dir, "dist/src/envelope/index.d.ts")), "type declarations are built");
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", consumer], { cwd: dir, encoding: "utf8" });
  assert.deepEqual(JSON.parse(out), { back: "stored blob", maxAgeMs: 300_000 });
});
