import assert from "node:assert/strict";
import { createCipheriv, createDecipheriv, createPublicKey, constants as cryptoConstants, verify } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { inspect } from "node:util";
import pkcs11js from "pkcs11js";
import { isCustosError } from "../../src/errors/index.js";
import { ensureKeyPair, type Keystore } from "../../src/hsm/index.js";
import { Pkcs11Keystore } from "../../src/hsm/pkcs11/index.js";
import { generateKeyNested } from "../../src/hsm/pkcs11/nested-template.js";
import { rootKeyTemplate } from "../../src/hsm/pkcs11/templates.js";
import { Secret } from "../../src/secret/index.js";
import { createTestToken, type TestToken } from "../helpers/softhsm.js";
import { Injector, runInChild } from "./injector.js";

/**
 * A second review of the keystore, checked from outside it: a second pkcs11js handle
 * (it sees the keystore's sessions and session objects: PKCS#11 state is per
 * process), a child process for what may crash one, and node:crypto.
 */

const A = pkcs11js;
const MIB = 1024 * 1024;

function rejectsWith(code: string): (e: unknown) => boolean {
  return (e) => {
    assert.ok(isCustosError(e), `expected CustosError, got ${inspect(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  };
}

function countObjects(inj: Injector, template: pkcs11js.Template): number {
  return inj.withSession((s) => {
    inj.p.C_FindObjectsInit(s, template);
    const found = inj.p.C_FindObjects(s, 10_000);
    inj.p.C_FindObjectsFinal(s);
    return found.length;
  });
}

interface LiveSession {
  readonly handle: bigint;
  /** True when the session refuses to start a search: some operation is still active on it. */
  readonly active: boolean;
}

/**
 * Every session open on `inj`'s token in this process, other than the one scanning:
 * SoftHSM numbers session handles from one counter, so trying each handle up to a
 * fresh session's finds them all. Only call it while the keystore is idle.
 */
function liveSessions(inj: Injector): LiveSession[] {
  return inj.withSession((own) => {
    const slot = inj.p.C_GetSessionInfo(own).slotID;
    const top = own.readBigUInt64LE(0);
    const found: LiveSession[] = [];
    for (let h = 1n; h < top; h++) {
      const handle = Buffer.alloc(8);
      handle.writeBigUInt64LE(h);
      let info: pkcs11js.SessionInfo;
      try {
        info = inj.p.C_GetSessionInfo(handle);
      } catch {
        continue;
      }
      if (!info.slotID.equals(slot)) continue;
      let active = false;
      try {
        inj.p.C_FindObjectsInit(handle, [{ type: A.CKA_LABEL, value: "no such object" }]);
        inj.p.C_FindObjectsFinal(handle);
      } catch (e) {
        active = /CKR_OPERATION_ACTIVE/.test(String(e));
        if (!active) throw e;
      }
      found.push({ handle: h, active });
    }
    return found;
  });
}

/** Unwrapped encryption keys (session secret keys that can encrypt) on the token. */
function unwrappedKeys(inj: Injector): number {
  return countObjects(inj, [
    { type: A.CKA_CLASS, value: A.CKO_SECRET_KEY },
    { type: A.CKA_TOKEN, value: false },
    { type: A.CKA_ENCRYPT, value: true },
  ]);
}

/** A known AES-256 key wrapped by the token's root key from the second handle: node:crypto's oracle key. */
function wrapKnownKey(inj: Injector, known: Buffer): Buffer {
  return inj.withSession((s) => {
    const p = inj.p;
    p.C_FindObjectsInit(s, [
      { type: A.CKA_LABEL, value: "custos-root" },
      { type: A.CKA_TOKEN, value: true },
    ]);
    const [root] = p.C_FindObjects(s, 1);
    p.C_FindObjectsFinal(s);
    assert.ok(root, "the token has a root key");
    const k = p.C_CreateObject(s, [
      { type: A.CKA_CLASS, value: A.CKO_SECRET_KEY },
      { type: A.CKA_KEY_TYPE, value: A.CKK_AES },
      { type: A.CKA_TOKEN, value: false },
      { type: A.CKA_EXTRACTABLE, value: true },
      { type: A.CKA_VALUE, value: known },
    ]);
    return Buffer.from(p.C_WrapKey(s, { mechanism: A.CKM_AES_KEY_WRAP_PAD }, root, k, Buffer.alloc(64)));
  });
}

function gcmOpen(key: Buffer, iv: Buffer, ciphertext: Buffer, aad: Buffer): Buffer {
  const d = createDecipheriv("aes-256-gcm", key, iv);
  d.setAAD(aad);
  d.setAuthTag(ciphertext.subarray(-16));
  return Buffer.concat([d.update(ciphertext.subarray(0, -16)), d.final()]);
}

/**
 * A keystore whose only session is busy with an RSA-3072 key generation (hundreds of
 * milliseconds in SoftHSM) past a 50 ms deadline, then closed: the process must live on.
 */
const CLOSE_DURING_SLOW_CALL = `
const [keystoreUrl, secretUrl, helperUrl] = process.argv.slice(1);
const { Pkcs11Keystore } = await import(keystoreUrl);
const { Secret } = await import(secretUrl);
const { createTestToken } = await import(helperUrl);
const token = createTestToken("custos-review-close");
const ks = await Pkcs11Keystore.open({
  modulePath: token.modulePath, tokenLabel: token.label, pin: Secret.fromString(token.pin),
  poolSize: 1, operationTimeoutMs: 50,
});
const generation = ks.generateKeyPair("rsa-3072", "slow").then(() => "ok", (e) => e.code);
console.log("generation:", await generation);
await ks.close();
console.log("closed");
await new Promise((resolve) => setTimeout(resolve, 3000));
console.log("alive");
`;

/** A keystore on `token`, logged in with its PIN. */
function openOn(
  token: TestToken,
  options: { poolSize: number; unwrapCacheSize?: number; operationTimeoutMs?: number },
): Promise<Pkcs11Keystore> {
  return Pkcs11Keystore.open({
    modulePath: token.modulePath,
    tokenLabel: token.label,
    pin: Secret.fromString(token.pin),
    ...options,
  });
}

describe("HSM keystore, second review", () => {
  let token: TestToken;
  let raceToken: TestToken;
  let keystoresRaceToken: TestToken;
  let twoRootsToken: TestToken;
  let slowToken: TestToken;
  let ks: Pkcs11Keystore;
  let inj: Injector;

  before(async () => {
    // SoftHSM only sees tokens that existed when the library was initialised.
    token = createTestToken("custos-review");
    raceToken = createTestToken("custos-review-race");
    keystoresRaceToken = createTestToken("custos-review-race2");
    twoRootsToken = createTestToken("custos-review-two-roots");
    slowToken = createTestToken("custos-review-slow");
    ks = await openOn(token, { poolSize: 2 });
    inj = new Injector(token);
    await ks.createRootKey();
  });

  after(async () => {
    // The last keystore to close finalizes the library for the whole process: close it last.
    await ks.close();
  });

  test("the session scan sees exactly the pool's sessions, none busy, while the keystore is idle", () => {
    const sessions = liveSessions(inj);
    assert.equal(sessions.length, 2);
    assert.deepEqual(
      sessions.filter((s) => s.active),
      [],
    );
  });

  test("failing and concurrent calls of every kind leave no operation active and no session discarded", async () => {
    const wrapped = await ks.generateWrappedAesKey();
    const ec = await ks.generateKeyPair("ecdsa-p256", "review-ec");
    const ed = await ks.generateKeyPair("ed25519", "review-ed");
    const rsa = await ks.generateKeyPair("rsa-3072", "review-rsa");
    const mac = await ks.ensureHmacKey("review-hmac");
    const aad = Buffer.from("aad");
    const good = await ks.encrypt(wrapped, Buffer.from("payload"), aad);
    const tampered = Buffer.from(good.ciphertext);
    tampered[0]! ^= 1;
    const before = liveSessions(inj);
    const data = Buffer.from("data");
    const calls: Array<() => Promise<unknown>> = [
      () => ks.encrypt(wrapped, data, aad),
      () => ks.decrypt(wrapped, good.iv, good.ciphertext, aad),
      () => ks.decrypt(wrapped, good.iv, tampered, aad),
      () => ks.decrypt(wrapped, good.iv, good.ciphertext, Buffer.from("other aad")),
      () => ks.sign(ec.ref, "ecdsa-p256-sha256", data),
      () => ks.sign(ed.ref, "ed25519", data),
      () => ks.sign(rsa.ref, "rsa-pss-sha256", data),
      () => ks.sign(ec.ref, "ed25519", data),
      () => ks.sign({ label: "review-ec", id: "00" }, "ecdsa-p256-sha256", data),
      () => ks.hmac(mac, data),
      () => ks.random(32),
      () => ks.publicKey(ed.ref),
      () => ks.findKeyPair("nothing here"),
      () => ks.findRootKey(),
    ];
    const outcomes = await Promise.allSettled(Array.from({ length: 140 }, (_, i) => calls[i % calls.length]!()));
    const codes = new Set(
      outcomes.flatMap((o) => (o.status === "rejected" ? [(o.reason as { code?: string }).code] : [])),
    );
    assert.deepEqual([...codes].sort(), ["decryption_failed", "invalid_request", "not_found"]);
    const afterwards = liveSessions(inj);
    assert.deepEqual(
      afterwards.filter((s) => s.active),
      [],
    );
    assert.deepEqual(
      afterwards.map((s) => s.handle),
      before.map((s) => s.handle),
      "a session was closed and replaced",
    );
    assert.equal(ks.health().state, "ok");
  });

  test("with no unwrap cache, no unwrapped key outlives its call, failed decryptions and foreign blobs included", async () => {
    const nocache = await openOn(token, { poolSize: 3, unwrapCacheSize: 0 });
    try {
      const baseline = unwrappedKeys(inj);
      const keys = await Promise.all(Array.from({ length: 6 }, () => nocache.generateWrappedAesKey()));
      const aad = Buffer.from("ctx");
      const jobs = Array.from({ length: 120 }, async (_, i) => {
        const k = keys[i % keys.length]!;
        const ct = await nocache.encrypt(k, Buffer.from(`m${i}`), aad);
        const wrongKey = keys[(i + 1) % keys.length]!;
        await assert.rejects(nocache.decrypt(wrongKey, ct.iv, ct.ciphertext, aad), rejectsWith("decryption_failed"));
        const foreign = Buffer.from(k);
        foreign[20]! ^= 1;
        await assert.rejects(nocache.decrypt(foreign, ct.iv, ct.ciphertext, aad), rejectsWith("decryption_failed"));
        assert.equal((await nocache.decrypt(k, ct.iv, ct.ciphertext, aad)).exposeText(), `m${i}`);
      });
      await Promise.all(jobs);
      assert.equal(unwrappedKeys(inj), baseline);
      assert.equal(nocache.health().state, "ok");
    } finally {
      await nocache.close();
    }
  });

  test("IVs never repeat across IV batches, concurrent calls and two keystores; node:crypto opens every ciphertext and refuses a changed AAD", async () => {
    const known = Buffer.alloc(32, 0x5a);
    const wrapped = wrapKnownKey(inj, known);
    const second = await openOn(token, { poolSize: 2 });
    try {
      const aad = Buffer.from("bound context");
      const results = await Promise.all(
        Array.from({ length: 1200 }, (_, i) => (i % 2 ? ks : second).encrypt(wrapped, Buffer.from(`#${i}`), aad)),
      );
      const ivs = new Set(results.map((r) => r.iv.toString("hex")));
      assert.equal(ivs.size, results.length, "an IV was used twice under one key");
      results.forEach((r, i) => {
        assert.equal(r.iv.length, 12);
        assert.equal(r.ciphertext.length, `#${i}`.length + 16);
        assert.equal(gcmOpen(known, r.iv, r.ciphertext, aad).toString(), `#${i}`);
      });
      const first = results[0]!;
      assert.throws(() => gcmOpen(known, first.iv, first.ciphertext, Buffer.from("bound contexT")));
    } finally {
      await second.close();
    }
  });

  test("the largest inputs the limits allow work (node:crypto agrees) and one byte more is payload_too_large", async () => {
    const known = Buffer.alloc(32, 0x17);
    const wrapped = wrapKnownKey(inj, known);
    const plaintext = Buffer.alloc(MIB, 0xab);
    const aad = Buffer.alloc(MIB, 0xcd);
    const ct = await ks.encrypt(wrapped, plaintext, aad);
    assert.ok(gcmOpen(known, ct.iv, ct.ciphertext, aad).equals(plaintext));
    const iv = Buffer.alloc(12, 1);
    const c = createCipheriv("aes-256-gcm", known, iv);
    c.setAAD(aad);
    const body = Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
    assert.ok((await ks.decrypt(wrapped, iv, body, aad)).expose().equals(plaintext));
    const tooBig = Buffer.alloc(MIB + 1);
    await assert.rejects(ks.encrypt(wrapped, Buffer.from("x"), tooBig), rejectsWith("payload_too_large"));
    await assert.rejects(ks.decrypt(wrapped, iv, body, tooBig), rejectsWith("payload_too_large"));
    await assert.rejects(
      ks.decrypt(wrapped, iv, Buffer.concat([body, Buffer.of(0)]), aad),
      rejectsWith("payload_too_large"),
    );

    const ed = await ks.generateKeyPair("ed25519", "review-big-ed");
    const rsa = await ks.generateKeyPair("rsa-3072", "review-big-rsa");
    const edKey = createPublicKey({ key: ed.publicKey, format: "der", type: "spki" });
    const rsaKey = createPublicKey({ key: rsa.publicKey, format: "der", type: "spki" });
    assert.ok(verify(null, plaintext, edKey, await ks.sign(ed.ref, "ed25519", plaintext)));
    const pss = { key: rsaKey, padding: cryptoConstants.RSA_PKCS1_PSS_PADDING, saltLength: 32 };
    assert.ok(verify("sha256", plaintext, pss, await ks.sign(rsa.ref, "rsa-pss-sha256", plaintext)));
    await assert.rejects(ks.sign(ed.ref, "ed25519", tooBig), rejectsWith("payload_too_large"));
    const mac = await ks.ensureHmacKey("review-hmac");
    assert.equal((await ks.hmac(mac, plaintext)).length, 32);
    assert.deepEqual(
      liveSessions(inj).filter((s) => s.active),
      [],
    );
  });

  test("concurrent createRootKey calls make one root key: the others are conflicts", async () => {
    const racer = await openOn(raceToken, { poolSize: 4 });
    try {
      const outcomes = await Promise.allSettled(Array.from({ length: 4 }, () => racer.createRootKey()));
      const roots = countObjects(new Injector(raceToken), [
        { type: A.CKA_CLASS, value: A.CKO_SECRET_KEY },
        { type: A.CKA_LABEL, value: "custos-root" },
        { type: A.CKA_TOKEN, value: true },
      ]);
      assert.equal(roots, 1, "root keys under the root label");
      assert.deepEqual(
        outcomes.map((o) => (o.status === "fulfilled" ? "created" : (o.reason as { code?: string }).code)).sort(),
        ["conflict", "conflict", "conflict", "created"],
      );
    } finally {
      await racer.close();
    }
  });

  test("keystores racing to create the root key (as processes would) leave one: the one created, the rest conflicts", async () => {
    // Before token keys were copied onto the token on the main thread, this failed about
    // 4 times in 1,000 on a busy machine: two callers told the one root key was theirs,
    // because SoftHSM had dropped the second creator's key from the process's view.
    const racers = await Promise.all(Array.from({ length: 4 }, () => openOn(keystoresRaceToken, { poolSize: 1 })));
    try {
      const outcomes = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => racers[i % 4]!.createRootKey()));
      const roots = countObjects(new Injector(keystoresRaceToken), [
        { type: A.CKA_CLASS, value: A.CKO_SECRET_KEY },
        { type: A.CKA_LABEL, value: "custos-root" },
        { type: A.CKA_TOKEN, value: true },
      ]);
      assert.equal(roots, 1, "root keys under the root label");
      const created = outcomes.flatMap((o) => (o.status === "fulfilled" ? [o.value] : []));
      assert.equal(created.length, 1);
      for (const o of outcomes) if (o.status === "rejected") rejectsWith("conflict")(o.reason);
      for (const racer of racers) assert.deepEqual(await racer.findRootKey(), created[0]);
    } finally {
      for (const racer of racers) await racer.close();
    }
  });

  test("a token left with two root keys (two processes made them at once) is refused by findRootKey, naming both", async () => {
    const twice = await openOn(twoRootsToken, { poolSize: 1 });
    try {
      const first = await twice.createRootKey();
      // The other process's key: generated on the token under the same label, as createRootKey makes one.
      const secondId = Buffer.from("0123456789abcdef0123456789abcdef", "hex");
      const other = new Injector(twoRootsToken);
      other.withSession((s) =>
        generateKeyNested(
          twoRootsToken.modulePath,
          s,
          { mechanism: A.CKM_AES_KEY_GEN },
          rootKeyTemplate("custos-root", secondId, "token"),
        ),
      );
      await assert.rejects(twice.findRootKey(), (e) => {
        rejectsWith("root_key_mismatch")(e);
        const message = (e as Error).message;
        assert.ok(message.includes(first.id) && message.includes(secondId.toString("hex")), message);
        return true;
      });
    } finally {
      await twice.close();
    }
  });

  test("key pairs made while another keystore searches the token are all made, and all found", async () => {
    // SoftHSM re-indexes a token without holding its lock. When key pairs were generated
    // straight onto the token on the thread pool, a search on the main thread overlapping
    // a creation failed it (CKR_TEMPLATE_INCONSISTENT, in every run of this test) or
    // dropped the new key from the process's view.
    const searcher = await openOn(token, { poolSize: 1 });
    // 200 generations queue for two sessions, each behind searches of a growing token:
    // the last wait seconds, past the default deadline on a slow machine. This test is
    // about what is made, not how fast, so its maker waits as long as it takes.
    const maker = await openOn(token, { poolSize: 2, operationTimeoutMs: 120_000 });
    let searching = true;
    let searches = 0;
    const searchLoop = (async () => {
      while (searching) {
        await searcher.findKeyPair(`review-searched-${searches++ % 20}`);
        // A search answers without a turn of the event loop; give the pool's completions one.
        await new Promise((resolve) => setImmediate(resolve));
      }
    })();
    try {
      const labels = Array.from({ length: 200 }, (_, i) => `review-searched-${i}`);
      const made = await Promise.all(labels.map((label) => maker.generateKeyPair("ecdsa-p256", label)));
      searching = false;
      await searchLoop;
      assert.ok(searches > 10, `the searcher ran alongside (${searches} searches)`);
      for (const [i, label] of labels.entries()) {
        assert.deepEqual((await ks.findKeyPair(label))?.ref, made[i]?.ref, label);
        assert.deepEqual((await searcher.findKeyPair(label))?.ref, made[i]?.ref, label);
      }
    } finally {
      searching = false;
      await searchLoop;
      await searcher.close();
      await maker.close();
    }
  });

  test("two concurrent ensureKeyPair calls under one label leave one pair and agree on it", async () => {
    const [a, b] = await Promise.all([
      ensureKeyPair(ks, "ecdsa-p256", "review-ensure"),
      ensureKeyPair(ks, "ecdsa-p256", "review-ensure"),
    ]);
    const privateKeys = countObjects(inj, [
      { type: A.CKA_CLASS, value: A.CKO_PRIVATE_KEY },
      { type: A.CKA_LABEL, value: "review-ensure" },
      { type: A.CKA_TOKEN, value: true },
    ]);
    assert.equal(privateKeys, 1);
    assert.deepEqual(a.ref, b.ref);
  });

  describe("a call that runs past its deadline", () => {
    let slow: Pkcs11Keystore;
    let slowInj: Injector;
    const pairObjects = (label: string): number =>
      countObjects(slowInj, [
        { type: A.CKA_LABEL, value: label },
        { type: A.CKA_TOKEN, value: true },
      ]);
    /**
     * Waits (bounded) until the pool's one session is free again: a call abandoned by its
     * caller holds it until the module returns.
     */
    async function idle(): Promise<void> {
      await eventually(() => slow.random(1));
    }

    /**
     * `op` on the slow keystore, tried again while it answers hsm_unavailable (bounded): the 50 ms
     * deadline is there for the RSA generation to miss, and a busy machine can make other calls miss it too.
     */
    async function eventually<T>(op: () => Promise<T>): Promise<T> {
      const until = Date.now() + 60_000;
      for (;;) {
        try {
          return await op();
        } catch (e) {
          assert.ok(isCustosError(e, "hsm_unavailable") && Date.now() < until, String(e));
        }
      }
    }

    before(async () => {
      const open = (deadline: { operationTimeoutMs?: number }) => openOn(slowToken, { poolSize: 1, ...deadline });
      // The root key is made under the default deadline (a token object written to disk can take tens of ms).
      const setup = await open({});
      try {
        await setup.createRootKey();
      } finally {
        await setup.close();
      }
      slow = await open({ operationTimeoutMs: 50 });
      slowInj = new Injector(slowToken);
    });

    after(async () => {
      await slow.close();
    });

    test("fails with hsm_unavailable, so does a call queued behind it, and its session comes back usable", async () => {
      await idle();
      const [generation, queued] = await Promise.allSettled([
        slow.generateKeyPair("rsa-3072", "review-slow-1"),
        slow.random(16),
      ]);
      for (const outcome of [generation, queued]) {
        assert.equal(outcome.status, "rejected");
        rejectsWith("hsm_unavailable")(outcome.reason);
      }
      await idle();
      const sessions = liveSessions(slowInj);
      assert.equal(sessions.length, 1);
      assert.equal(sessions[0]?.active, false);
      const wrapped = await eventually(() => slow.generateWrappedAesKey());
      const ct = await eventually(() => slow.encrypt(wrapped, Buffer.from("after the deadline"), Buffer.alloc(0)));
      assert.equal(
        (await eventually(() => slow.decrypt(wrapped, ct.iv, ct.ciphertext, Buffer.alloc(0)))).exposeText(),
        "after the deadline",
      );
      assert.equal(slow.health().state, "ok");
    });

    test("a key pair the caller was told was not made (hsm_unavailable) is not left on the token", async () => {
      await idle();
      const tokenObjects = countObjects(slowInj, [{ type: A.CKA_TOKEN, value: true }]);
      await assert.rejects(slow.generateKeyPair("rsa-3072", "review-slow-2"), rejectsWith("hsm_unavailable"));
      await idle();
      assert.equal(pairObjects("review-slow-2"), 0);
      assert.equal(countObjects(slowInj, [{ type: A.CKA_TOKEN, value: true }]), tokenObjects);
      assert.equal(slow.health().state, "ok");
    });
  });

  test("close() while a call past its deadline is still inside the module does not crash the process", () => {
    const { out, failure } = runInChild(CLOSE_DURING_SLOW_CALL, [
      "../../src/hsm/pkcs11/index.ts",
      "../../src/secret/index.ts",
      "../helpers/softhsm.ts",
    ]);
    assert.match(out, /generation: hsm_unavailable/);
    assert.equal(failure, "");
    assert.match(out, /closed\nalive/);
  });

  test("a signing key destroyed by another keystore on the token is not_found here, without tearing down this keystore's sessions", async () => {
    const pair = await ks.generateKeyPair("ecdsa-p256", "review-shared");
    await Promise.all([1, 2, 3, 4].map(() => ks.sign(pair.ref, "ecdsa-p256-sha256", Buffer.from("x"))));
    const other = await openOn(token, { poolSize: 1 });
    try {
      await other.destroyKeyPair(pair.ref);
    } finally {
      await other.close();
    }
    const before = liveSessions(inj).map((s) => s.handle);
    assert.equal(ks.health().recoveredAt, undefined);
    // Cached handles (a session copy for a key made modifiable) are re-checked every second; until then they may still sign.
    const until = Date.now() + 10_000;
    for (;;) {
      const outcome = await ks.sign(pair.ref, "ecdsa-p256-sha256", Buffer.from("x")).then(
        () => "signed",
        (e: unknown) => (isCustosError(e) ? e.code : String(e)),
      );
      if (outcome === "not_found") break;
      assert.equal(outcome, "signed");
      assert.ok(Date.now() < until, "a destroyed key still signed after 10 s");
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(
      liveSessions(inj).map((s) => s.handle),
      before,
      "the pool's sessions were closed and reopened",
    );
    assert.equal(ks.health().recoveredAt, undefined, "a recovery was run");
  });

  test("after close(), every call is a clear hsm_unavailable, health is not ok, closing again is harmless, and the PIN shows nowhere", async () => {
    const pin = token.pin;
    const doomed = await openOn(token, { poolSize: 1 });
    const wrapped = await doomed.generateWrappedAesKey();
    const pair = await doomed.generateKeyPair("ecdsa-p256", "review-closed");
    const dump = (x: unknown): string => `${inspect(x, { depth: null, showHidden: true })}\n${JSON.stringify(x)}`;
    assert.ok(!dump(doomed).includes(pin));
    await doomed.close();
    await doomed.close();
    const k: Keystore = doomed;
    const calls: Array<() => Promise<unknown>> = [
      () => k.createRootKey(),
      () => k.findRootKey(),
      () => k.generateWrappedAesKey(),
      () => k.encrypt(wrapped, Buffer.from("x"), Buffer.alloc(0)),
      () => k.decrypt(wrapped, Buffer.alloc(12), Buffer.alloc(32), Buffer.alloc(0)),
      () => k.generateKeyPair("ecdsa-p256", "review-closed-2"),
      () => k.findKeyPair("review-closed"),
      () => k.sign(pair.ref, "ecdsa-p256-sha256", Buffer.from("x")),
      () => k.publicKey(pair.ref),
      () => k.destroyKeyPair(pair.ref),
      () => k.ensureHmacKey("review-closed-hmac"),
      () => k.hmac({ label: "review-hmac", id: "00" }, Buffer.from("x")),
      () => k.random(8),
    ];
    for (const call of calls) {
      await assert.rejects(call(), (e: unknown) => {
        assert.ok(isCustosError(e, "hsm_unavailable"), dump(e));
        assert.match(e.message, /closed/);
        assert.ok(!dump(e).includes(pin));
        return true;
      });
    }
    const health = doomed.health();
    assert.notEqual(health.state, "ok");
    assert.equal(health.sessions.open, 0);
    assert.ok(!dump(health).includes(pin));
    // The main keystore is untouched by another one closing.
    assert.equal((await ks.random(8)).length, 8);
  });
});
