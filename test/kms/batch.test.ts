import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { CustosError } from "../../src/errors/index.js";
import type { Keystore } from "../../src/hsm/index.js";
import { type BatchItemResult, type DataKeyResult, KmsService } from "../../src/kms/index.js";
import { Secret } from "../../src/secret/index.js";
import { alice, type KmsFixture, openFixture, rejectsWith } from "./setup.js";

let f: KmsFixture;

before(async () => {
  f = await openFixture("custos-kms-batch");
  await f.kms.createKey(alice, { name: "bulk", purpose: "encrypt" });
  await f.kms.createKey(alice, { name: "other", purpose: "encrypt" });
});
after(async () => {
  await f?.close();
});

function ok<T>(r: BatchItemResult<T> | undefined): T {
  assert.ok(r?.ok, `expected ok, got ${JSON.stringify(r)}`);
  return r.value;
}
function code<T>(r: BatchItemResult<T> | undefined): string {
  assert.ok(r && !r.ok, `expected an error, got ok`);
  return r.error.code;
}

describe("batches", () => {
  test("encrypt then decrypt a mixed batch: per-item results in order", async () => {
    const enc = await f.kms.encryptBatch(alice, "bulk", [
      { plaintext: Buffer.from("a"), context: { i: "0" } },
      { plaintext: Buffer.alloc(64 * 1024 + 1) },
      { plaintext: Buffer.from("d"), version: 9 },
      { plaintext: Buffer.from("e") },
    ]);
    assert.equal(enc.length, 4);
    const a = ok(enc[0]);
    assert.equal(code(enc[1]), "invalid_request");
    assert.equal(code(enc[2]), "invalid_request");
    const e = ok(enc[3]);
    // The result is also spread at the top level of a success.
    assert.equal((enc[3] as { ciphertext?: string }).ciphertext, e.ciphertext);

    const other = await f.kms.encrypt(alice, "other", { plaintext: Buffer.from("z") });
    const dec = await f.kms.decryptBatch(alice, "bulk", [
      { ciphertext: a.ciphertext, context: { i: "0" } },
      { ciphertext: a.ciphertext, context: { i: "1" } },
      { ciphertext: e.ciphertext },
      { ciphertext: other.ciphertext },
      { ciphertext: "garbage" },
    ]);
    assert.equal(ok(dec[0]).plaintext.exposeText(), "a");
    assert.equal(code(dec[1]), "decryption_failed");
    assert.equal(ok(dec[2]).plaintext.exposeText(), "e");
    assert.equal(code(dec[3]), "decryption_failed");
    assert.equal(code(dec[4]), "decryption_failed");
    for (const r of dec) if (r.ok) r.value.plaintext.destroy();
  });

  test("one audit record per batch: counts, and each version and context used once, never a plaintext", async () => {
    const before = (await f.records("key.encrypt")).length;
    await f.kms.encryptBatch(alice, "bulk", [
      { plaintext: Buffer.from("BATCH-MARKER"), context: { b: "2", a: "1" } },
      { plaintext: Buffer.alloc(0), context: { failed: "item" } },
      { plaintext: Buffer.from("y"), context: { a: "1", b: "2" } },
      { plaintext: Buffer.from("z") },
    ]);
    const records = await f.records("key.encrypt");
    assert.equal(records.length, before + 1);
    assert.deepEqual(records.at(-1)?.details, {
      batch: true,
      items: 4,
      succeeded: 3,
      failed: 1,
      versions: [1],
      contexts: [{ a: "1", b: "2" }, {}],
    });
    assert.ok(!JSON.stringify(records).includes("BATCH-MARKER"));
  });

  test("rewrap batch moves good items to the latest version", async () => {
    await f.kms.createKey(alice, { name: "rw", purpose: "encrypt" });
    const v1 = await f.kms.encrypt(alice, "rw", { plaintext: Buffer.from("one"), context: { a: "b" } });
    await f.kms.rotateKey(alice, "rw");
    const out = await f.kms.rewrapBatch(alice, "rw", [
      { ciphertext: v1.ciphertext, context: { a: "b" } },
      { ciphertext: v1.ciphertext },
    ]);
    const moved = ok(out[0]);
    assert.equal(moved.version, 2);
    assert.equal(code(out[1]), "decryption_failed");
    const back = await f.kms.decrypt(alice, "rw", { ciphertext: moved.ciphertext, context: { a: "b" } });
    assert.equal(back.plaintext.exposeText(), "one");
  });

  test("data key batch: every plaintext is what its ciphertext decrypts to, all distinct", async () => {
    const items = Array.from({ length: 200 }, (_, i) => ({
      context: { n: String(i) },
      bytes: ([16, 24, 32] as const)[i % 3] ?? 32,
      ...(i === 7 ? { withPlaintext: false } : {}),
    }));
    const out = await f.kms.generateDataKeyBatch(alice, "bulk", [...items, { bytes: 12 }]);
    assert.equal(out.length, 201);
    assert.equal(code(out[200]), "invalid_request");
    const seen = new Set<string>();
    const dec = await f.kms.decryptBatch(
      alice,
      "bulk",
      out.slice(0, 200).map((r, i) => ({ ciphertext: ok(r).ciphertext, context: { n: String(i) } })),
    );
    for (let i = 0; i < 200; i++) {
      const dk = ok(out[i]) as DataKeyResult;
      const back = ok(dec[i]).plaintext;
      assert.equal(back.length, items[i]?.bytes);
      if (i === 7) {
        assert.equal(dk.plaintext, undefined);
        continue;
      }
      assert.deepEqual(back.expose(), dk.plaintext?.expose());
      seen.add(back.expose().toString("hex"));
    }
    assert.equal(seen.size, 199);
  });

  test("batch size limits and key-level failures fail the whole call", async () => {
    await rejectsWith(f.kms.encryptBatch(alice, "bulk", []), "invalid_request", /1\.\.1000/);
    const many = Array.from({ length: 1001 }, () => ({ plaintext: Buffer.from("x") }));
    await rejectsWith(f.kms.encryptBatch(alice, "bulk", many), "invalid_request", /1\.\.1000/);
    await rejectsWith(f.kms.decryptBatch(alice, "missing", [{ ciphertext: "x" }]), "not_found");
    const full = await f.kms.generateDataKeyBatch(
      alice,
      "bulk",
      Array.from({ length: 1000 }, () => ({ withPlaintext: false })),
    );
    assert.equal(full.filter((r) => r.ok).length, 1000);
  });

  test("an item's malformed context refuses the whole batch, naming the item, on every batch operation, and leaves no audit record", async () => {
    const { ciphertext } = await f.kms.encrypt(alice, "bulk", { plaintext: Buffer.from("c") });
    const bad: [string, Record<string, string>][] = [
      ["an empty value", { k: "" }],
      ["129 emoji (258 UTF-16 units)", { k: "\u{1F600}".repeat(129) }],
      ["a lone surrogate", { k: "\uD800" }],
    ];
    const batches = {
      encrypt: (context: Record<string, string>) =>
        f.kms.encryptBatch(alice, "bulk", [{ plaintext: Buffer.from("x") }, { plaintext: Buffer.from("y"), context }]),
      decrypt: (context: Record<string, string>) =>
        f.kms.decryptBatch(alice, "bulk", [{ ciphertext }, { ciphertext, context }]),
      rewrap: (context: Record<string, string>) =>
        f.kms.rewrapBatch(alice, "bulk", [{ ciphertext }, { ciphertext, context }]),
      datakey: (context: Record<string, string>) => f.kms.generateDataKeyBatch(alice, "bulk", [{}, { context }]),
    };
    const before = (await f.records()).length;
    for (const [what, context] of bad) {
      for (const [op, batch] of Object.entries(batches)) {
        await assert.rejects(batch(context), (e: unknown) => {
          assert.ok(e instanceof CustosError, `${op}, ${what}: ${String(e)}`);
          assert.equal(e.code, "invalid_request", `${op}, ${what}`);
          assert.match(e.message, /^items\[1\]: context value /, `${op}, ${what}`);
          return true;
        });
      }
    }
    assert.equal((await f.records()).length, before, "a refused batch leaves no audit record");
    // Checked before the key is looked up, as a single operation checks its context.
    await rejectsWith(
      f.kms.encryptBatch(alice, "missing", [{ plaintext: Buffer.from("x"), context: { k: "" } }]),
      "invalid_request",
      /^items\[0\]: /,
    );
  });

  test("when the batch can't be audited, the caller gets audit_unavailable and plaintexts are zeroed", async () => {
    const { ciphertext } = await f.kms.encrypt(alice, "bulk", { plaintext: Buffer.from("secret") });
    // The real keystore, watched: every plaintext it hands out is kept so the test can look at it afterwards.
    const held: Secret[] = [];
    const watched = new Proxy(f.keystore, {
      get(target, prop) {
        if (prop === "decryptMany") {
          return async (...args: Parameters<Keystore["decryptMany"]>) => {
            const results = await target.decryptMany(...args);
            for (const r of results) if (r instanceof Secret) held.push(r);
            return results;
          };
        }
        const value = Reflect.get(target, prop);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    const kms = new KmsService({ keystore: watched, store: f.store, audit: f.audit, minDestructionWaitSeconds: 0 });
    f.audit.failing = true;
    try {
      await rejectsWith(kms.decryptBatch(alice, "bulk", [{ ciphertext }, { ciphertext }]), "audit_unavailable");
    } finally {
      f.audit.failing = false;
    }
    assert.equal(held.length, 2);
    assert.ok(held.every((s) => s.destroyed));
    // With the journal back, the same batch yields live plaintexts.
    const out = await kms.decryptBatch(alice, "bulk", [{ ciphertext }]);
    assert.equal(ok(out[0]).plaintext.exposeText(), "secret");
  });
});
