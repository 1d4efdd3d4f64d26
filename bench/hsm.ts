/**
 * HSM throughput: the physical limit (synchronous pkcs11js calls on one session) beside
 * what the keystore achieves through its pool. Run under scripts/with-softhsm.sh:
 * `scripts/with-softhsm.sh npm run bench -- hsm [seconds]`.
 */
import { createHash } from "node:crypto";
import pkcs11js from "pkcs11js";
import type { Keystore } from "../src/hsm/index.js";
import { Pkcs11Keystore } from "../src/hsm/pkcs11/index.js";
import { Secret } from "../src/secret/index.js";
import { createTestToken } from "../test/helpers/softhsm.js";

export interface HsmTarget {
  modulePath: string;
  tokenLabel: string;
  pin: string | Secret;
}

export interface RawHsmRates {
  aesGcmEncryptPerSec: number;
  aesGcmDecryptPerSec: number;
  ecdsaSignPerSec: number;
  wrapPerSec: number;
}

export interface KeystoreRates {
  encryptPerSec: number;
  decryptPerSec: number;
  encryptPerSecConcurrent: number;
  /** Items per second through `encryptMany`, 1000 items a call, two calls in flight. */
  encryptManyPerSec: number;
}

let seconds = 1.5;

function rate(fn: () => void): number {
  const until = performance.now() + seconds * 1000;
  const start = performance.now();
  let n = 0;
  while (performance.now() < until) {
    for (let i = 0; i < 64; i++) fn();
    n += 64;
  }
  return Math.round(n / ((performance.now() - start) / 1000));
}

async function rateAsync(inFlight: number, fn: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  const until = start + seconds * 1000;
  let n = 0;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (performance.now() < until) {
        await fn();
        n++;
      }
    }),
  );
  return Math.round(n / ((performance.now() - start) / 1000));
}

/**
 * The physical limit: synchronous pkcs11js calls on one session, no pool, no
 * thread-pool hop. AES-GCM on 32 bytes with AAD, RFC 5649 wrap of an AES-256 key,
 * ECDSA P-256 on a SHA-256 digest.
 */
export async function rawHsmRates(o: HsmTarget): Promise<RawHsmRates> {
  const p = new pkcs11js.PKCS11();
  p.load(o.modulePath);
  try {
    p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (e) {
    if (!String((e as Error).message).includes("ALREADY_INITIALIZED")) throw e;
  }
  const slot = p.C_GetSlotList(true).find((s) => {
    try {
      return p.C_GetTokenInfo(s).label.trim() === o.tokenLabel;
    } catch {
      return false;
    }
  });
  if (!slot) throw new Error("token not found");
  const s = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  try {
    const pin = typeof o.pin === "string" ? o.pin : o.pin.exposeText();
    try {
      p.C_Login(s, pkcs11js.CKU_USER, pin);
    } catch (e) {
      if (!String((e as Error).message).includes("ALREADY_LOGGED_IN")) throw e;
    }
    const aes = (extra: Array<{ type: number; value: boolean }>) =>
      p.C_GenerateKey(s, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
        { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
        { type: pkcs11js.CKA_TOKEN, value: false },
        ...extra,
      ]);
    const gcmKey = aes([
      { type: pkcs11js.CKA_ENCRYPT, value: true },
      { type: pkcs11js.CKA_DECRYPT, value: true },
    ]);
    const wrapKey = aes([{ type: pkcs11js.CKA_WRAP, value: true }]);
    const dataKey = aes([{ type: pkcs11js.CKA_EXTRACTABLE, value: true }]);
    const gcm = (iv: Buffer) => ({
      mechanism: pkcs11js.CKM_AES_GCM,
      parameter: { type: pkcs11js.CK_PARAMS_AES_GCM, iv, ivBits: 96, tagBits: 128, aad: Buffer.from("context") },
    });
    const iv = Buffer.alloc(12, 1);
    const pt = Buffer.alloc(32, 7);
    const out = Buffer.alloc(64);
    const aesGcmEncryptPerSec = rate(() => {
      p.C_EncryptInit(s, gcm(iv), gcmKey);
      p.C_Encrypt(s, pt, out);
    });
    p.C_EncryptInit(s, gcm(iv), gcmKey);
    const ct = Buffer.from(p.C_Encrypt(s, pt, out));
    const aesGcmDecryptPerSec = rate(() => {
      p.C_DecryptInit(s, gcm(iv), gcmKey);
      p.C_Decrypt(s, ct, out);
    });
    const wrapPerSec = rate(() => {
      p.C_WrapKey(s, { mechanism: pkcs11js.CKM_AES_KEY_WRAP_PAD }, wrapKey, dataKey, out);
    });
    const { privateKey } = p.C_GenerateKeyPair(
      s,
      { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
      [
        { type: pkcs11js.CKA_TOKEN, value: false },
        { type: pkcs11js.CKA_EC_PARAMS, value: Buffer.from("06082a8648ce3d030107", "hex") },
      ],
      [
        { type: pkcs11js.CKA_TOKEN, value: false },
        { type: pkcs11js.CKA_SIGN, value: true },
      ],
    );
    const digest = createHash("sha256").update("bench").digest();
    const ecdsaSignPerSec = rate(() => {
      p.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, privateKey);
      p.C_Sign(s, digest, out);
    });
    return { aesGcmEncryptPerSec, aesGcmDecryptPerSec, ecdsaSignPerSec, wrapPerSec };
  } finally {
    // Closing our session only: C_Finalize would end the library for everyone in the process.
    p.C_CloseSession(s);
  }
}

/** Through the keystore: one request in flight, then as many as the pool has sessions. */
export async function keystoreRates(ks: Keystore): Promise<KeystoreRates> {
  const key = await ks.generateWrappedAesKey();
  const pt = Buffer.alloc(32, 7);
  const aad = Buffer.from("context");
  const ct = await ks.encrypt(key, pt, aad);
  const encryptPerSec = await rateAsync(1, () => ks.encrypt(key, pt, aad));
  const decryptPerSec = await rateAsync(1, async () => (await ks.decrypt(key, ct.iv, ct.ciphertext, aad)).destroy());
  const encryptPerSecConcurrent = await rateAsync(ks.health().sessions.size, () => ks.encrypt(key, pt, aad));
  const messages = Array.from({ length: 1000 }, () => ({ plaintext: pt, aad }));
  const encryptManyPerSec = 1000 * (await rateAsync(2, () => ks.encryptMany(key, messages)));
  return { encryptPerSec, decryptPerSec, encryptPerSecConcurrent, encryptManyPerSec };
}

/** `npm run bench -- hsm [seconds-per-measurement] [poolSize]` under scripts/with-softhsm.sh. */
export default async function main(args: string[]): Promise<void> {
  if (args[0]) seconds = Number(args[0]);
  const poolSize = args[1] ? Number(args[1]) : 4;
  const token = createTestToken("custos-bench");
  const raw = await rawHsmRates({ modulePath: token.modulePath, tokenLabel: token.label, pin: token.pin });
  const pct = (a: number, b: number) => `${Math.round((100 * a) / b)}%`;
  console.log(`HSM limits (sync, one session, ${seconds} s each)`);
  console.log(`  AES-GCM encrypt 32 B   ${raw.aesGcmEncryptPerSec}/s`);
  console.log(`  AES-GCM decrypt 32 B   ${raw.aesGcmDecryptPerSec}/s`);
  console.log(`  AES key wrap (RFC5649) ${raw.wrapPerSec}/s`);
  console.log(`  ECDSA P-256 sign       ${raw.ecdsaSignPerSec}/s`);
  for (const inlineFastCalls of [true, false]) {
    const ks = await Pkcs11Keystore.open({
      modulePath: token.modulePath,
      tokenLabel: token.label,
      pin: Secret.fromString(token.pin),
      poolSize,
      inlineFastCalls,
    });
    try {
      if (!(await ks.findRootKey())) await ks.createRootKey();
      const k = await keystoreRates(ks);
      console.log(`Keystore (pool of ${poolSize}, ${inlineFastCalls ? "fast calls inline" : "every call async"})`);
      console.log(
        `  encrypt, 1 in flight   ${k.encryptPerSec}/s  (${pct(k.encryptPerSec, raw.aesGcmEncryptPerSec)} of raw)`,
      );
      console.log(
        `  decrypt, 1 in flight   ${k.decryptPerSec}/s  (${pct(k.decryptPerSec, raw.aesGcmDecryptPerSec)} of raw)`,
      );
      console.log(
        `  encrypt, ${poolSize} in flight   ${k.encryptPerSecConcurrent}/s  (${pct(k.encryptPerSecConcurrent, raw.aesGcmEncryptPerSec)} of raw)`,
      );
      console.log(
        `  encryptMany, 1000 items x 2 in flight   ${k.encryptManyPerSec} items/s  (${pct(k.encryptManyPerSec, raw.aesGcmEncryptPerSec)} of raw)`,
      );
    } finally {
      await ks.close();
    }
  }
}
