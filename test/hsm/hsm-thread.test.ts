/**
 * The HSM thread. encryptMany / decryptMany: a batch's AES-GCM as one job there, and
 * the same contract through single calls where the keystore does not offload
 * (`inlineFastCalls: false`, as for a network HSM), checked against node:crypto
 * through a known key wrapped by the root key from a second handle. Signatures made
 * there, checked by node:crypto.
 */
import assert from "node:assert/strict";
import { createCipheriv, createDecipheriv, createPublicKey, verify } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { type CustosError, isCustosError } from "../../src/errors/index.js";
import type { GcmCiphertext } from "../../src/hsm/index.js";
import { Pkcs11Keystore } from "../../src/hsm/pkcs11/index.js";
import { Secret } from "../../src/secret/index.js";
import { createTestToken, type TestToken } from "../helpers/softhsm.js";
import { Injector } from "./injector.js";

const KNOWN = Buffer.from(Array.from({ length: 32 }, (_, i) => (i * 11 + 5) & 0xff));

function sealedOf(r: GcmCiphertext | CustosError): GcmCiphertext {
  if (isCustosError(r)) throw r;
  return r;
}

function outcome(r: Secret | CustosError): string {
  return isCustosError(r) ? r.code : r.exposeText();
}

function nodeOpen(c: GcmCiphertext, aad: Buffer): Buffer {
  const d = createDecipheriv("aes-256-gcm", KNOWN, c.iv);
  d.setAAD(aad);
  d.setAuthTag(Buffer.from(c.ciphertext.subarray(-16)));
  return Buffer.concat([d.update(c.ciphertext.subarray(0, -16)), d.final()]);
}

function nodeSeal(plaintext: Buffer, aad: Buffer, iv: Buffer): Buffer {
  const c = createCipheriv("aes-256-gcm", KNOWN, iv);
  c.setAAD(aad);
  return Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
}

describe("encryptMany and decryptMany against SoftHSM", () => {
  let token: TestToken;
  /** Offloads batches and signatures to the HSM thread (a local token). */
  let threaded: Pkcs11Keystore;
  /** Runs them as single calls over the pool. */
  let single: Pkcs11Keystore;
  let wrapped: Buffer;
  const started: string[] = [];

  before(async () => {
    token = createTestToken("custos-many");
    const open = (inlineFastCalls: boolean) =>
      Pkcs11Keystore.open({
        modulePath: token.modulePath,
        tokenLabel: token.label,
        pin: Secret.fromString(token.pin),
        operationTimeoutMs: 5000,
        inlineFastCalls,
        logger: { warn: () => {}, info: (_, m) => started.push(`${inlineFastCalls ? "threaded" : "single"}: ${m}`) },
      });
    threaded = await open(true);
    single = await open(false);
    await threaded.createRootKey();
    const inj = new Injector(token);
    wrapped = inj.wrapKnownKey(KNOWN);
    // The keystore learns how fast the module is from a moving average of its calls; until
    // then it offloads nothing. Enough calls that a few slowed by a busy machine don't count.
    for (let i = 0; i < 100; i++) await threaded.encrypt(wrapped, Buffer.from("warm"), Buffer.alloc(0));
  });

  after(async () => {
    await threaded.close();
    await single.close();
    token.remove();
  });

  for (const which of ["threaded", "single"] as const) {
    const ks = () => (which === "threaded" ? threaded : single);

    test(`${which}: every item is standard AES-256-GCM under its own fresh IV, both ways`, async () => {
      const lengths = [1, 15, 16, 17, 31, 32, 33, 1000, 4097];
      const messages = lengths.map((n, i) => ({
        plaintext: Buffer.alloc(n, i + 1),
        aad: Buffer.alloc(i % 3 === 0 ? 0 : 5 + i, 0xa0 + i),
      }));
      const sealed = (await ks().encryptMany(wrapped, messages)).map(sealedOf);
      assert.equal(sealed.length, messages.length);
      sealed.forEach((c, i) => {
        const m = messages[i]!;
        assert.equal(c.iv.length, 12);
        assert.equal(c.ciphertext.length, m.plaintext.length + 16);
        assert.deepEqual(nodeOpen(c, m.aad), m.plaintext, `item ${i}`);
      });
      assert.equal(new Set(sealed.map((c) => Buffer.from(c.iv).toString("hex"))).size, sealed.length);

      const ivs = messages.map((_, i) => Buffer.alloc(12, 0x30 + i));
      const opened = await ks().decryptMany(
        wrapped,
        messages.map((m, i) => ({ iv: ivs[i]!, ciphertext: nodeSeal(m.plaintext, m.aad, ivs[i]!), aad: m.aad })),
      );
      opened.forEach((o, i) => {
        assert.ok(o instanceof Secret, `item ${i}: ${outcome(o as CustosError)}`);
        assert.deepEqual(o.expose(), messages[i]!.plaintext);
      });
    });

    test(`${which}: a refused or forged item fails in its place, the rest go through`, async () => {
      const aad = Buffer.from("ctx");
      const results = await ks().encryptMany(wrapped, [
        { plaintext: Buffer.from("first"), aad },
        { plaintext: Buffer.alloc(0), aad },
        { plaintext: Buffer.alloc(1024 * 1024 + 1), aad },
        { plaintext: Buffer.from("last"), aad },
      ]);
      assert.deepEqual(
        results.map((r) => (isCustosError(r) ? r.code : "ok")),
        ["ok", "invalid_request", "payload_too_large", "ok"],
      );
      const good = sealedOf(results[0]!);
      const flippedTag = Buffer.from(good.ciphertext);
      flippedTag[flippedTag.length - 1]! ^= 1;
      const flippedBody = Buffer.from(good.ciphertext);
      flippedBody[0]! ^= 1;
      const opened = await ks().decryptMany(wrapped, [
        { iv: good.iv, ciphertext: good.ciphertext, aad },
        { iv: good.iv, ciphertext: flippedTag, aad },
        { iv: good.iv, ciphertext: flippedBody, aad },
        { iv: good.iv, ciphertext: good.ciphertext, aad: Buffer.from("ctX") },
        { iv: good.iv.subarray(0, 11), ciphertext: good.ciphertext, aad },
        { iv: good.iv, ciphertext: good.ciphertext.subarray(0, 16), aad },
        { iv: good.iv, ciphertext: good.ciphertext, aad },
      ]);
      assert.deepEqual(opened.map(outcome), [
        "first",
        "decryption_failed",
        "decryption_failed",
        "decryption_failed",
        "decryption_failed",
        "decryption_failed",
        "first",
      ]);
      // The rejected items left no operation active and no doubt about the token.
      assert.equal(ks().health().state, "ok");
      assert.equal((await ks().decrypt(wrapped, good.iv, good.ciphertext, aad)).exposeText(), "first");
    });

    test(`${which}: a key the root key did not wrap fails the encryption, and every decryption; empty calls answer empty`, async () => {
      const forged = Buffer.from(wrapped);
      forged[5]! ^= 1;
      const message = { plaintext: Buffer.from("x"), aad: Buffer.alloc(0) };
      await assert.rejects(ks().encryptMany(forged, [message]), (e) => isCustosError(e, "invalid_request"));
      await assert.rejects(ks().encryptMany(wrapped.subarray(0, 39), [message]), (e) =>
        isCustosError(e, "invalid_request"),
      );
      const sealed = sealedOf((await ks().encryptMany(wrapped, [message]))[0]!);
      const both = { ...sealed, aad: Buffer.alloc(0) };
      assert.deepEqual((await ks().decryptMany(forged, [both, both])).map(outcome), [
        "decryption_failed",
        "decryption_failed",
      ]);
      assert.deepEqual(await ks().encryptMany(wrapped, []), []);
      assert.deepEqual(await ks().decryptMany(wrapped, []), []);
    });
  }

  test("the two paths read each other's output; concurrent 1000-item jobs stay correct", async () => {
    const batch = (tag: number) =>
      Array.from({ length: 1000 }, (_, i) => ({
        plaintext: Buffer.from(`data key ${tag}/${i}`.padEnd(32, ".")),
        aad: Buffer.from(`{"item":${i}}`),
      }));
    const batches = [batch(1), batch(2), batch(3), batch(4)];
    const sealed = await Promise.all(
      batches.map(async (b, k) => (await (k % 2 ? single : threaded).encryptMany(wrapped, b)) as GcmCiphertext[]),
    );
    const opened = await Promise.all(
      batches.map((b, k) =>
        (k % 2 ? threaded : single).decryptMany(
          wrapped,
          b.map((m, i) => ({ iv: sealed[k]![i]!.iv, ciphertext: sealed[k]![i]!.ciphertext, aad: m.aad })),
        ),
      ),
    );
    batches.forEach((b, k) => {
      assert.deepEqual(
        opened[k]!.map(outcome),
        b.map((m) => m.plaintext.toString()),
      );
    });
  });

  test("signatures made on the thread verify with node:crypto, the empty message too", async () => {
    const pairs = {
      "ecdsa-p256-sha256": await threaded.generateKeyPair("ecdsa-p256", "thread-ec"),
      ed25519: await threaded.generateKeyPair("ed25519", "thread-ed"),
    } as const;
    for (const [scheme, pair] of Object.entries(pairs) as Array<
      [keyof typeof pairs, (typeof pairs)[keyof typeof pairs]]
    >) {
      const publicKey = createPublicKey({ key: pair.publicKey, format: "der", type: "spki" });
      await threaded.sign(pair.ref, scheme, Buffer.from("warm"));
      const messages = [
        Buffer.alloc(0),
        Buffer.from("one"),
        Buffer.alloc(5000, 7),
        ...Array.from({ length: 20 }, (_, i) => Buffer.from(`m${i}`)),
      ];
      const signatures = await Promise.all(messages.map((m) => threaded.sign(pair.ref, scheme, m)));
      signatures.forEach((signature, i) => {
        const m = messages[i]!;
        const verifies = (message: Buffer) =>
          scheme === "ed25519"
            ? verify(null, message, publicKey, signature)
            : verify("sha256", message, { key: publicKey, dsaEncoding: "ieee-p1363" }, signature);
        assert.ok(verifies(m), `${scheme} message ${i}`);
        assert.equal(verifies(Buffer.concat([m, Buffer.from("x")])), false, `${scheme} message ${i}, lengthened`);
      });
    }
  });

  test("the offloading keystore ran its work on its thread; the one that does not never started one", () => {
    assert.deepEqual(started, ["threaded: hsm: HSM thread started"]);
  });
});
