import assert from "node:assert/strict";
import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  createPublicKey,
  constants as cryptoConstants,
  verify,
} from "node:crypto";
import { after, before, describe, test } from "node:test";
import pkcs11js, { type Template } from "pkcs11js";
import { isCustosError } from "../../src/errors/index.js";
import { Pkcs11Keystore } from "../../src/hsm/pkcs11/index.js";
import { keyPairTemplates } from "../../src/hsm/pkcs11/templates.js";
import { Secret } from "../../src/secret/index.js";
import { createTestToken, type TestToken } from "../helpers/softhsm.js";
import { Injector } from "./injector.js";

function rejectsWith(code: string): (e: unknown) => boolean {
  return (e) => {
    assert.ok(isCustosError(e), `expected CustosError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  };
}

describe("Pkcs11Keystore against SoftHSM", () => {
  let token: TestToken;
  let ks: Pkcs11Keystore;
  let other: TestToken;
  let inj: Injector;

  before(async () => {
    token = createTestToken("custos-ks");
    // SoftHSM only sees tokens that existed when the library was initialised.
    other = createTestToken("custos-ks2");
    ks = await Pkcs11Keystore.open({
      modulePath: token.modulePath,
      tokenLabel: token.label,
      pin: Secret.fromString(token.pin),
      operationTimeoutMs: 3000,
    });
    inj = new Injector(token);
  });

  after(async () => {
    await ks.close();
  });

  test("data objects: absent, written, read back, replaced; private token objects, a planted public one ignored", async () => {
    const label = "custos-test-data";
    assert.deepEqual(await ks.readData(label), []);
    // Someone without the PIN may create public objects: one under our label must not be read as ours.
    inj.withSession((s) =>
      inj.p.C_CreateObject(s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: false },
        { type: pkcs11js.CKA_LABEL, value: label },
        { type: pkcs11js.CKA_VALUE, value: Buffer.from("planted") },
      ]),
    );
    assert.deepEqual(await ks.readData(label), []);
    await ks.writeData(label, Buffer.from("first"));
    assert.deepEqual(await ks.readData(label), [Buffer.from("first")]);
    const big = Buffer.alloc(64 * 1024, 7);
    await Promise.all([ks.writeData(label, Buffer.from("second")), ks.writeData(label, big)]);
    assert.deepEqual(await ks.readData(label), [big], "the last write is kept, alone");
    const ours = inj.withSession((s) => {
      inj.p.C_FindObjectsInit(s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
        { type: pkcs11js.CKA_LABEL, value: label },
        { type: pkcs11js.CKA_PRIVATE, value: true },
      ]);
      const found = inj.p.C_FindObjects(s, 10);
      inj.p.C_FindObjectsFinal(s);
      return found.map((h) => inj.p.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_TOKEN }])[0]?.value);
    });
    assert.deepEqual(ours, [Buffer.from([1])], "one private token object, however many writes");
    await assert.rejects(ks.writeData(label, Buffer.alloc(64 * 1024 + 1)), rejectsWith("invalid_request"));
    await assert.rejects(ks.writeData("", Buffer.from("x")), rejectsWith("invalid_request"));
    await assert.rejects(ks.readData("bad\nlabel"), rejectsWith("invalid_request"));
  });

  test("health is ok with a full pool", () => {
    const h = ks.health();
    assert.equal(h.state, "ok");
    assert.equal(h.token, token.label);
    assert.deepEqual(h.sessions, { open: 4, size: 4 });
  });

  test("no root key until created; create is then a conflict; find is stable", async () => {
    assert.equal(await ks.findRootKey(), undefined);
    await assert.rejects(ks.generateWrappedAesKey(), rejectsWith("hsm_unavailable"));
    const created = await ks.createRootKey();
    assert.equal(created.label, "custos-root");
    assert.match(created.id, /^[0-9a-f]{32}$/);
    assert.match(created.checkValue, /^[0-9a-f]{64}$/);
    await assert.rejects(ks.createRootKey(), rejectsWith("conflict"));
    assert.deepEqual(await ks.findRootKey(), created);
    assert.deepEqual(await ks.findRootKey(), created);
  });

  test("the root key is sensitive, non-extractable, wrap/unwrap only", () => {
    inj.withSession((s) => {
      const p = inj.p;
      p.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_LABEL, value: "custos-root" }]);
      const [h] = p.C_FindObjects(s, 2);
      p.C_FindObjectsFinal(s);
      assert.ok(h);
      const attrs = p.C_GetAttributeValue(s, h, [
        { type: pkcs11js.CKA_TOKEN },
        { type: pkcs11js.CKA_SENSITIVE },
        { type: pkcs11js.CKA_EXTRACTABLE },
        { type: pkcs11js.CKA_WRAP },
        { type: pkcs11js.CKA_UNWRAP },
        { type: pkcs11js.CKA_ENCRYPT },
        { type: pkcs11js.CKA_DECRYPT },
        { type: pkcs11js.CKA_SIGN },
        { type: pkcs11js.CKA_VALUE_LEN },
      ]);
      const flags = attrs.slice(0, 8).map((a) => a.value[0]);
      assert.deepEqual(flags, [1, 1, 0, 1, 1, 0, 0, 0]);
      assert.equal(attrs[8]?.value.readUInt32LE(0), 32);
    });
  });

  test("a root key made before root keys were hardened is still used, and reported as not hardened", async () => {
    assert.equal((await ks.findRootKey())?.hardened, true, "a root key made now is hardened");
    inj.makeLegacyRootKey("legacy-root", Buffer.from("00112233445566778899aabbccddeeff", "hex"));
    const legacy = await Pkcs11Keystore.open({
      modulePath: token.modulePath,
      tokenLabel: token.label,
      pin: Secret.fromString(token.pin),
      rootKeyLabel: "legacy-root",
    });
    try {
      const found = await legacy.findRootKey();
      assert.equal(found?.id, "00112233445566778899aabbccddeeff");
      assert.equal(found?.hardened, false);
      const wrapped = await legacy.generateWrappedAesKey();
      const aad = Buffer.from("aad");
      const sealed = await legacy.encrypt(wrapped, Buffer.from("still works"), aad);
      const opened = await legacy.decrypt(wrapped, sealed.iv, sealed.ciphertext, aad);
      assert.equal(opened.expose().toString(), "still works");
      opened.destroy();
    } finally {
      await legacy.close();
    }
  });

  test("the check value differs for another token's root key", async () => {
    const ks2 = await Pkcs11Keystore.open({
      modulePath: other.modulePath,
      tokenLabel: other.label,
      pin: Secret.fromString(other.pin),
    });
    try {
      const a = await ks.findRootKey();
      const b = await ks2.createRootKey();
      assert.ok(a);
      assert.notEqual(a.checkValue, b.checkValue);
      assert.deepEqual(await ks2.findRootKey(), b);
    } finally {
      await ks2.close();
    }
  });

  test("wrapped AES keys are 40 bytes, distinct, and GCM round-trips with AAD", async () => {
    const k1 = await ks.generateWrappedAesKey();
    const k2 = await ks.generateWrappedAesKey();
    assert.equal(k1.length, 40);
    assert.notDeepEqual(k1, k2);
    const pt = Buffer.from("the data key");
    const aad = Buffer.from("context");
    const ct = await ks.encrypt(k1, pt, aad);
    assert.equal(ct.iv.length, 12);
    assert.equal(ct.ciphertext.length, pt.length + 16);
    const again = await ks.encrypt(k1, pt, aad);
    assert.notDeepEqual(again.iv, ct.iv);
    const back = await ks.decrypt(k1, ct.iv, ct.ciphertext, aad);
    assert.deepEqual(back.expose(), pt);
    assert.equal(String(back), "[REDACTED]");
    // Empty AAD works too.
    const noAad = await ks.encrypt(k1, pt, new Uint8Array(0));
    assert.deepEqual((await ks.decrypt(k1, noAad.iv, noAad.ciphertext, Buffer.alloc(0))).expose(), pt);
  });

  test("every tampering is decryption_failed", async () => {
    const k1 = await ks.generateWrappedAesKey();
    const k2 = await ks.generateWrappedAesKey();
    const aad = Buffer.from("ctx");
    const { iv, ciphertext } = await ks.encrypt(k1, Buffer.from("secret payload"), aad);
    const flipped = Buffer.from(ciphertext);
    flipped[3]! ^= 1;
    const flippedTag = Buffer.from(ciphertext);
    flippedTag[flippedTag.length - 1]! ^= 0x80;
    const badIv = Buffer.from(iv);
    badIv[0]! ^= 1;
    const badWrap = Buffer.from(k1);
    badWrap[10]! ^= 1;
    const cases: Array<() => Promise<unknown>> = [
      () => ks.decrypt(k1, iv, ciphertext, Buffer.from("ctX")),
      () => ks.decrypt(k1, iv, ciphertext, Buffer.alloc(0)),
      () => ks.decrypt(k1, iv, flipped, aad),
      () => ks.decrypt(k1, iv, flippedTag, aad),
      () => ks.decrypt(k1, badIv, ciphertext, aad),
      () => ks.decrypt(k1, iv, ciphertext.subarray(0, ciphertext.length - 1), aad),
      () => ks.decrypt(k1, iv, ciphertext.subarray(0, 16), aad),
      () => ks.decrypt(k1, iv, ciphertext.subarray(0, 5), aad),
      () => ks.decrypt(k1, iv.subarray(0, 11), ciphertext, aad),
      () => ks.decrypt(k2, iv, ciphertext, aad),
      () => ks.decrypt(badWrap, iv, ciphertext, aad),
      () => ks.decrypt(k1.subarray(0, 32), iv, ciphertext, aad),
    ];
    for (const c of cases) await assert.rejects(c(), rejectsWith("decryption_failed"));
    // None of that left an operation active on a pooled session.
    const ok = await ks.decrypt(k1, iv, ciphertext, aad);
    assert.equal(ok.exposeText(), "secret payload");
    assert.equal(ks.health().state, "ok");
  });

  test("encrypt validates its inputs", async () => {
    const k = await ks.generateWrappedAesKey();
    await assert.rejects(
      ks.encrypt(k.subarray(0, 39), Buffer.from("x"), Buffer.alloc(0)),
      rejectsWith("invalid_request"),
    );
    await assert.rejects(ks.encrypt(k, Buffer.alloc(0), Buffer.alloc(0)), rejectsWith("invalid_request"));
    await assert.rejects(
      ks.encrypt(k, Buffer.alloc(1024 * 1024 + 1), Buffer.alloc(0)),
      rejectsWith("payload_too_large"),
    );
    const bad = Buffer.from(k);
    bad[0]! ^= 1;
    await assert.rejects(ks.encrypt(bad, Buffer.from("x"), Buffer.alloc(0)), rejectsWith("invalid_request"));
  });

  test("GCM is standard AES-256-GCM: cross-checked with node:crypto through a known key", async () => {
    // Oracle: a known AES key, wrapped by the root key from a second handle, then used
    // through the keystore like any wrapped key.
    const known = Buffer.alloc(32);
    for (let i = 0; i < 32; i++) known[i] = i * 7 + 3;
    const wrapped = inj.wrapKnownKey(known);
    assert.equal(wrapped.length, 40);
    const aad = Buffer.from("associated");
    const pt = Buffer.from("plaintext checked by node:crypto, longer than one block");
    const ct = await ks.encrypt(wrapped, pt, aad);
    const d = createDecipheriv("aes-256-gcm", known, ct.iv);
    d.setAAD(aad);
    d.setAuthTag(ct.ciphertext.subarray(-16));
    const opened = Buffer.concat([d.update(ct.ciphertext.subarray(0, -16)), d.final()]);
    assert.deepEqual(opened, pt);
    // And the other way: node encrypts, the keystore decrypts.
    const iv = Buffer.from("0123456789ab");
    const c = createCipheriv("aes-256-gcm", known, iv);
    c.setAAD(aad);
    const body = Buffer.concat([c.update(pt), c.final(), c.getAuthTag()]);
    assert.deepEqual((await ks.decrypt(wrapped, iv, body, aad)).expose(), pt);
  });

  test("ECDSA P-256, Ed25519 and RSA-3072 signatures verify with node:crypto", async () => {
    const data = Buffer.from("to be signed");
    const ec = await ks.generateKeyPair("ecdsa-p256", "sig-ec");
    const ecKey = createPublicKey({ key: ec.publicKey, format: "der", type: "spki" });
    assert.equal(ecKey.asymmetricKeyType, "ec");
    assert.equal(ecKey.asymmetricKeyDetails?.namedCurve, "prime256v1");
    const ecSig = await ks.sign(ec.ref, "ecdsa-p256-sha256", data);
    assert.equal(ecSig.length, 64);
    assert.ok(verify("sha256", data, { key: ecKey, dsaEncoding: "ieee-p1363" }, ecSig));
    assert.ok(!verify("sha256", Buffer.from("other"), { key: ecKey, dsaEncoding: "ieee-p1363" }, ecSig));

    const ed = await ks.generateKeyPair("ed25519", "sig-ed");
    const edKey = createPublicKey({ key: ed.publicKey, format: "der", type: "spki" });
    assert.equal(edKey.asymmetricKeyType, "ed25519");
    const edSig = await ks.sign(ed.ref, "ed25519", data);
    assert.equal(edSig.length, 64);
    assert.ok(verify(null, data, edKey, edSig));

    const rsa = await ks.generateKeyPair("rsa-3072", "sig-rsa");
    const rsaKey = createPublicKey({ key: rsa.publicKey, format: "der", type: "spki" });
    assert.equal(rsaKey.asymmetricKeyDetails?.modulusLength, 3072);
    const pkcs1 = await ks.sign(rsa.ref, "rsa-pkcs1-sha256", data);
    assert.ok(verify("sha256", data, rsaKey, pkcs1));
    const pss = await ks.sign(rsa.ref, "rsa-pss-sha256", data);
    assert.ok(
      verify("sha256", data, { key: rsaKey, padding: cryptoConstants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, pss),
    );

    assert.deepEqual(await ks.publicKey(ec.ref), ec.publicKey);
    await assert.rejects(ks.sign(ec.ref, "ed25519", data), rejectsWith("invalid_request"));
    await assert.rejects(ks.sign(rsa.ref, "ecdsa-p256-sha256", data), rejectsWith("invalid_request"));
    await assert.rejects(ks.sign(ed.ref, "rsa-pss-sha256", data), rejectsWith("invalid_request"));
  });

  test("an empty message signs under every scheme, as an empty Buffer or Uint8Array, and node:crypto verifies it", async () => {
    // Node gives an empty Buffer no memory; passed as is, the module saw a NULL pData (CKR_ARGUMENTS_BAD).
    const empty = Buffer.alloc(0);
    const ec = await ks.generateKeyPair("ecdsa-p256", "sig-empty-ec");
    const ed = await ks.generateKeyPair("ed25519", "sig-empty-ed");
    const rsa = await ks.generateKeyPair("rsa-3072", "sig-empty-rsa");
    const keyOf = (spki: Buffer) => createPublicKey({ key: spki, format: "der", type: "spki" });
    const pss = { padding: cryptoConstants.RSA_PKCS1_PSS_PADDING, saltLength: 32 };
    for (const message of [empty, new Uint8Array(0)]) {
      const ecSig = await ks.sign(ec.ref, "ecdsa-p256-sha256", message);
      assert.ok(verify("sha256", empty, { key: keyOf(ec.publicKey), dsaEncoding: "ieee-p1363" }, ecSig));
      const edSig = await ks.sign(ed.ref, "ed25519", message);
      assert.ok(verify(null, empty, keyOf(ed.publicKey), edSig), "ed25519");
      assert.ok(!verify(null, Buffer.of(0), keyOf(ed.publicKey), edSig), "ed25519 over one zero byte");
      const pkcs1 = await ks.sign(rsa.ref, "rsa-pkcs1-sha256", message);
      assert.ok(verify("sha256", empty, keyOf(rsa.publicKey), pkcs1), "rsa-pkcs1-sha256");
      const pssSig = await ks.sign(rsa.ref, "rsa-pss-sha256", message);
      assert.ok(verify("sha256", empty, { key: keyOf(rsa.publicKey), ...pss }, pssSig), "rsa-pss-sha256");
    }
    assert.equal(ks.health().state, "ok");
  });

  /** [CKA_TOKEN, CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_MODIFIABLE] of every private key under `label`, token objects first. */
  function privateKeysLabelled(label: string): number[][] {
    return inj.withSession((s) => {
      const p = inj.p;
      p.C_FindObjectsInit(s, [
        { type: pkcs11js.CKA_LABEL, value: label },
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
      ]);
      const handles = p.C_FindObjects(s, 100);
      p.C_FindObjectsFinal(s);
      return handles
        .map((h) =>
          p
            .C_GetAttributeValue(s, h, [
              { type: pkcs11js.CKA_TOKEN },
              { type: pkcs11js.CKA_SENSITIVE },
              { type: pkcs11js.CKA_EXTRACTABLE },
              { type: pkcs11js.CKA_MODIFIABLE },
            ])
            .map((a) => a.value[0] ?? -1),
        )
        .sort((a, b) => (b[0] ?? 0) - (a[0] ?? 0));
    });
  }

  test("signing private keys are non-extractable, sensitive and unmodifiable token objects, used without session copies", () => {
    // Signing above used them; an unmodifiable key can't be copied into a session.
    assert.deepEqual(privateKeysLabelled("sig-ec"), [[1, 1, 0, 0]]);
  });

  test("a modifiable signing key (made before keys were made unmodifiable) is used through session copies that keep its protections", async () => {
    // Made as an older Custos made it: straight onto the token, modifiable.
    const id = Buffer.from("0123456789abcdef", "hex");
    const templates = keyPairTemplates("ecdsa-p256", "legacy-ec", id, "session");
    const onToken = (t: Template): Template =>
      t.map((a) => (a.type === pkcs11js.CKA_TOKEN ? { type: a.type, value: true } : a));
    inj.withSession((s) =>
      inj.p.C_GenerateKeyPair(s, templates.mechanism, onToken(templates.publicKey), onToken(templates.privateKey)),
    );
    const pair = await ks.findKeyPair("legacy-ec");
    assert.ok(pair, "the older key is found");
    const signatures = await Promise.all(
      Array.from({ length: 8 }, () => ks.sign(pair.ref, "ecdsa-p256-sha256", Buffer.from("x"))),
    );
    for (const signature of signatures) {
      assert.ok(
        verify(
          "sha256",
          Buffer.from("x"),
          { key: createPublicKey({ key: pair.publicKey, format: "der", type: "spki" }), dsaEncoding: "ieee-p1363" },
          signature,
        ),
      );
    }
    const [original, ...copies] = privateKeysLabelled("legacy-ec");
    assert.deepEqual(original, [1, 1, 0, 1]);
    assert.ok(copies.length >= 1, "signing made a session copy");
    for (const copy of copies) assert.deepEqual(copy, [0, 1, 0, 1]);
    await ks.destroyKeyPair(pair.ref);
    assert.deepEqual(privateKeysLabelled("legacy-ec"), [], "the copies went with the key");
  });

  test("destroyKeyPair removes both halves and is idempotent", async () => {
    const pair = await ks.generateKeyPair("ecdsa-p256", "doomed");
    await Promise.all(Array.from({ length: 8 }, () => ks.sign(pair.ref, "ecdsa-p256-sha256", Buffer.from("x"))));
    assert.equal(privateKeysLabelled("doomed").length, 1);
    await ks.destroyKeyPair(pair.ref);
    assert.deepEqual(privateKeysLabelled("doomed"), []);
    await ks.destroyKeyPair(pair.ref);
    await assert.rejects(ks.publicKey(pair.ref), rejectsWith("not_found"));
    await assert.rejects(ks.sign(pair.ref, "ecdsa-p256-sha256", Buffer.from("x")), rejectsWith("not_found"));
    await assert.rejects(ks.publicKey({ label: "doomed", id: "zz" }), rejectsWith("invalid_request"));
  });

  test("findKeyPair finds a stored pair by label, public key included, and nothing under an unused label", async () => {
    assert.equal(await ks.findKeyPair("kept-pair"), undefined);
    const made = await ks.generateKeyPair("ecdsa-p256", "kept-pair");
    const found = await ks.findKeyPair("kept-pair");
    assert.deepEqual(found?.ref, made.ref);
    assert.ok(found?.publicKey.equals(made.publicKey));
    await ks.destroyKeyPair(made.ref);
    assert.equal(await ks.findKeyPair("kept-pair"), undefined);
  });

  test("HMAC: ensure is idempotent, MACs are deterministic and keyed", async () => {
    const a = await ks.ensureHmacKey("audit-hmac");
    const [a2, a3] = await Promise.all([ks.ensureHmacKey("audit-hmac"), ks.ensureHmacKey("audit-hmac")]);
    assert.deepEqual(a2, a);
    assert.deepEqual(a3, a);
    const b = await ks.ensureHmacKey("audit-hmac-2");
    assert.notEqual(a.id, b.id);
    const m1 = await ks.hmac(a, Buffer.from("value"));
    assert.equal(m1.length, 32);
    assert.deepEqual(await ks.hmac(a, Buffer.from("value")), m1);
    assert.notDeepEqual(await ks.hmac(a, Buffer.from("valuf")), m1);
    assert.notDeepEqual(await ks.hmac(b, Buffer.from("value")), m1);
  });

  /**
   * An HMAC key the token generates (the keystore adopts no other), left readable so
   * that node:crypto can be the oracle; its value, read from a second handle.
   */
  function readableHmacKey(label: string, id: Buffer, extra: pkcs11js.Template = []): Buffer {
    return inj.withSession((s) => {
      const handle = inj.p.C_GenerateKey(s, { mechanism: pkcs11js.CKM_GENERIC_SECRET_KEY_GEN }, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_GENERIC_SECRET },
        { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_SENSITIVE, value: false },
        { type: pkcs11js.CKA_EXTRACTABLE, value: true },
        { type: pkcs11js.CKA_LABEL, value: label },
        { type: pkcs11js.CKA_ID, value: id },
        { type: pkcs11js.CKA_SIGN, value: true },
        ...extra,
      ]);
      const [value] = inj.p.C_GetAttributeValue(s, handle, [{ type: pkcs11js.CKA_VALUE }]);
      return Buffer.from(value?.value ?? []);
    });
  }

  test("HMAC matches node:crypto for a known key (read from a second handle)", async () => {
    const id = Buffer.from("a1b2c3d4", "hex");
    const key = readableHmacKey("hmac-oracle", id);
    assert.equal(key.length, 32);
    const data = Buffer.from("audit me");
    const mac = await ks.hmac({ label: "hmac-oracle", id: "a1b2c3d4" }, data);
    assert.deepEqual(mac, createHmac("sha256", key).update(data).digest());
  });

  test("a key the HSM won't copy (CKA_COPYABLE false) is used as the token object itself", async () => {
    const id = Buffer.from("c0ffee01", "hex");
    const key = readableHmacKey("hmac-uncopyable", id, [{ type: pkcs11js.CKA_COPYABLE, value: false }]);
    const data = Buffer.from("audit me too");
    const macs = await Promise.all(
      Array.from({ length: 8 }, () => ks.hmac({ label: "hmac-uncopyable", id: "c0ffee01" }, data)),
    );
    for (const mac of macs) assert.deepEqual(mac, createHmac("sha256", key).update(data).digest());
    const copies = inj.withSession((s) => {
      inj.p.C_FindObjectsInit(s, [
        { type: pkcs11js.CKA_LABEL, value: "hmac-uncopyable" },
        { type: pkcs11js.CKA_TOKEN, value: false },
      ]);
      const found = inj.p.C_FindObjects(s, 10);
      inj.p.C_FindObjectsFinal(s);
      return found.length;
    });
    assert.equal(copies, 0);
    assert.equal(ks.health().state, "ok");
  });

  test("random: lengths 1..1024, other lengths rejected", async () => {
    assert.equal((await ks.random(1)).length, 1);
    const r = await ks.random(1024);
    assert.equal(r.length, 1024);
    assert.notDeepEqual(r, await ks.random(1024));
    for (const n of [0, -1, 1025, 1.5, Number.NaN]) await assert.rejects(ks.random(n), rejectsWith("invalid_request"));
  });

  test("many parallel requests over the pool, with a small unwrap cache", async () => {
    const countSessionKeys = (): number =>
      inj.withSession((s) => {
        inj.p.C_FindObjectsInit(s, [
          { type: pkcs11js.CKA_TOKEN, value: false },
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
          // Unwrapped keys encrypt; the root key's session copies only wrap and unwrap.
          { type: pkcs11js.CKA_ENCRYPT, value: true },
        ]);
        const found = inj.p.C_FindObjects(s, 1000);
        inj.p.C_FindObjectsFinal(s);
        return found.length;
      });
    const baseline = countSessionKeys();
    const small = await Pkcs11Keystore.open({
      modulePath: token.modulePath,
      tokenLabel: token.label,
      pin: Secret.fromString(token.pin),
      poolSize: 3,
      unwrapCacheSize: 2,
      // The main keystore may run small calls inline; this one covers the async path.
      inlineFastCalls: false,
    });
    try {
      const keys = await Promise.all(Array.from({ length: 5 }, () => small.generateWrappedAesKey()));
      const jobs = Array.from({ length: 300 }, async (_, i) => {
        const k = keys[i % keys.length]!;
        const pt = Buffer.from(`message ${i}`);
        const aad = Buffer.from(`aad ${i}`);
        const ct = await small.encrypt(k, pt, aad);
        const back = await small.decrypt(k, ct.iv, ct.ciphertext, aad);
        return back.expose().equals(pt);
      });
      const results = await Promise.all(jobs);
      assert.equal(results.filter(Boolean).length, 300);
      assert.equal(small.health().state, "ok");
      // Evicted session objects were destroyed: at most cache-size unwrapped keys remain.
      const added = countSessionKeys() - baseline;
      assert.ok(added >= 1 && added <= 2, `unwrapped keys left: ${added}`);
    } finally {
      await small.close();
    }
  });

  test("the PIN never appears in errors or health", async () => {
    await assert.rejects(
      Pkcs11Keystore.open({
        modulePath: token.modulePath,
        tokenLabel: "no-such-token",
        pin: Secret.fromString(token.pin),
        operationTimeoutMs: 300,
      }),
      (e: unknown) => {
        assert.ok(isCustosError(e, "hsm_unavailable"));
        assert.ok(!JSON.stringify({ m: e.message, s: e.stack }).includes(token.pin));
        return true;
      },
    );
    assert.ok(!JSON.stringify(ks.health()).includes(token.pin));
  });
});
