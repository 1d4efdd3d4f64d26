import assert from "node:assert/strict";
import { constants, createPublicKey, verify } from "node:crypto";
import { after, before, describe, test } from "node:test";
import type { SignatureScheme } from "../../src/hsm/index.js";
import { alice, type KmsFixture, openFixture, rejectsWith } from "./setup.js";

let f: KmsFixture;

before(async () => {
  f = await openFixture("custos-kms-sign");
});
after(async () => {
  await f?.close();
});

/** node:crypto's own verification, from the PEM the KMS publishes. */
function nodeVerifies(pem: string, scheme: SignatureScheme, message: Buffer, signature: Buffer): boolean {
  const key = createPublicKey(pem);
  switch (scheme) {
    case "ecdsa-p256-sha256":
      return verify("sha256", message, { key, dsaEncoding: "ieee-p1363" }, signature);
    case "ed25519":
      return verify(null, message, key, signature);
    case "rsa-pkcs1-sha256":
      return verify("sha256", message, { key, padding: constants.RSA_PKCS1_PADDING }, signature);
    case "rsa-pss-sha256":
      return verify("sha256", message, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, signature);
  }
}

const cases = [
  { algorithm: "ecdsa-p256", schemes: ["ecdsa-p256-sha256"], keyType: "ec", sigBytes: 64 },
  { algorithm: "ed25519", schemes: ["ed25519"], keyType: "ed25519", sigBytes: 64 },
  { algorithm: "rsa-3072", schemes: ["rsa-pkcs1-sha256", "rsa-pss-sha256"], keyType: "rsa", sigBytes: 384 },
] as const;

describe("sign / verify", () => {
  for (const c of cases) {
    test(`${c.algorithm}: HSM signatures verify with node:crypto and with verify()`, async () => {
      const name = `sig-${c.algorithm}`;
      const created = await f.kms.createKey(alice, { name, purpose: "sign", algorithm: c.algorithm });
      const pem = created.versions[0]?.publicKeyPem ?? "";
      assert.equal(createPublicKey(pem).asymmetricKeyType, c.keyType);
      const message = Buffer.from(`message for ${c.algorithm}`);
      for (const scheme of c.schemes) {
        const s = await f.kms.sign(alice, name, { message, scheme });
        assert.equal(s.scheme, scheme);
        assert.equal(s.version, 1);
        assert.equal(s.signature.length, c.sigBytes);
        assert.equal(nodeVerifies(pem, scheme, message, s.signature), true);
        assert.equal(nodeVerifies(pem, scheme, Buffer.from("other"), s.signature), false);
        const ok = await f.kms.verify(alice, name, { message, signature: s.signature, version: 1, scheme });
        assert.deepEqual(ok, { valid: true });
        const tampered = Buffer.from(s.signature);
        tampered[5] = (tampered[5] ?? 0) ^ 0x40;
        assert.deepEqual(await f.kms.verify(alice, name, { message, signature: tampered, version: 1, scheme }), {
          valid: false,
        });
        assert.deepEqual(
          await f.kms.verify(alice, name, { message: Buffer.from("x"), signature: s.signature, version: 1, scheme }),
          { valid: false },
        );
        assert.deepEqual(await f.kms.verify(alice, name, { message, signature: Buffer.alloc(3), scheme }), {
          valid: false,
        });
      }
      const def = await f.kms.sign(alice, name, { message });
      assert.equal(def.scheme, c.schemes[0]);
    });
  }

  test("versions: after rotation the latest signs; old signatures verify under their version only", async () => {
    const name = "sig-rot";
    await f.kms.createKey(alice, { name, purpose: "sign" });
    const message = Buffer.from("m");
    const v1 = await f.kms.sign(alice, name, { message });
    const rotated = await f.kms.rotateKey(alice, name);
    assert.notEqual(rotated.versions[0]?.publicKeyPem, rotated.versions[1]?.publicKeyPem);
    const v2 = await f.kms.sign(alice, name, { message });
    assert.equal(v2.version, 2);
    assert.equal((await f.kms.verify(alice, name, { message, signature: v1.signature, version: 1 })).valid, true);
    assert.equal((await f.kms.verify(alice, name, { message, signature: v1.signature, version: 2 })).valid, false);
    assert.equal((await f.kms.verify(alice, name, { message, signature: v1.signature })).valid, false);
    assert.equal((await f.kms.verify(alice, name, { message, signature: v2.signature })).valid, true);
    const old = await f.kms.sign(alice, name, { message, version: 1 });
    assert.equal(old.version, 1);
    await rejectsWith(f.kms.sign(alice, name, { message, version: 3 }), "invalid_request");
  });

  test("wrong scheme, wrong purpose, disabled key", async () => {
    await rejectsWith(
      f.kms.sign(alice, "sig-ecdsa-p256", { message: Buffer.from("m"), scheme: "ed25519" }),
      "invalid_request",
      /ecdsa-p256-sha256/,
    );
    await f.kms.createKey(alice, { name: "not-a-signer", purpose: "encrypt" });
    await rejectsWith(f.kms.sign(alice, "not-a-signer", { message: Buffer.from("m") }), "key_purpose_mismatch");
    await f.kms.disableKey(alice, "sig-ed25519");
    await rejectsWith(f.kms.sign(alice, "sig-ed25519", { message: Buffer.from("m") }), "key_disabled");
    await rejectsWith(
      f.kms.verify(alice, "sig-ed25519", { message: Buffer.from("m"), signature: Buffer.alloc(64) }),
      "key_disabled",
    );
  });

  test("sign and verify are audited without the message", async () => {
    const marker = Buffer.from("SIGN-MARKER-91c2");
    const s = await f.kms.sign(alice, "sig-ecdsa-p256", { message: marker });
    await f.kms.verify(alice, "sig-ecdsa-p256", { message: marker, signature: s.signature });
    const rec = (await f.records("key.sign")).at(-1);
    assert.deepEqual(rec?.details, { version: 1, scheme: "ecdsa-p256-sha256", messageBytes: marker.length });
    assert.equal((await f.records("key.verify")).at(-1)?.details.valid, true);
    const all = JSON.stringify(await f.records());
    assert.ok(!all.includes("SIGN-MARKER"));
    assert.ok(!all.includes(marker.toString("base64")));
    f.audit.failing = true;
    try {
      await rejectsWith(f.kms.sign(alice, "sig-ecdsa-p256", { message: marker }), "audit_unavailable");
    } finally {
      f.audit.failing = false;
    }
  });
});
