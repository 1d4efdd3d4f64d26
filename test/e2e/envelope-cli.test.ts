import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { CustosClient } from "../../src/client/index.js";
import { bufferSource, DEFAULT_CHUNK_SIZE, Envelope, httpKms, readHeader } from "../../src/envelope/index.js";
import { Secret } from "../../src/secret/index.js";
import { type CustosInstance, startCustos } from "../helpers/custos.js";

const ROOT = resolve(import.meta.dirname, "../..");
let custos: CustosInstance;
let work: string;
let caFile: string;
let client: CustosClient;
let envelope: Envelope;

before(async () => {
  custos = await startCustos();
  work = mkdtempSync(join(tmpdir(), "custos-envelope-cli-"));
  caFile = join(work, "ca.pem");
  writeFileSync(caFile, custos.ca);
  client = new CustosClient({
    address: custos.url,
    token: Secret.fromString(custos.adminToken),
    ca: Buffer.from(custos.ca),
  });
  envelope = new Envelope({ kms: httpKms(client) });
  const created = custos.cli(["key", "create", "storage"]);
  assert.equal(created.status, 0, created.stderr);
});
after(async () => {
  client?.close();
  await custos?.dispose();
});

function ok(args: string[], input?: Buffer | string) {
  const r = custos.cli(args, input === undefined ? {} : { input });
  assert.equal(r.status, 0, `custos ${args.join(" ")}: ${r.stderr}`);
  return r;
}

async function headerOf(path: string) {
  const bytes = readFileSync(path);
  return { header: await readHeader(bufferSource(bytes)), bytes };
}

describe("custos file", () => {
  test("encrypt, inspect, decrypt, ranges, with files and with pipes", async () => {
    // Three whole chunks of the default size and a short fourth.
    const plaintext = randomBytes(3 * DEFAULT_CHUNK_SIZE + 3392);
    const acrossFirstEdge = DEFAULT_CHUNK_SIZE - 6;
    writeFileSync(join(work, "plain"), plaintext);
    const msg = join(work, "plain.cenv");
    ok(["file", "encrypt", "--key", "storage", "--context", "app=photos", "--in", join(work, "plain"), "--out", msg]);
    const inspected = JSON.parse(ok(["--json", "file", "inspect", "--in", msg]).stdout);
    assert.equal(inspected.key, "storage");
    assert.equal(inspected.keyVersion, 1);
    assert.deepEqual(inspected.context, { app: "photos" });
    assert.equal(inspected.plaintextBytes, plaintext.length);
    assert.equal(inspected.chunks, 4);
    const fromStdin = JSON.parse(ok(["--json", "file", "inspect"], readFileSync(msg)).stdout);
    assert.deepEqual(fromStdin, inspected);

    assert.deepEqual(ok(["file", "decrypt", "--context", "app=photos", "--in", msg]).stdoutBytes, plaintext);
    const range = ok([
      "file",
      "decrypt",
      "--context",
      "app=photos",
      "--in",
      msg,
      "--offset",
      String(acrossFirstEdge),
      "--length",
      "20",
    ]);
    assert.deepEqual(range.stdoutBytes, plaintext.subarray(acrossFirstEdge, acrossFirstEdge + 20));

    // Pipes: stdin to stdout both ways.
    const piped = ok(["file", "encrypt", "--key", "storage"], plaintext).stdoutBytes;
    assert.deepEqual(ok(["file", "decrypt"], piped).stdoutBytes, plaintext);

    const wrong = custos.cli(["file", "decrypt", "--context", "app=videos", "--in", msg]);
    assert.equal(wrong.status, 1);
    assert.match(wrong.stderr, /error: decryption_failed/);
    assert.equal(wrong.stdoutBytes.length, 0);

    // A failed decryption into --out leaves no file behind.
    const out = join(work, "never");
    assert.equal(custos.cli(["file", "decrypt", "--in", msg, "--out", out]).status, 1);
    assert.ok(!readdirSync(work).some((n) => n.startsWith("never") || n.startsWith(".never")));

    const missing = custos.cli(["file", "encrypt", "--key", "storage", "--in", join(work, "absent")]);
    assert.equal(missing.status, 64);
    assert.match(missing.stderr, /cannot read .*absent: ENOENT/);
    assert.equal(custos.cli(["file", "encrypt", "--key", "nope"], { input: "x" }).status, 1);
  });

  test("rewrap moves the header to the new key version and leaves the data bytes alone", async () => {
    const path = join(work, "rewrap-me");
    const plaintext = randomBytes(100_000);
    writeFileSync(path, await envelope.encrypt(plaintext, { key: "storage", context: { a: "1" } }));
    const before = await headerOf(path);
    ok(["key", "rotate", "storage"]);
    const r = ok(["file", "rewrap", path]);
    assert.match(r.stdout, /rewrapped, version 1 -> 2/);
    const afterwards = await headerOf(path);
    assert.equal(afterwards.header.keyVersion, 2);
    assert.notEqual(afterwards.header.wrappedKey, before.header.wrappedKey);
    assert.deepEqual(afterwards.bytes.subarray(afterwards.header.length), before.bytes.subarray(before.header.length));
    assert.deepEqual(afterwards.header.bound, before.header.bound);
    assert.deepEqual(await envelope.decrypt(afterwards.bytes, { context: { a: "1" } }), plaintext);
    assert.match(ok(["file", "rewrap", path]).stdout, /already on version 2/);

    // stdin to stdout
    const old = await new Envelope({ kms: httpKms(client), cache: false }).encrypt(plaintext, { key: "storage" });
    ok(["key", "rotate", "storage"]);
    const piped = ok(["file", "rewrap"], old).stdoutBytes;
    const fresh = await readHeader(bufferSource(piped));
    assert.equal(fresh.keyVersion, 3);
    assert.deepEqual(await envelope.decrypt(piped), plaintext);
  });
});

describe("custos storage rewrap", () => {
  /** A tree of envelope files under `dir`, with a plain file and a symbolic link among them. */
  async function makeTree(dir: string, files: number, size: number): Promise<Map<string, Buffer>> {
    const plaintexts = new Map<string, Buffer>();
    const bulk = new Envelope({ kms: httpKms(client) });
    for (let i = 0; i < files; i++) {
      const sub = join(dir, `d${i % 7}`, `e${i % 3}`);
      mkdirSync(sub, { recursive: true });
      const path = join(sub, `object-${i}`);
      const plaintext = randomBytes(size + (i % 5));
      writeFileSync(path, await bulk.encrypt(plaintext, { key: "storage", context: { object: String(i) } }));
      plaintexts.set(path, plaintext);
    }
    writeFileSync(join(dir, "README.txt"), "not encrypted\n");
    symlinkSync(join(dir, "d0"), join(dir, "link-to-d0"));
    return plaintexts;
  }

  async function versions(paths: Iterable<string>): Promise<number[]> {
    return Promise.all([...paths].map(async (p) => (await headerOf(p)).header.keyVersion));
  }

  async function allDecrypt(plaintexts: Map<string, Buffer>): Promise<void> {
    for (const [path, plaintext] of plaintexts) {
      const i = path.split("object-")[1] as string;
      assert.deepEqual(await envelope.decrypt(readFileSync(path), { context: { object: i } }), plaintext, path);
    }
  }

  test("rewraps a whole tree; names each failure; exit 1 when any failed", async () => {
    const dir = join(work, "tree");
    const plaintexts = await makeTree(dir, 30, 3000);
    const bodies = new Map<string, Buffer>();
    for (const p of plaintexts.keys()) {
      const { header, bytes } = await headerOf(p);
      bodies.set(p, bytes.subarray(header.length));
    }
    ok(["key", "rotate", "storage"]);
    const damaged = join(dir, "d1", "damaged");
    const bytes = Buffer.from(readFileSync([...plaintexts.keys()][0] as string));
    bytes[20] = (bytes[20] as number) ^ 1;
    writeFileSync(damaged, bytes);

    const r = custos.cli(["storage", "rewrap", dir, "--batch", "7"]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stdout, /rewrapped 30, already current 0, not envelope files 1, failed 1/);
    assert.match(r.stdout, new RegExp(`failed: ${damaged}: decryption_failed`));
    assert.match(r.stderr, /progress: 32\/32 files/);
    const latest = Math.max(...(await versions(plaintexts.keys())));
    assert.deepEqual(await versions(plaintexts.keys()), Array(30).fill(latest));
    for (const [path, body] of bodies) {
      const now = await headerOf(path);
      assert.deepEqual(now.bytes.subarray(now.header.length), body, `${path}: data bytes unchanged`);
    }
    await allDecrypt(plaintexts);

    const again = JSON.parse(custos.cli(["--json", "storage", "rewrap", dir]).stdout);
    assert.equal(again.current, 30);
    assert.equal(again.rewrapped, 0);
  });

  test("a kill -9 in the middle leaves every file decryptable, and a rerun finishes the job", async () => {
    const dir = join(work, "killed");
    const plaintexts = await makeTree(dir, 400, 20_000);
    ok(["key", "rotate", "storage"]);
    const old = Math.max(...(await versions(plaintexts.keys())));
    const env = {
      ...custos.env,
      CUSTOS_ADDR: custos.url,
      CUSTOS_CACERT: caFile,
      CUSTOS_TOKEN: custos.adminToken,
      CUSTOS_TOKEN_FILE: "",
    };
    for (let round = 0; round < 3; round++) {
      const child = spawn(process.execPath, [join(ROOT, "bin/custos.js"), "storage", "rewrap", dir, "--batch", "5"], {
        env,
        stdio: ["ignore", "ignore", "pipe"],
      });
      // Kill at the first progress line (after the first batch), a moment later each round.
      await new Promise<void>((done) => {
        child.stderr?.once("data", () => setTimeout(() => done(), round * 15));
        child.once("exit", () => done());
      });
      child.kill("SIGKILL");
      await new Promise((r) => child.once("exit", r));
      await allDecrypt(plaintexts);
    }
    const mixed = await versions(plaintexts.keys());
    assert.ok(
      mixed.some((v) => v === old) && mixed.some((v) => v === old + 1),
      "the kills landed mid-way: some files old, some new",
    );
    const r = custos.cli(["--json", "storage", "rewrap", dir]);
    assert.equal(r.status, 0, r.stderr);
    const summary = JSON.parse(r.stdout);
    assert.equal(summary.failed, 0);
    assert.equal(summary.rewrapped + summary.current, 400);
    assert.deepEqual(new Set(await versions(plaintexts.keys())), new Set([old + 1]));
    await allDecrypt(plaintexts);
    const leftovers = readdirSync(dir, { recursive: true }).filter((n) => String(n).includes(".custos-rewrap-"));
    assert.deepEqual(leftovers, []);
  });
});
