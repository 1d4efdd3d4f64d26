import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import type { Keystore } from "../../src/hsm/index.js";
import { CIPHERTEXT_PREFIX, KmsService, parseCiphertext } from "../../src/kms/index.js";
import { alice, type KmsFixture, openFixture, rejectsWith } from "./setup.js";

let f: KmsFixture;

before(async () => {
  f = await openFixture("custos-kms-enc");
});
after(async () => {
  await f?.close();
});

const flip = (text: string, byte: number): string => {
  const blob = Buffer.from(text.slice(CIPHERTEXT_PREFIX.length), "base64");
  blob[byte] = (blob[byte] ?? 0) ^ 0x01;
  return CIPHERTEXT_PREFIX + blob.toString("base64");
};

describe("encrypt / decrypt", () => {
  before(async () => {
    await f.kms.createKey(alice, { name: "app-a", purpose: "encrypt" });
    await f.kms.createKey(alice, { name: "app-b", purpose: "encrypt" });
  });

  test("round trip, with and without context, up to 64 KiB", async () => {
    for (const size of [1, 32, 1000, 64 * 1024]) {
      const pt = randomBytes(size);
      const ctx = { tenant: "t1", file: `f-${size}` };
      const { ciphertext, version } = await f.kms.encrypt(alice, "app-a", { plaintext: pt, context: ctx });
      assert.equal(version, 1);
      assert.ok(ciphertext.startsWith("custos:v1:"));
      const out = await f.kms.decrypt(alice, "app-a", { ciphertext, context: { file: `f-${size}`, tenant: "t1" } });
      assert.deepEqual(out.plaintext.expose(), pt);
      assert.equal(out.version, 1);
      out.plaintext.destroy();
    }
    const { ciphertext } = await f.kms.encrypt(alice, "app-a", { plaintext: Buffer.from("no context") });
    const out = await f.kms.decrypt(alice, "app-a", { ciphertext, context: {} });
    assert.equal(out.plaintext.exposeText(), "no context");
  });

  test("the header carries the key id and version", async () => {
    const key = await f.kms.getKey(alice, "app-a");
    const { ciphertext } = await f.kms.encrypt(alice, "app-a", { plaintext: Buffer.from("x") });
    const parsed = parseCiphertext(ciphertext);
    assert.equal(parsed.keyId, key.id);
    assert.equal(parsed.keyVersion, 1);
  });

  test("every way a ciphertext can be wrong is the same decryption_failed", async () => {
    const ctx = { purpose: "test" };
    const { ciphertext } = await f.kms.encrypt(alice, "app-a", { plaintext: Buffer.from("secret data"), context: ctx });
    const blobLength = Buffer.from(ciphertext.slice(CIPHERTEXT_PREFIX.length), "base64").length;
    const bad: [string, string, Record<string, string>][] = [
      ["wrong context value", ciphertext, { purpose: "other" }],
      ["missing context", ciphertext, {}],
      ["extra context", ciphertext, { purpose: "test", x: "y" }],
      ["flipped key-id bit", flip(ciphertext, 3), ctx],
      ["flipped version bit", flip(ciphertext, 20), ctx],
      ["flipped IV bit", flip(ciphertext, 25), ctx],
      ["flipped ciphertext bit", flip(ciphertext, 35), ctx],
      ["flipped tag bit", flip(ciphertext, blobLength - 1), ctx],
      [
        "truncated",
        CIPHERTEXT_PREFIX +
          Buffer.from(ciphertext.slice(CIPHERTEXT_PREFIX.length), "base64")
            .subarray(0, blobLength - 3)
            .toString("base64"),
        ctx,
      ],
      ["bad base64", `${ciphertext.slice(0, -2)}!!`, ctx],
      ["bad prefix", ciphertext.replace("custos:v1:", "custos:v9:"), ctx],
      ["empty", "", ctx],
    ];
    for (const [what, c, context] of bad) {
      await rejectsWith(f.kms.decrypt(alice, "app-a", { ciphertext: c, context }), "decryption_failed").catch((e) => {
        throw new Error(`${what}: ${(e as Error).message}`);
      });
    }
  });

  test("another key's ciphertext is decryption_failed; a destroyed key's name stays taken", async () => {
    const { ciphertext } = await f.kms.encrypt(alice, "app-b", { plaintext: Buffer.from("b's data") });
    await rejectsWith(f.kms.decrypt(alice, "app-a", { ciphertext }), "decryption_failed");

    await f.kms.createKey(alice, { name: "ephemeral", purpose: "encrypt" });
    const old = await f.kms.encrypt(alice, "ephemeral", { plaintext: Buffer.from("old") });
    await f.kms.destroyKey(alice, "ephemeral");
    await rejectsWith(f.kms.decrypt(alice, "ephemeral", { ciphertext: old.ciphertext }), "decryption_failed");
    // A destroyed key keeps its name, so no new key can take it and read old ciphertexts.
    await rejectsWith(f.kms.createKey(alice, { name: "ephemeral", purpose: "encrypt" }), "conflict");
  });

  test("rotate: old ciphertexts decrypt, new ones use the latest, rewrap moves forward", async () => {
    await f.kms.createKey(alice, { name: "rot", purpose: "encrypt" });
    const ctx = { k: "v" };
    const v1 = await f.kms.encrypt(alice, "rot", { plaintext: Buffer.from("one"), context: ctx });
    const rotated = await f.kms.rotateKey(alice, "rot");
    assert.equal(rotated.latestVersion, 2);
    assert.deepEqual(
      rotated.versions.map((v) => v.version),
      [1, 2],
    );
    const v2 = await f.kms.encrypt(alice, "rot", { plaintext: Buffer.from("two"), context: ctx });
    assert.equal(v2.version, 2);
    assert.equal((await f.kms.decrypt(alice, "rot", { ciphertext: v1.ciphertext, context: ctx })).version, 1);
    assert.equal(
      (await f.kms.decrypt(alice, "rot", { ciphertext: v1.ciphertext, context: ctx })).plaintext.exposeText(),
      "one",
    );

    const pinned = await f.kms.encrypt(alice, "rot", { plaintext: Buffer.from("pinned"), context: ctx, version: 1 });
    assert.equal(pinned.version, 1);
    await rejectsWith(f.kms.encrypt(alice, "rot", { plaintext: Buffer.from("x"), version: 3 }), "invalid_request");

    const rewrapped = await f.kms.rewrap(alice, "rot", { ciphertext: v1.ciphertext, context: ctx });
    assert.equal(rewrapped.version, 2);
    assert.notEqual(rewrapped.ciphertext, v1.ciphertext);
    assert.equal(
      (await f.kms.decrypt(alice, "rot", { ciphertext: rewrapped.ciphertext, context: ctx })).plaintext.exposeText(),
      "one",
    );
    await rejectsWith(f.kms.rewrap(alice, "rot", { ciphertext: v1.ciphertext, context: {} }), "decryption_failed");

    // Retiring version 1: its ciphertexts now fail with the one clear error, rewrapped ones still work.
    const updated = await f.kms.updateKey(alice, "rot", { minDecryptionVersion: 2 });
    assert.equal(updated.minDecryptionVersion, 2);
    await rejectsWith(
      f.kms.decrypt(alice, "rot", { ciphertext: v1.ciphertext, context: ctx }),
      "version_too_old",
      /version 1 is below minDecryptionVersion 2/,
    );
    await rejectsWith(f.kms.rewrap(alice, "rot", { ciphertext: v1.ciphertext, context: ctx }), "version_too_old");
    await rejectsWith(f.kms.encrypt(alice, "rot", { plaintext: Buffer.from("x"), version: 1 }), "version_too_old");
    assert.equal(
      (await f.kms.decrypt(alice, "rot", { ciphertext: rewrapped.ciphertext, context: ctx })).plaintext.exposeText(),
      "one",
    );
    // The retirement check runs before authentication: it reads only the clear header.
    await rejectsWith(f.kms.decrypt(alice, "rot", { ciphertext: v1.ciphertext, context: {} }), "version_too_old");
    // One-way: it cannot be lowered again.
    await rejectsWith(f.kms.updateKey(alice, "rot", { minDecryptionVersion: 1 }), "invalid_request", /only be raised/);
    await rejectsWith(f.kms.updateKey(alice, "rot", { minDecryptionVersion: 3 }), "invalid_request");
  });

  test("a version beyond the latest is decryption_failed", async () => {
    await f.kms.createKey(alice, { name: "future", purpose: "encrypt" });
    await f.kms.rotateKey(alice, "future");
    const v2 = await f.kms.encrypt(alice, "future", { plaintext: Buffer.from("x") });
    // Recreate the same blob claiming version 3 (header tamper): not a real version.
    const blob = Buffer.from(v2.ciphertext.slice(CIPHERTEXT_PREFIX.length), "base64");
    blob.writeUInt32BE(3, 17);
    await rejectsWith(
      f.kms.decrypt(alice, "future", { ciphertext: CIPHERTEXT_PREFIX + blob.toString("base64") }),
      "decryption_failed",
    );
  });

  test("data keys: plaintext decrypts from the ciphertext; without plaintext only the ciphertext", async () => {
    for (const bytes of [16, 24, 32] as const) {
      const dk = await f.kms.generateDataKey(alice, "app-a", { bytes, context: { bucket: "b1" } });
      assert.ok(dk.plaintext);
      assert.equal(dk.plaintext.length, bytes);
      const back = await f.kms.decrypt(alice, "app-a", { ciphertext: dk.ciphertext, context: { bucket: "b1" } });
      assert.deepEqual(back.plaintext.expose(), dk.plaintext.expose());
    }
    const sealedOnly = await f.kms.generateDataKey(alice, "app-a", { withPlaintext: false });
    assert.equal(sealedOnly.plaintext, undefined);
    const back = await f.kms.decrypt(alice, "app-a", { ciphertext: sealedOnly.ciphertext });
    assert.equal(back.plaintext.length, 32);
    await rejectsWith(f.kms.generateDataKey(alice, "app-a", { bytes: 64 }), "invalid_request");
  });

  test("limits and bad input are invalid_request with a specific message", async () => {
    const enc = (input: Parameters<typeof f.kms.encrypt>[2]) => f.kms.encrypt(alice, "app-a", input);
    await rejectsWith(
      enc({ plaintext: Buffer.alloc(64 * 1024 + 1) }),
      "invalid_request",
      /plaintext must be 1\.\.65536/,
    );
    await rejectsWith(enc({ plaintext: Buffer.alloc(0) }), "invalid_request", /plaintext/);
    await rejectsWith(enc({ plaintext: "text" as unknown as Buffer }), "invalid_request", /plaintext must be bytes/);
    const many = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, "v"]));
    await rejectsWith(enc({ plaintext: Buffer.from("x"), context: many }), "invalid_request", /more than 64/);
    await rejectsWith(enc({ plaintext: Buffer.from("x"), context: { k: "" } }), "invalid_request", /1\.\.256/);
    await rejectsWith(
      f.kms.encrypt(alice, "bad name!", { plaintext: Buffer.from("x") }),
      "invalid_request",
      /key name/,
    );
    await rejectsWith(f.kms.encrypt(alice, "no-such-key", { plaintext: Buffer.from("x") }), "not_found");
    await rejectsWith(f.kms.random(alice, 0), "invalid_request");
    await rejectsWith(f.kms.random(alice, 1025), "invalid_request");
    assert.equal((await f.kms.random(alice, 1024)).length, 1024);
  });

  test("a sign key refuses to encrypt or decrypt", async () => {
    await f.kms.createKey(alice, { name: "signer", purpose: "sign" });
    await rejectsWith(f.kms.encrypt(alice, "signer", { plaintext: Buffer.from("x") }), "key_purpose_mismatch");
    await rejectsWith(f.kms.generateDataKey(alice, "signer"), "key_purpose_mismatch");
  });

  test("crypto operations are audited with version and context, never plaintext or key material", async () => {
    const marker = "PLAINTEXT-MARKER-7f3a";
    const { ciphertext } = await f.kms.encrypt(alice, "app-a", {
      plaintext: Buffer.from(marker),
      context: { doc: "d1" },
    });
    const dec = await f.kms.decrypt(alice, "app-a", { ciphertext, context: { doc: "d1" } });
    const dk = await f.kms.generateDataKey(alice, "app-a", {});
    const enc = (await f.records("key.encrypt")).at(-1);
    const decRec = (await f.records("key.decrypt")).at(-1);
    const dkRec = (await f.records("key.datakey")).at(-1);
    assert.deepEqual(enc?.details, { version: 1, context: { doc: "d1" } });
    assert.equal(enc?.principal, "user:alice");
    assert.equal(enc?.resource, "key/app-a");
    assert.deepEqual(decRec?.details, { version: 1, context: { doc: "d1" } });
    assert.equal(dkRec?.details.bytes, 32);
    const everything = JSON.stringify(await f.records());
    assert.ok(!everything.includes(marker));
    assert.ok(!everything.includes(Buffer.from(marker).toString("base64")));
    assert.ok(!everything.includes(dk.plaintext?.expose().toString("base64") ?? "-"));
    assert.ok(!everything.includes(dk.plaintext?.expose().toString("hex") ?? "-"));
    dec.plaintext.destroy();
  });

  test("fail closed: when the audit can't be written the caller gets audit_unavailable, not the result", async () => {
    const { ciphertext } = await f.kms.encrypt(alice, "app-a", { plaintext: Buffer.from("x") });
    const before = (await f.records()).length;
    f.audit.failing = true;
    try {
      await rejectsWith(f.kms.encrypt(alice, "app-a", { plaintext: Buffer.from("x") }), "audit_unavailable");
      await rejectsWith(f.kms.decrypt(alice, "app-a", { ciphertext }), "audit_unavailable");
      await rejectsWith(f.kms.generateDataKey(alice, "app-a"), "audit_unavailable");
      await rejectsWith(f.kms.rewrap(alice, "app-a", { ciphertext }), "audit_unavailable");
      await rejectsWith(f.kms.random(alice, 8), "audit_unavailable");
    } finally {
      f.audit.failing = false;
    }
    assert.equal((await f.records()).length, before);
  });

  test("concurrent operations share HSM jobs, and each caller still gets its own answer or error", async () => {
    // The real keystore, with its batch calls counted: operations started in one turn of
    // the event loop go to the HSM as one job per key version, not one call each.
    const jobs = { encryptMany: 0, decryptMany: 0 };
    const counted = new Proxy<Keystore>(f.keystore, {
      get(target, name: keyof Keystore) {
        const method = (target[name] as (...args: unknown[]) => unknown).bind(target);
        if (name !== "encryptMany" && name !== "decryptMany") return method;
        return (...args: unknown[]) => {
          jobs[name]++;
          return method(...args);
        };
      },
    });
    const kms = new KmsService({ keystore: counted, store: f.store, audit: f.audit, clock: () => f.now });
    const made = await Promise.all(
      Array.from({ length: 10 }, async (_, i) => {
        const plaintext = randomBytes(20);
        const context = { item: String(i) };
        return { plaintext, context, ...(await kms.encrypt(alice, "app-b", { plaintext, context })) };
      }),
    );
    assert.equal(jobs.encryptMany, 1, "ten encrypts started together are one HSM job");

    const names = ["app-a", "app-b"];
    const [encrypted, opened] = await Promise.all([
      Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          kms.encrypt(alice, names[i % 2] as string, { plaintext: Buffer.from(`p${i}`), context: { n: String(i) } }),
        ),
      ),
      Promise.allSettled(
        made.map((m, i) =>
          kms.decrypt(alice, "app-b", {
            ciphertext: m.ciphertext,
            context: i % 3 === 0 ? { item: "other" } : m.context,
          }),
        ),
      ),
    ]);
    assert.equal(jobs.encryptMany, 3, "one more job for each of the two keys");
    assert.equal(jobs.decryptMany, 1);
    for (const [i, r] of opened.entries()) {
      const m = made[i];
      if (i % 3 === 0) {
        assert.equal(r.status, "rejected");
        await rejectsWith(Promise.reject((r as PromiseRejectedResult).reason), "decryption_failed");
      } else {
        assert.equal(r.status, "fulfilled");
        const { plaintext } = (r as PromiseFulfilledResult<Awaited<ReturnType<KmsService["decrypt"]>>>).value;
        assert.deepEqual(plaintext.expose(), m?.plaintext);
        plaintext.destroy();
      }
    }
    for (const [i, e] of encrypted.entries()) {
      const out = await f.kms.decrypt(alice, names[i % 2] as string, {
        ciphertext: e.ciphertext,
        context: { n: String(i) },
      });
      assert.equal(out.plaintext.expose().toString(), `p${i}`);
      out.plaintext.destroy();
    }
  });
});
