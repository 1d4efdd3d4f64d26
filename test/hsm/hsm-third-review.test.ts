/**
 * Third review of the HSM thread and the keystore around it: many-calls against the
 * single calls they stand for, IVs, the caller's buffers, faults from a second
 * PKCS#11 handle while thread jobs run, close() under jobs, and thread signatures.
 * node:crypto is the oracle throughout, through a known key wrapped by the root key
 * (Injector.wrapKnownKey).
 */
import assert from "node:assert/strict";
import { createCipheriv, createDecipheriv, createPublicKey, type KeyObject, randomBytes, verify } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { type CustosError, isCustosError } from "../../src/errors/index.js";
import type { GcmCiphertext, GcmMessage, GcmSealed, HsmKeyRef, Keystore } from "../../src/hsm/index.js";
import { Pkcs11Keystore } from "../../src/hsm/pkcs11/index.js";
import { Secret } from "../../src/secret/index.js";
import { createTestToken, type TestToken } from "../helpers/softhsm.js";
import { Injector, runInChild } from "./injector.js";

const MIB = 1024 * 1024;
const P256_ORDER = BigInt("0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");

function sealedOf(r: GcmCiphertext | CustosError): GcmCiphertext {
  if (isCustosError(r)) throw r;
  return r;
}

/** What a call or item came to: an error code, or the plaintext as hex. */
function outcome(r: Secret | GcmCiphertext | CustosError): string {
  if (isCustosError(r)) return r.code;
  return r instanceof Secret ? r.expose().toString("hex") : "sealed";
}

async function settled<T>(p: Promise<T>): Promise<T | string> {
  try {
    return await p;
  } catch (e) {
    return isCustosError(e) ? e.code : `${(e as Error).name}: ${(e as Error).message}`;
  }
}

function nodeOpen(key: Buffer, c: { iv: Uint8Array; ciphertext: Uint8Array }, aad: Uint8Array): Buffer {
  const d = createDecipheriv("aes-256-gcm", key, c.iv);
  d.setAAD(aad);
  d.setAuthTag(c.ciphertext.subarray(-16));
  return Buffer.concat([d.update(c.ciphertext.subarray(0, -16)), d.final()]);
}

function nodeSeal(key: Buffer, plaintext: Uint8Array, aad: Uint8Array, iv: Buffer): Buffer {
  const c = createCipheriv("aes-256-gcm", key, iv);
  c.setAAD(aad);
  return Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
}

/** Raw r‖s (JWS form) to DER, as a caller converting for X.509 would. */
function rawToDer(raw: Buffer): Buffer {
  const int = (b: Buffer): Buffer => {
    let v = b;
    while (v.length > 1 && v[0] === 0 && (v[1]! & 0x80) === 0) v = v.subarray(1);
    if (v[0]! & 0x80) v = Buffer.concat([Buffer.of(0), v]);
    return Buffer.concat([Buffer.of(0x02, v.length), v]);
  };
  const body = Buffer.concat([int(raw.subarray(0, 32)), int(raw.subarray(32))]);
  return Buffer.concat([Buffer.of(0x30, body.length), body]);
}

function verifies(scheme: "ecdsa-p256-sha256" | "ed25519", key: KeyObject, m: Buffer, sig: Buffer): boolean {
  return scheme === "ed25519"
    ? verify(null, m, key, sig)
    : verify("sha256", m, { key, dsaEncoding: "ieee-p1363" }, sig);
}

function openKeystore(token: TestToken, inlineFastCalls: boolean, extra: { operationTimeoutMs?: number } = {}) {
  const infos: string[] = [];
  const warnings: string[] = [];
  const opened = Pkcs11Keystore.open({
    modulePath: token.modulePath,
    tokenLabel: token.label,
    pin: Secret.fromString(token.pin),
    operationTimeoutMs: extra.operationTimeoutMs ?? 5000,
    inlineFastCalls,
    logger: { warn: (o, m) => warnings.push(`${m} ${JSON.stringify(o)}`), info: (_, m) => infos.push(m) },
  });
  return { opened, infos, warnings };
}

/** Lets the keystore learn that the module is local, so batches and EC/EdDSA signatures go to its thread. */
async function warm(ks: Keystore, wrapped: Buffer, signers: Array<[HsmKeyRef, "ecdsa-p256-sha256" | "ed25519"]>) {
  for (let i = 0; i < 20; i++) {
    await ks.encrypt(wrapped, Buffer.from("warm"), Buffer.alloc(0));
    for (const [ref, scheme] of signers) await ks.sign(ref, scheme, Buffer.from("warm"));
  }
  await ks.encryptMany(wrapped, [{ plaintext: Buffer.from("warm"), aad: Buffer.alloc(0) }]);
}

describe("HSM thread, third review: many-calls, IVs, buffers, signatures", () => {
  let token: TestToken;
  let threaded: Pkcs11Keystore;
  let single: Pkcs11Keystore;
  let threadedInfos: string[];
  let known: Buffer;
  let wrapped: Buffer;
  const signers: Record<string, { ref: HsmKeyRef; key: KeyObject; scheme: "ecdsa-p256-sha256" | "ed25519" }> = {};

  before(async () => {
    token = createTestToken("custos-review3");
    const t = openKeystore(token, true);
    threaded = await t.opened;
    threadedInfos = t.infos;
    single = await openKeystore(token, false).opened;
    await threaded.createRootKey();
    known = randomBytes(32);
    wrapped = new Injector(token).wrapKnownKey(known);
    for (const [name, algorithm, scheme] of [
      ["ec-a", "ecdsa-p256", "ecdsa-p256-sha256"],
      ["ec-b", "ecdsa-p256", "ecdsa-p256-sha256"],
      ["ed-a", "ed25519", "ed25519"],
      ["ed-b", "ed25519", "ed25519"],
    ] as const) {
      const pair = await threaded.generateKeyPair(algorithm, `review3-${name}`);
      signers[name] = {
        ref: pair.ref,
        key: createPublicKey({ key: pair.publicKey, format: "der", type: "spki" }),
        scheme,
      };
    }
    await warm(
      threaded,
      wrapped,
      Object.values(signers).map((s): [HsmKeyRef, typeof s.scheme] => [s.ref, s.scheme]),
    );
  });

  after(async () => {
    await threaded.close();
    await single.close();
    token.remove();
  });

  test("the offloading keystore did start its HSM thread (so the tests below exercise it)", () => {
    assert.ok(threadedInfos.includes("hsm: HSM thread started"), JSON.stringify(threadedInfos));
  });

  for (const which of ["threaded", "single"] as const) {
    const ks = () => (which === "threaded" ? threaded : single);

    test(`${which}: every encryptMany item comes out as encrypt() would for it, in order`, async () => {
      const same = Buffer.from("the same Buffer object three times");
      const messages: GcmMessage[] = [
        { plaintext: Buffer.alloc(1, 1), aad: Buffer.alloc(0) },
        { plaintext: "not bytes" as unknown as Uint8Array, aad: Buffer.alloc(0) },
        { plaintext: same, aad: Buffer.from("a") },
        { plaintext: Buffer.alloc(0), aad: Buffer.from("a") },
        { plaintext: new Uint8Array(4097).fill(7), aad: new Uint8Array(MIB) },
        { plaintext: same, aad: Buffer.from("a") },
        { plaintext: Buffer.from("x"), aad: Buffer.alloc(MIB + 1) },
        { plaintext: Buffer.alloc(MIB + 1), aad: Buffer.alloc(0) },
        { plaintext: same, aad: Buffer.alloc(0) },
        { plaintext: Buffer.from("aad missing") } as unknown as GcmMessage,
      ];
      const many = await ks().encryptMany(wrapped, messages);
      const singles = await Promise.all(messages.map((m) => settled(ks().encrypt(wrapped, m.plaintext, m.aad))));
      assert.deepEqual(
        many.map(outcome),
        singles.map((s) => (typeof s === "string" ? s : "sealed")),
      );
      many.forEach((r, i) => {
        if (isCustosError(r)) return;
        assert.deepEqual(nodeOpen(known, r, messages[i]!.aad), Buffer.from(messages[i]!.plaintext), `item ${i}`);
      });
      const sameIvs = [2, 5, 8].map((i) => sealedOf(many[i]!).iv.toString("hex"));
      assert.equal(new Set(sameIvs).size, 3, "one Buffer object given three times got one IV");
    });

    test(`${which}: every decryptMany item comes out as decrypt() would for it, in order`, async () => {
      const aad = Buffer.from("ctx");
      const iv = randomBytes(12);
      const one = nodeSeal(known, Buffer.of(0x42), aad, iv);
      const big = nodeSeal(known, Buffer.alloc(MIB, 9), Buffer.alloc(0), iv);
      const flipped = Buffer.from(one);
      flipped[0]! ^= 1;
      const sealed: GcmSealed[] = [
        { iv, ciphertext: one, aad },
        { iv: iv.subarray(0, 11), ciphertext: one, aad },
        { iv: Buffer.concat([iv, Buffer.of(0)]), ciphertext: one, aad },
        { iv, ciphertext: one.subarray(0, 16), aad },
        { iv, ciphertext: flipped, aad },
        { iv, ciphertext: one, aad: Buffer.alloc(0) },
        { iv, ciphertext: "not bytes" as unknown as Uint8Array, aad },
        { iv, ciphertext: Buffer.alloc(MIB + 17), aad },
        { iv, ciphertext: one, aad: Buffer.alloc(MIB + 1) },
        { iv, ciphertext: big, aad: new Uint8Array(0) },
        { iv, ciphertext: one, aad },
      ];
      const many = await ks().decryptMany(wrapped, sealed);
      const singles = await Promise.all(
        sealed.map(async (s) => {
          const r = await settled(ks().decrypt(wrapped, s.iv, s.ciphertext, s.aad));
          return typeof r === "string" ? r : outcome(r);
        }),
      );
      assert.deepEqual(many.map(outcome), singles);
      assert.equal(singles[0], "42");
      assert.equal(singles[9], Buffer.alloc(MIB, 9).toString("hex"));
    });

    test(`${which}: the caller's buffers are left as they were, both ways`, async () => {
      const plaintexts = [randomBytes(40), randomBytes(5000), randomBytes(1)];
      const aads = [Buffer.from("aad-1"), Buffer.alloc(0), randomBytes(300)];
      const copies = [...plaintexts, ...aads].map((b) => Buffer.from(b));
      const sealed = (
        await ks().encryptMany(
          wrapped,
          plaintexts.map((plaintext, i) => ({ plaintext, aad: aads[i]! })),
        )
      ).map(sealedOf);
      assert.deepEqual([...plaintexts, ...aads], copies, "encryptMany changed a plaintext or an AAD");
      const inputs = sealed.map((c, i) => ({
        iv: Buffer.from(c.iv),
        ciphertext: Buffer.from(c.ciphertext),
        aad: aads[i]!,
      }));
      const before = inputs.map((s) => Buffer.concat([s.iv, s.ciphertext]));
      const opened = await ks().decryptMany(wrapped, inputs);
      assert.deepEqual(
        inputs.map((s) => Buffer.concat([s.iv, s.ciphertext])),
        before,
        "decryptMany changed an IV or a ciphertext",
      );
      assert.deepEqual(
        opened.map(outcome),
        plaintexts.map((p) => p.toString("hex")),
      );
    });
  }

  test("a null item in a many-call is an invalid_request in its place (as encrypt(undefined) is), not a TypeError", async () => {
    const good = { plaintext: Buffer.from("kept"), aad: Buffer.alloc(0) };
    await assert.rejects(threaded.encrypt(wrapped, undefined as unknown as Uint8Array, Buffer.alloc(0)), (e) =>
      isCustosError(e, "invalid_request"),
    );
    const sealed = await settled(threaded.encryptMany(wrapped, [null as unknown as GcmMessage, good]));
    assert.ok(Array.isArray(sealed), `encryptMany threw ${String(sealed)}`);
    assert.deepEqual(sealed.map(outcome), ["invalid_request", "sealed"]);
    const opened = await settled(threaded.decryptMany(wrapped, [null as unknown as GcmSealed]));
    assert.ok(Array.isArray(opened), `decryptMany threw ${String(opened)}`);
    assert.equal(outcome(opened[0]!), "invalid_request");
  });

  test("decryptMany under a wrapped key of the wrong size gives every item decryption_failed, as the interface says", async () => {
    const item = { iv: Buffer.alloc(12), ciphertext: Buffer.alloc(32), aad: Buffer.alloc(0) };
    // A 40-byte blob the root key did not make already behaves as documented:
    const forged = Buffer.from(wrapped);
    forged[3]! ^= 1;
    assert.deepEqual((await threaded.decryptMany(forged, [item, item])).map(outcome), [
      "decryption_failed",
      "decryption_failed",
    ]);
    for (const blob of [wrapped.subarray(0, 39), Buffer.concat([wrapped, Buffer.of(0)]), Buffer.alloc(0)]) {
      const r = await settled(threaded.decryptMany(blob, [item, item]));
      assert.ok(Array.isArray(r), `a ${blob.length}-byte wrapped key failed the whole call: ${String(r)}`);
      assert.deepEqual(r.map(outcome), ["decryption_failed", "decryption_failed"]);
    }
  });

  test("a decrypted plaintext is not readable through the IV buffers later calls hand back", async () => {
    const plaintext = randomBytes(32);
    const iv = randomBytes(12);
    const ciphertext = nodeSeal(known, plaintext, Buffer.alloc(0), iv);
    const [fromOne, fromMany] = [
      await threaded.decrypt(wrapped, iv, ciphertext, Buffer.alloc(0)),
      (await threaded.decryptMany(wrapped, [{ iv, ciphertext, aad: Buffer.alloc(0) }]))[0] as Secret,
    ];
    const handedOut = [
      await threaded.encrypt(wrapped, Buffer.from("later"), Buffer.alloc(0)),
      ...(await threaded.encryptMany(wrapped, [{ plaintext: Buffer.from("later"), aad: Buffer.alloc(0) }])).map(
        sealedOf,
      ),
      await single.encrypt(wrapped, Buffer.from("later"), Buffer.alloc(0)),
    ];
    assert.deepEqual(fromOne.expose(), plaintext);
    assert.deepEqual(fromMany.expose(), plaintext);
    for (const c of handedOut) {
      for (const b of [c.iv, c.ciphertext]) {
        assert.ok(!Buffer.from(b.buffer).includes(plaintext), "a returned buffer's memory holds a live plaintext");
      }
    }
  });

  test("6,000 IVs from concurrent single calls, many-calls on the thread and over the pool, two keystores: none repeats, all open", async () => {
    const batch = (tag: string) =>
      Array.from({ length: 1000 }, (_, i) => ({ plaintext: Buffer.from(`${tag}:${i}`), aad: Buffer.from(tag) }));
    const tags = ["t1", "t2", "t3"];
    const [manyResults, singles, singleKs] = await Promise.all([
      Promise.all(tags.map(async (t) => (await threaded.encryptMany(wrapped, batch(t))).map(sealedOf))),
      Promise.all(batch("one").map((m) => threaded.encrypt(wrapped, m.plaintext, m.aad))),
      Promise.all(["s1", "s2"].map(async (t) => (await single.encryptMany(wrapped, batch(t))).map(sealedOf))),
    ]);
    const all = [
      ...manyResults.flatMap((r, k) => r.map((c, i) => ({ c, m: batch(tags[k]!)[i]! }))),
      ...singles.map((c, i) => ({ c, m: batch("one")[i]! })),
      ...singleKs.flatMap((r, k) => r.map((c, i) => ({ c, m: batch(`s${k + 1}`)[i]! }))),
    ];
    assert.equal(all.length, 6000);
    assert.equal(new Set(all.map(({ c }) => c.iv.toString("hex"))).size, all.length, "an IV repeated under one key");
    for (const { c, m } of all) assert.deepEqual(nodeOpen(known, c, m.aad), m.plaintext);
  });

  test("a 5,000-item many-call, both ways and on both paths, matches node:crypto item for item", async () => {
    const messages = Array.from({ length: 5000 }, (_, i) => ({
      plaintext: randomBytes(((i * 37) % 600) + 1),
      aad: Buffer.from(i % 5 === 0 ? "" : `item ${i}`),
    }));
    for (const ks of [threaded, single]) {
      const sealed = (await ks.encryptMany(wrapped, messages)).map(sealedOf);
      sealed.forEach((c, i) => {
        assert.deepEqual(nodeOpen(known, c, messages[i]!.aad), messages[i]!.plaintext, `item ${i}`);
      });
      const ivs = messages.map(() => randomBytes(12));
      const opened = await ks.decryptMany(
        wrapped,
        messages.map((m, i) => ({ iv: ivs[i]!, ciphertext: nodeSeal(known, m.plaintext, m.aad, ivs[i]!), aad: m.aad })),
      );
      assert.deepEqual(
        opened.map(outcome),
        messages.map((m) => m.plaintext.toString("hex")),
      );
    }
  });

  test("items at the size limit (1 MiB plaintext, 1 MiB AAD) in one many-call match node:crypto; a byte more fails only its item", async () => {
    const full = (i: number) => ({ plaintext: Buffer.alloc(MIB, i + 1), aad: Buffer.alloc(MIB, 0xf0 + i) });
    const messages = [full(0), full(1), { plaintext: Buffer.alloc(MIB + 1), aad: Buffer.alloc(0) }, full(2)];
    const sealed = await threaded.encryptMany(wrapped, messages);
    assert.deepEqual(sealed.map(outcome), ["sealed", "sealed", "payload_too_large", "sealed"]);
    for (const i of [0, 1, 3]) {
      assert.ok(nodeOpen(known, sealedOf(sealed[i]!), messages[i]!.aad).equals(messages[i]!.plaintext), `item ${i}`);
    }
    const back = await threaded.decryptMany(wrapped, [
      ...[0, 1, 3].map((i) => ({ ...sealedOf(sealed[i]!), aad: messages[i]!.aad })),
      { iv: Buffer.alloc(12), ciphertext: Buffer.alloc(MIB + 17), aad: Buffer.alloc(0) },
    ]);
    assert.deepEqual(
      back.map((r) => (isCustosError(r) ? r.code : r.expose()[0])),
      [1, 2, 3, "payload_too_large"],
    );
  });

  test("concurrent thread signatures of four keys are never mixed up: each verifies under its own key only", async () => {
    const names = Object.keys(signers);
    const jobs = Array.from({ length: 120 }, (_, i) => ({ name: names[i % 4]!, m: randomBytes(1 + (i % 50)) }));
    const sigs = await Promise.all(
      jobs.map(({ name, m }) => threaded.sign(signers[name]!.ref, signers[name]!.scheme, m)),
    );
    jobs.forEach(({ name, m }, i) => {
      const own = signers[name]!;
      const twin = signers[name.endsWith("a") ? name.replace(/a$/, "b") : name.replace(/b$/, "a")]!;
      assert.equal(sigs[i]!.length, 64);
      assert.ok(verifies(own.scheme, own.key, m, sigs[i]!), `signature ${i} by ${name}`);
      assert.equal(
        verifies(own.scheme, twin.key, m, sigs[i]!),
        false,
        `signature ${i} also verifies under the other key`,
      );
    });
  });

  test("ECDSA from the thread is raw r‖s: both halves in 1..n-1, always 64 bytes, DER-converted it verifies as DER", async () => {
    const ec = signers["ec-a"]!;
    const messages = Array.from({ length: 1500 }, (_, i) => Buffer.from(`m${i}`));
    const sigs = await Promise.all(messages.map((m) => threaded.sign(ec.ref, ec.scheme, m)));
    let shortHalf = 0;
    sigs.forEach((sig, i) => {
      assert.equal(sig.length, 64);
      for (const half of [sig.subarray(0, 32), sig.subarray(32)]) {
        const v = BigInt(`0x${half.toString("hex")}`);
        assert.ok(v > 0n && v < P256_ORDER);
        if (half[0] === 0) shortHalf++;
      }
      assert.ok(verify("sha256", messages[i]!, ec.key, rawToDer(sig)), `DER form of signature ${i}`);
      assert.equal(verify("sha256", messages[i]!, ec.key, sig), false, "raw r‖s accepted as DER");
    });
    // Among 3,000 halves some start with a zero byte (p = 1/256 each): kept as padding, not dropped.
    assert.ok(shortHalf > 0, "no half with a leading zero byte among 3,000");
  });
});

/**
 * A logout by another user of the library, again and again, while batches and
 * signatures run on the HSM thread; run in a child process, since a fault injected
 * from this thread while the module works in another can bring SoftHSM down. Prints
 * each request's outcome: "ok" (node:crypto checked it), "hsm_unavailable", or what
 * else it came to.
 */
const LOGOUT_STORM = `
const [keystoreUrl, secretUrl, helperUrl, injectorUrl] = process.argv.slice(1);
const { createCipheriv, createDecipheriv, createPublicKey, verify } = await import("node:crypto");
const { Pkcs11Keystore } = await import(keystoreUrl);
const { Secret } = await import(secretUrl);
const { createTestToken } = await import(helperUrl);
const { Injector } = await import(injectorUrl);
const token = createTestToken("custos-review3-storm");
const ks = await Pkcs11Keystore.open({
  modulePath: token.modulePath, tokenLabel: token.label, pin: Secret.fromString(token.pin), operationTimeoutMs: 1500,
});
await ks.createRootKey();
const inj = new Injector(token);
const keys = Array.from({ length: 6 }, (_, i) => Buffer.alloc(32, 0x10 + i));
const wrapped = keys.map((k) => inj.wrapKnownKey(k));
const pair = await ks.generateKeyPair("ed25519", "storm-ed");
const pub = createPublicKey({ key: pair.publicKey, format: "der", type: "spki" });
for (let i = 0; i < 20; i++) {
  await ks.encrypt(wrapped[0], Buffer.from("warm"), Buffer.alloc(0));
  await ks.sign(pair.ref, "ed25519", Buffer.from("warm"));
}
const open = (key, iv, ct, aad) => {
  const d = createDecipheriv("aes-256-gcm", key, iv);
  d.setAAD(aad);
  d.setAuthTag(ct.subarray(-16));
  return Buffer.concat([d.update(ct.subarray(0, -16)), d.final()]);
};
async function request(lane, round) {
  const k = (lane + round) % keys.length;
  const aad = Buffer.from("storm " + k);
  const messages = Array.from({ length: 100 }, (_, j) => ({ plaintext: Buffer.from(lane + "/" + round + "/" + j), aad }));
  const iv = Buffer.alloc(12, lane + 1);
  const c = createCipheriv("aes-256-gcm", keys[k], iv);
  c.setAAD(aad);
  const known = Buffer.concat([c.update(Buffer.from("known")), c.final(), c.getAuthTag()]);
  try {
    const sealed = await ks.encryptMany(wrapped[k], messages);
    for (const [j, s] of sealed.entries()) {
      if (s.code || !open(keys[k], s.iv, s.ciphertext, aad).equals(messages[j].plaintext)) return "WRONG ciphertext";
    }
    const opened = await ks.decryptMany(wrapped[k], [...sealed.map((s) => ({ ...s, aad })), { iv, ciphertext: known, aad }]);
    for (const [j, o] of opened.entries()) {
      if (o.code) return "item " + j + " of a decryptMany: " + o.code;
      const want = j === messages.length ? Buffer.from("known") : messages[j].plaintext;
      if (!o.expose().equals(want)) return "WRONG plaintext";
    }
    const m = Buffer.from("sign " + lane + "/" + round);
    if (!verify(null, m, pub, await ks.sign(pair.ref, "ed25519", m))) return "WRONG signature";
    return "ok";
  } catch (e) {
    return e.code === "hsm_unavailable" ? e.code : (e.code ?? String(e)) + ": " + e.message;
  }
}
const lanes = (n, rounds) => Promise.all(Array.from({ length: n }, async (_, lane) => {
  const out = [];
  for (let round = 0; round < rounds; round++) out.push(await request(lane, round));
  return out;
})).then((r) => r.flat());
const storm = setInterval(() => { try { inj.logout(); } catch {} }, 5);
const during = await lanes(12, 12);
clearInterval(storm);
const until = Date.now() + 20000;
while (ks.health().state !== "ok" && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
const afterwards = await lanes(4, 2);
await ks.close();
token.remove();
console.log(JSON.stringify({ during, afterwards }));
`;

describe("HSM thread, third review: faults and close() under thread jobs", () => {
  const TIMEOUT_MS = 1500;
  let token: TestToken;
  let ks: Pkcs11Keystore;
  let inj: Injector;
  let known: Buffer;
  let wrapped: Buffer;
  let ec: { ref: HsmKeyRef; key: KeyObject };
  let ed: { ref: HsmKeyRef; key: KeyObject };

  async function provision(): Promise<void> {
    wrapped = inj.wrapKnownKey(known);
    const e = await ks.generateKeyPair("ecdsa-p256", "review3-fault-ec");
    const d = await ks.generateKeyPair("ed25519", "review3-fault-ed");
    ec = { ref: e.ref, key: createPublicKey({ key: e.publicKey, format: "der", type: "spki" }) };
    ed = { ref: d.ref, key: createPublicKey({ key: d.publicKey, format: "der", type: "spki" }) };
    await warm(ks, wrapped, [
      [ec.ref, "ecdsa-p256-sha256"],
      [ed.ref, "ed25519"],
    ]);
  }

  /**
   * One request as a batch makes it: a 300-item encryptMany and decryptMany, an ECDSA
   * and an Ed25519 signature, every result checked by node:crypto. Resolves "ok" or
   * the code it failed with; a wrong result is an assertion failure.
   */
  async function request(k: Keystore, i: number): Promise<string> {
    const messages = Array.from({ length: 300 }, (_, j) => ({
      plaintext: Buffer.from(`request ${i} item ${j}`),
      aad: Buffer.from(`${i}/${j}`),
    }));
    try {
      const sealed = (await k.encryptMany(wrapped, messages)).map(sealedOf);
      sealed.forEach((c, j) => {
        assert.deepEqual(nodeOpen(known, c, messages[j]!.aad), messages[j]!.plaintext);
      });
      const opened = await k.decryptMany(
        wrapped,
        sealed.map((c, j) => ({ ...c, aad: messages[j]!.aad })),
      );
      assert.deepEqual(
        opened.map(outcome),
        messages.map((m) => m.plaintext.toString("hex")),
      );
      const m = Buffer.from(`sign ${i}`);
      assert.ok(verifies("ecdsa-p256-sha256", ec.key, m, await k.sign(ec.ref, "ecdsa-p256-sha256", m)));
      assert.ok(verifies("ed25519", ed.key, m, await k.sign(ed.ref, "ed25519", m)));
      return "ok";
    } catch (e) {
      if (isCustosError(e)) return e.code === "hsm_unavailable" ? e.code : `${e.code}: ${e.message}`;
      throw e;
    }
  }

  async function waitForOk(): Promise<void> {
    const until = Date.now() + 20_000;
    while (ks.health().state !== "ok" && Date.now() < until) await sleep(100);
    assert.equal(ks.health().state, "ok", JSON.stringify(ks.health()));
  }

  before(async () => {
    token = createTestToken("custos-review3-faults");
    ks = await openKeystore(token, true, { operationTimeoutMs: TIMEOUT_MS }).opened;
    inj = new Injector(token);
    await ks.createRootKey();
    known = randomBytes(32);
    await provision();
  });

  after(async () => {
    await ks.close();
    token.remove();
  });

  test("a logout storm under running thread jobs: every request is right or hsm_unavailable, never blamed on its input; then all succeed", () => {
    const { out, failure } = runInChild(LOGOUT_STORM, [
      "../../src/hsm/pkcs11/index.ts",
      "../../src/secret/index.ts",
      "../helpers/softhsm.ts",
      "./injector.ts",
    ]);
    assert.equal(failure, "", "the process running the storm died");
    const { during, afterwards } = JSON.parse(out) as { during: string[]; afterwards: string[] };
    assert.ok(during.includes("ok"), "nothing succeeded during the storm");
    const tally: Record<string, number> = {};
    for (const o of during) if (o !== "ok" && o !== "hsm_unavailable") tally[o] = (tally[o] ?? 0) + 1;
    assert.deepEqual(tally, {});
    assert.deepEqual(afterwards, Array(8).fill("ok"));
  });

  test("token re-initialised under queued thread jobs: nothing wrong, nothing hangs; with new keys, batches and signatures work", async () => {
    const inFlight = Array.from({ length: 8 }, (_, i) => request(ks, 200 + i));
    await sleep(1);
    token.reinitialize();
    const outcomes = await Promise.all(inFlight);
    // A key still held in a session may finish its work; the rest are unavailable (no root key) or not_found.
    assert.deepEqual(
      outcomes.filter((o) => !["ok", "hsm_unavailable", "not_found"].includes(o.split(":")[0]!)),
      [],
    );
    await waitForOk();
    assert.equal(await ks.findRootKey(), undefined);
    await ks.createRootKey();
    await provision();
    assert.deepEqual(await Promise.all(Array.from({ length: 6 }, (_, i) => request(ks, 300 + i))), Array(6).fill("ok"));
  });

  /** Opens a second keystore on the token, starts eight requests on it and closes it under them. */
  async function closeUnderRequests(): Promise<{ doomed: Pkcs11Keystore; outcomes: string[]; warnings: string[] }> {
    const opening = openKeystore(token, true);
    const doomed = await opening.opened;
    await warm(doomed, wrapped, [
      [ec.ref, "ecdsa-p256-sha256"],
      [ed.ref, "ed25519"],
    ]);
    const inFlight = Array.from({ length: 8 }, (_, i) => request(doomed, 400 + i));
    await sleep(1);
    await doomed.close();
    return { doomed, outcomes: await Promise.all(inFlight), warnings: opening.warnings };
  }

  test("close() with thread jobs in flight: every call settles with no wrong result; then many-calls and signatures say closed", async () => {
    // request() asserts every result it gets against node:crypto.
    const { doomed, outcomes } = await closeUnderRequests();
    assert.equal(outcomes.length, 8);
    const after: Array<() => Promise<unknown>> = [
      () => doomed.encryptMany(wrapped, [{ plaintext: Buffer.from("x"), aad: Buffer.alloc(0) }]),
      () => doomed.decryptMany(wrapped, [{ iv: Buffer.alloc(12), ciphertext: Buffer.alloc(17), aad: Buffer.alloc(0) }]),
      () => doomed.sign(ec.ref, "ecdsa-p256-sha256", Buffer.from("x")),
      () => doomed.sign(ed.ref, "ed25519", Buffer.from("x")),
    ];
    for (const call of after) {
      await assert.rejects(call(), (e: unknown) => isCustosError(e, "hsm_unavailable") && /closed/.test(e.message));
    }
    // The keystore that stays open is untouched by it.
    assert.equal(await request(ks, 500), "ok");
  });

  test("close() lets calls already holding a session finish: none sees its keys vanish (a lost connection) or an hsm_error", async () => {
    for (let round = 0; round < 3; round++) {
      const { outcomes, warnings } = await closeUnderRequests();
      assert.deepEqual(
        outcomes.filter((o) => o !== "ok" && o !== "hsm_unavailable"),
        [],
      );
      assert.deepEqual(warnings, [], `round ${round}: the closing keystore ran into a lost connection`);
    }
  });
});
