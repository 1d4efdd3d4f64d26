import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  createDecipheriv,
  createHmac,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  verify,
} from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { inspect } from "node:util";
import pkcs11js from "pkcs11js";
import { isCustosError } from "../../src/errors/index.js";
import { ensureKeyPair, type GcmCiphertext, type GeneratedKeyPair, type HsmKeyRef } from "../../src/hsm/index.js";
import { Pkcs11Keystore } from "../../src/hsm/pkcs11/index.js";
import { Secret } from "../../src/secret/index.js";
import { createTestToken, type TestToken } from "../helpers/softhsm.js";
import { Injector } from "./injector.js";

/**
 * What the keystore leaves on the token, checked from outside it: a second pkcs11js
 * handle in this process (same login: what anyone holding the PIN can do), pkcs11-tool
 * and plain pkcs11js in other processes that never log in (what anyone who can reach
 * the token without the PIN can do), and node:crypto.
 */

const A = pkcs11js;
const REPO = fileURLToPath(new URL("../..", import.meta.url));
const ROOT_LABEL = "custos-root";
const HMAC_LABEL = "conf-hmac";
const P256_OID = Buffer.from("06082a8648ce3d030107", "hex");
const KWP_IV = Buffer.from("a65959a6", "hex");
const AAD = Buffer.from("conformance aad");
const PLAINTEXT = Buffer.from("a data key version's plaintext");

const FLAGS = {
  TOKEN: A.CKA_TOKEN,
  PRIVATE: A.CKA_PRIVATE,
  SENSITIVE: A.CKA_SENSITIVE,
  EXTRACTABLE: A.CKA_EXTRACTABLE,
  ALWAYS_SENSITIVE: A.CKA_ALWAYS_SENSITIVE,
  NEVER_EXTRACTABLE: A.CKA_NEVER_EXTRACTABLE,
  LOCAL: A.CKA_LOCAL,
  ENCRYPT: A.CKA_ENCRYPT,
  DECRYPT: A.CKA_DECRYPT,
  WRAP: A.CKA_WRAP,
  UNWRAP: A.CKA_UNWRAP,
  SIGN: A.CKA_SIGN,
  VERIFY: A.CKA_VERIFY,
  DERIVE: A.CKA_DERIVE,
} as const;
type Flag = keyof typeof FLAGS;

interface KeyObjectInfo {
  readonly handle: Buffer;
  readonly cls: number;
  readonly label: string;
  /** 1 / 0, or undefined where the attribute does not exist for the class. */
  readonly flags: Partial<Record<Flag, number>>;
}

/** RFC 5649 unwrap in node:crypto: what anyone who knows the wrapping key's value can do. */
function kwpUnwrap(kek: Buffer, wrapped: Buffer): Buffer {
  const d = createDecipheriv("id-aes256-wrap-pad", kek, KWP_IV);
  return Buffer.concat([d.update(wrapped), d.final()]);
}

/** AES-256-GCM open in node:crypto of what the keystore encrypted. */
function gcmOpen(key: Buffer, ct: GcmCiphertext): Buffer {
  const d = createDecipheriv("aes-256-gcm", key, ct.iv);
  d.setAAD(AAD);
  d.setAuthTag(ct.ciphertext.subarray(-16));
  return Buffer.concat([d.update(ct.ciphertext.subarray(0, -16)), d.final()]);
}

/** The value of `f()`, or undefined when it throws. */
function attempt<T>(f: () => T): T | undefined {
  try {
    return f();
  } catch {
    return undefined;
  }
}

function succeeds(f: () => unknown): boolean {
  try {
    f();
    return true;
  } catch {
    return false;
  }
}

function pkcs11Tool(token: TestToken, args: string[], login: boolean): string {
  const auth = login ? ["--login", "--pin", token.pin] : [];
  return execFileSync("pkcs11-tool", ["--module", token.modulePath, "--token-label", token.label, ...auth, ...args], {
    encoding: "utf8",
    stdio: "pipe",
  });
}

type PlantAttribute = [type: number, value: boolean | number | string | Buffer];

/** Creates objects from another process that opens a public session and never logs in. */
const PLANT_SCRIPT = `
import pkcs11js from "pkcs11js";
const [modulePath, tokenLabel, objects] = process.argv.slice(1);
const p = new pkcs11js.PKCS11();
p.load(modulePath);
p.C_Initialize();
try {
  const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === tokenLabel);
  const session = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  for (const object of JSON.parse(objects)) {
    p.C_CreateObject(session, object.map(([type, v]) => ({ type, value: v && v.hex !== undefined ? Buffer.from(v.hex, "hex") : v })));
  }
} finally {
  p.C_Finalize();
}`;

function plantWithoutPin(token: TestToken, objects: PlantAttribute[][]): void {
  const json = JSON.stringify(
    objects.map((o) => o.map(([type, v]) => [type, Buffer.isBuffer(v) ? { hex: v.toString("hex") } : v])),
  );
  execFileSync(process.execPath, ["--input-type=module", "-e", PLANT_SCRIPT, token.modulePath, token.label, json], {
    cwd: REPO,
    stdio: "pipe",
  });
}

/** A P-256 pair whose private half the planter knows, as public (PIN-less) token objects. */
function attackerEcPair(label: string, id: Buffer): { objects: PlantAttribute[][]; publicKey: KeyObject } {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const jwk = privateKey.export({ format: "jwk" });
  const point = Buffer.concat([
    Buffer.from([0x04, 0x41, 0x04]),
    Buffer.from(jwk.x!, "base64url"),
    Buffer.from(jwk.y!, "base64url"),
  ]);
  const common: PlantAttribute[] = [
    [A.CKA_TOKEN, true],
    [A.CKA_PRIVATE, false],
    [A.CKA_LABEL, label],
    [A.CKA_ID, id],
    [A.CKA_KEY_TYPE, A.CKK_EC],
    [A.CKA_EC_PARAMS, P256_OID],
  ];
  return {
    publicKey,
    objects: [
      [
        [A.CKA_CLASS, A.CKO_PRIVATE_KEY],
        ...common,
        [A.CKA_SIGN, true],
        [A.CKA_VALUE, Buffer.from(jwk.d!, "base64url")],
      ],
      [[A.CKA_CLASS, A.CKO_PUBLIC_KEY], ...common, [A.CKA_VERIFY, true], [A.CKA_EC_POINT, point]],
    ],
  };
}

/** A Custos process restarted on `token`: what its keystore then finds and signs with. */
const RESTART_SCRIPT = `
const [keystoreUrl, secretUrl, modulePath, tokenLabel, pin, ref] = process.argv.slice(1);
const { Pkcs11Keystore } = await import(keystoreUrl);
const { Secret } = await import(secretUrl);
const ks = await Pkcs11Keystore.open({ modulePath, tokenLabel, pin: Secret.fromString(pin) });
const outcome = async (f) => { try { return { value: await f() }; } catch (e) { return { error: e.code ?? String(e) }; } };
try {
  const pair = JSON.parse(ref);
  console.log(JSON.stringify({
    root: await outcome(async () => (await ks.findRootKey())?.checkValue),
    publicKey: await outcome(async () => (await ks.publicKey(pair)).toString("hex")),
    signature: await outcome(async () => (await ks.sign(pair, "ecdsa-p256-sha256", Buffer.from("restart"))).toString("hex")),
  }));
} finally {
  await ks.close();
}`;

interface Outcome {
  value?: string;
  error?: string;
}

function restartAndLook(token: TestToken, ref: HsmKeyRef): { root: Outcome; publicKey: Outcome; signature: Outcome } {
  const url = (path: string): string => new URL(path, import.meta.url).href;
  const out = execFileSync(
    process.execPath,
    [
      "--import",
      "tsx",
      "--input-type=module",
      "-e",
      RESTART_SCRIPT,
      url("../../src/hsm/pkcs11/index.ts"),
      url("../../src/secret/index.ts"),
      token.modulePath,
      token.label,
      token.pin,
      JSON.stringify(ref),
    ],
    { cwd: REPO, encoding: "utf8", stdio: "pipe" },
  );
  return JSON.parse(out);
}

/**
 * Inverts RFC 5649 with AES-ECB decryptions under `kek` (a handle): a key that can
 * decrypt is as good as the wrapping key's value for unwrapping blobs.
 */
function kwpUnwrapWithEcb(p: Injector["p"], s: Buffer, kek: Buffer, wrapped: Buffer): Buffer {
  const n = wrapped.length / 8 - 1;
  let a = Buffer.from(wrapped.subarray(0, 8));
  const r = Array.from({ length: n }, (_, i) => Buffer.from(wrapped.subarray(8 + 8 * i, 16 + 8 * i)));
  for (let j = 5; j >= 0; j--) {
    for (let i = n; i >= 1; i--) {
      const t = Buffer.alloc(8);
      t.writeBigUInt64BE(a.readBigUInt64BE(0) ^ BigInt(n * j + i));
      p.C_DecryptInit(s, { mechanism: A.CKM_AES_ECB }, kek);
      const b = p.C_Decrypt(s, Buffer.concat([t, r[i - 1]!]), Buffer.alloc(16));
      a = Buffer.from(b.subarray(0, 8));
      r[i - 1] = Buffer.from(b.subarray(8));
    }
  }
  assert.equal(a.subarray(0, 4).toString("hex"), "a65959a6");
  return Buffer.concat(r).subarray(0, a.readUInt32BE(4));
}

describe("HSM conformance: what the keystore leaves on the token", () => {
  let token: TestToken;
  let fresh: TestToken;
  let restartToken: TestToken;
  let pinToken: TestToken;
  let ks: Pkcs11Keystore;
  let inj: Injector;
  let wrapped: Buffer;
  let ciphertext: GcmCiphertext;
  let hmacKey: HsmKeyRef;
  const pairs: Record<"ecdsa-p256" | "ed25519" | "rsa-3072", GeneratedKeyPair> = {} as never;
  const scratch = mkdtempSync(join(tmpdir(), "custos-hsm-conformance-"));

  before(async () => {
    // SoftHSM only sees tokens that existed when the library was initialised.
    token = createTestToken("custos-conf");
    fresh = createTestToken("custos-conf-fresh");
    restartToken = createTestToken("custos-conf-restart");
    pinToken = createTestToken("custos-conf-pin");
    ks = await Pkcs11Keystore.open({
      modulePath: token.modulePath,
      tokenLabel: token.label,
      pin: Secret.fromString(token.pin),
      poolSize: 2,
    });
    inj = new Injector(token);
    await ks.createRootKey();
    wrapped = await ks.generateWrappedAesKey();
    ciphertext = await ks.encrypt(wrapped, PLAINTEXT, AAD);
    for (const alg of ["ecdsa-p256", "ed25519", "rsa-3072"] as const) {
      pairs[alg] = await ks.generateKeyPair(alg, `conf-${alg}`);
    }
    await ks.sign(pairs["ecdsa-p256"].ref, "ecdsa-p256-sha256", Buffer.from("x"));
    await ks.sign(pairs.ed25519.ref, "ed25519", Buffer.from("x"));
    await ks.sign(pairs["rsa-3072"].ref, "rsa-pss-sha256", Buffer.from("x"));
    hmacKey = await ks.ensureHmacKey(HMAC_LABEL);
    await ks.hmac(hmacKey, Buffer.from("x"));
  });

  after(async () => {
    await ks.close();
    rmSync(scratch, { recursive: true, force: true });
  });

  /** Every private and secret key object our sessions can see, token and session objects alike. */
  function keyObjects(s: Buffer, extra: pkcs11js.Template = []): KeyObjectInfo[] {
    const found: KeyObjectInfo[] = [];
    for (const cls of [A.CKO_PRIVATE_KEY, A.CKO_SECRET_KEY]) {
      inj.p.C_FindObjectsInit(s, [{ type: A.CKA_CLASS, value: cls }, ...extra]);
      const handles = inj.p.C_FindObjects(s, 1000);
      inj.p.C_FindObjectsFinal(s);
      for (const handle of handles) {
        const flags: Partial<Record<Flag, number>> = {};
        for (const [name, type] of Object.entries(FLAGS)) {
          const v = attempt(() => inj.p.C_GetAttributeValue(s, handle, [{ type }])[0]?.value[0]);
          if (v !== undefined) flags[name as Flag] = v;
        }
        const label = inj.p.C_GetAttributeValue(s, handle, [{ type: A.CKA_LABEL }])[0]?.value.toString() ?? "";
        found.push({ handle, cls, label, flags });
      }
    }
    return found;
  }

  /** The uses each kind of key was made for; every other use must be off. */
  function expectedUses(o: KeyObjectInfo): Flag[] {
    if (o.cls === A.CKO_PRIVATE_KEY) return ["SIGN"];
    if (o.label === ROOT_LABEL) return ["WRAP", "UNWRAP"];
    if (o.label === HMAC_LABEL) return ["SIGN", "VERIFY"];
    assert.equal(o.label, "", `unexpected secret key ${o.label}`);
    return ["ENCRYPT", "DECRYPT"];
  }

  function tokenObject(s: Buffer, cls: number, label: string): Buffer {
    inj.p.C_FindObjectsInit(s, [
      { type: A.CKA_CLASS, value: cls },
      { type: A.CKA_LABEL, value: label },
      { type: A.CKA_TOKEN, value: true },
    ]);
    const handles = inj.p.C_FindObjects(s, 10);
    inj.p.C_FindObjectsFinal(s);
    assert.equal(handles.length, 1, `one token object labelled ${label}`);
    return handles[0]!;
  }

  test("every private and secret key it made, and every session copy, is sensitive, unextractable, private and has only its own uses", () => {
    inj.withSession((s) => {
      const objects = keyObjects(s);
      const onToken = objects.filter((o) => o.flags.TOKEN === 1);
      assert.deepEqual(onToken.map((o) => o.label).sort(), [
        "conf-ecdsa-p256",
        "conf-ed25519",
        "conf-hmac",
        "conf-rsa-3072",
        ROOT_LABEL,
      ]);
      // Session objects: the unwrapped key version, and the pool sessions' copies of token
      // keys where the module allows copies (they then carry their source's label).
      const unwrapped = objects.filter((o) => o.flags.TOKEN === 0 && o.label === "");
      assert.equal(unwrapped.length, 1);
      for (const o of objects) {
        const what = `${o.label || "unwrapped key"} (token ${o.flags.TOKEN})`;
        assert.equal(o.flags.SENSITIVE, 1, what);
        assert.equal(o.flags.EXTRACTABLE, 0, what);
        assert.equal(o.flags.PRIVATE, 1, what);
        // An unwrapped key was, by definition, once outside: PKCS#11 makes it neither always sensitive nor never extractable.
        const born = o.label === "" ? 0 : 1;
        assert.equal(o.flags.ALWAYS_SENSITIVE, born, what);
        assert.equal(o.flags.NEVER_EXTRACTABLE, born, what);
        assert.equal(o.flags.LOCAL, born, what);
        const uses = expectedUses(o);
        for (const use of ["ENCRYPT", "DECRYPT", "WRAP", "UNWRAP", "SIGN", "VERIFY", "DERIVE"] as const) {
          if (o.flags[use] !== undefined) assert.equal(o.flags[use], uses.includes(use) ? 1 : 0, `${what} ${use}`);
        }
      }
    });
  });

  test("pkcs11-tool, logged in from another process, sees every key protected and cannot read a secret value", () => {
    const listing = pkcs11Tool(token, ["--list-objects"], true);
    const blocks = listing.split(/\n(?=\S)/).filter((b) => /^(Private|Secret) Key Object/.test(b));
    assert.equal(blocks.length, 5, listing);
    for (const b of blocks) assert.match(b, /Access:\s+sensitive, always sensitive, never extractable, local\n?$/, b);
    for (const label of [ROOT_LABEL, HMAC_LABEL]) {
      assert.throws(
        () => pkcs11Tool(token, ["--read-object", "--type", "secrkey", "--label", label], true),
        (e: { stderr?: string }) => /CKR_ATTRIBUTE_SENSITIVE/.test(e.stderr ?? ""),
      );
    }
  });

  test("no key can be read, wrapped under a test key, made extractable or copied extractable", () => {
    inj.withSession((s) => {
      const p = inj.p;
      const objects = keyObjects(s);
      assert.ok(objects.length >= 6, `keys: ${objects.length}`);
      const kek = p.C_GenerateKey(s, { mechanism: A.CKM_AES_KEY_GEN }, [
        { type: A.CKA_CLASS, value: A.CKO_SECRET_KEY },
        { type: A.CKA_VALUE_LEN, value: 32 },
        { type: A.CKA_TOKEN, value: false },
        { type: A.CKA_WRAP, value: true },
      ]);
      for (const o of objects) {
        const what = `${o.label || "unwrapped key"} (token ${o.flags.TOKEN})`;
        const keyType = p.C_GetAttributeValue(s, o.handle, [{ type: A.CKA_KEY_TYPE }])[0]!.value.readUInt32LE(0);
        // An RSA key's secret is its private exponent; every other key's is CKA_VALUE.
        const secret = keyType === A.CKK_RSA ? A.CKA_PRIVATE_EXPONENT : A.CKA_VALUE;
        assert.throws(() => p.C_GetAttributeValue(s, o.handle, [{ type: secret }]), /CKR_ATTRIBUTE_SENSITIVE/, what);
        assert.throws(
          () => p.C_WrapKey(s, { mechanism: A.CKM_AES_KEY_WRAP_PAD }, kek, o.handle, Buffer.alloc(4096)),
          /CKR_KEY_UNEXTRACTABLE|CKR_KEY_NOT_WRAPPABLE/,
          what,
        );
        for (const lift of [
          { type: A.CKA_EXTRACTABLE, value: true },
          { type: A.CKA_SENSITIVE, value: false },
        ]) {
          assert.throws(() => p.C_SetAttributeValue(s, o.handle, [lift]), /CKR_/, what);
          assert.throws(() => p.C_CopyObject(s, o.handle, [{ type: A.CKA_TOKEN, value: false }, lift]), /CKR_/, what);
        }
      }
    });
  });

  test("the public keys it exports are the token's (pkcs11-tool --read-object) and verify its signatures", async () => {
    const data = Buffer.from("verify me");
    for (const [alg, pair] of Object.entries(pairs)) {
      const exported = createPublicKey({ key: pair.publicKey, format: "der", type: "spki" });
      const raw = execFileSync(
        "pkcs11-tool",
        [
          "--module",
          token.modulePath,
          "--token-label",
          token.label,
          "--read-object",
          "--type",
          "pubkey",
          "--id",
          pair.ref.id,
        ],
        { stdio: "pipe" },
      );
      // pkcs11-tool writes EC and RSA keys as SPKI DER and Ed25519 as PEM.
      const fromTool =
        raw.subarray(0, 5).toString() === "-----"
          ? createPublicKey(raw.toString())
          : createPublicKey({ key: raw, format: "der", type: "spki" });
      assert.ok(fromTool.equals(exported), alg);
      const scheme = alg === "ecdsa-p256" ? "ecdsa-p256-sha256" : alg === "ed25519" ? "ed25519" : "rsa-pkcs1-sha256";
      const signature = await ks.sign(pair.ref, scheme, data);
      const key = alg === "ecdsa-p256" ? { key: fromTool, dsaEncoding: "ieee-p1363" as const } : fromTool;
      assert.ok(verify(alg === "ed25519" ? null : "sha256", data, key, signature), alg);
    }
  });

  test("the session objects a keystore made (unwrapped keys, copies) are gone once it closes, and nothing extractable is left", async () => {
    const sessionKeys = (): number =>
      inj.withSession((s) => keyObjects(s, [{ type: A.CKA_TOKEN, value: false }]).length);
    const extractable = (): number =>
      inj.withSession((s) => keyObjects(s, [{ type: A.CKA_EXTRACTABLE, value: true }]).length);
    const baseline = sessionKeys();
    const second = await Pkcs11Keystore.open({
      modulePath: token.modulePath,
      tokenLabel: token.label,
      pin: Secret.fromString(token.pin),
      poolSize: 2,
    });
    try {
      const k = await second.generateWrappedAesKey();
      const ct = await second.encrypt(k, PLAINTEXT, AAD);
      assert.deepEqual((await second.decrypt(wrapped, ciphertext.iv, ciphertext.ciphertext, AAD)).expose(), PLAINTEXT);
      assert.deepEqual((await second.decrypt(k, ct.iv, ct.ciphertext, AAD)).expose(), PLAINTEXT);
      await second.sign(pairs["ecdsa-p256"].ref, "ecdsa-p256-sha256", Buffer.from("y"));
      await second.hmac(hmacKey, Buffer.from("y"));
      assert.ok(sessionKeys() >= baseline + 2, "the second keystore made session objects");
      // The fresh key generated to be wrapped (extractable by necessity) did not outlive the call.
      assert.equal(extractable(), 0);
    } finally {
      await second.close();
    }
    assert.equal(sessionKeys(), baseline);
  });

  test("the root key cannot be given CKA_DECRYPT, by C_SetAttributeValue or in a C_CopyObject template", () => {
    inj.withSession((s) => {
      const p = inj.p;
      const root = tokenObject(s, A.CKO_SECRET_KEY, ROOT_LABEL);
      let recovered: Buffer | undefined;
      const copy = attempt(() =>
        p.C_CopyObject(s, root, [
          { type: A.CKA_TOKEN, value: false },
          { type: A.CKA_DECRYPT, value: true },
        ]),
      );
      if (copy) {
        // The key version's value, recovered in the clear: node:crypto opens what the keystore encrypted.
        const dataKey = kwpUnwrapWithEcb(p, s, copy, wrapped);
        recovered = attempt(() => gcmOpen(dataKey, ciphertext));
        p.C_DestroyObject(s, copy);
      }
      const widened = succeeds(() => p.C_SetAttributeValue(s, root, [{ type: A.CKA_DECRYPT, value: true }]));
      if (widened) p.C_SetAttributeValue(s, root, [{ type: A.CKA_DECRYPT, value: false }]);
      assert.equal(recovered?.toString(), undefined, "a data key version was recovered in the clear");
      assert.equal(widened, false, "C_SetAttributeValue turned CKA_DECRYPT on");
    });
  });

  test("signing and HMAC keys cannot gain uses they were not made for (CKA_DECRYPT, CKA_DERIVE)", () => {
    inj.withSession((s) => {
      const p = inj.p;
      const targets: Array<[string, Buffer, number]> = [
        ["rsa private key +DECRYPT", tokenObject(s, A.CKO_PRIVATE_KEY, "conf-rsa-3072"), A.CKA_DECRYPT],
        ["ec private key +DERIVE", tokenObject(s, A.CKO_PRIVATE_KEY, "conf-ecdsa-p256"), A.CKA_DERIVE],
        ["hmac key +DERIVE", tokenObject(s, A.CKO_SECRET_KEY, HMAC_LABEL), A.CKA_DERIVE],
        ["hmac key +ENCRYPT", tokenObject(s, A.CKO_SECRET_KEY, HMAC_LABEL), A.CKA_ENCRYPT],
      ];
      const widened: string[] = [];
      for (const [what, handle, use] of targets) {
        if (succeeds(() => p.C_SetAttributeValue(s, handle, [{ type: use, value: true }]))) {
          widened.push(`set ${what}`);
          p.C_SetAttributeValue(s, handle, [{ type: use, value: false }]);
        }
        const copy = attempt(() =>
          p.C_CopyObject(s, handle, [
            { type: A.CKA_TOKEN, value: false },
            { type: use, value: true },
          ]),
        );
        if (copy) {
          widened.push(`copy ${what}`);
          p.C_DestroyObject(s, copy);
        }
      }
      assert.deepEqual(widened, []);
    });
  });

  test("a key version cannot be unwrapped by the root key into an extractable, readable object", () => {
    inj.withSession((s) => {
      const p = inj.p;
      const root = tokenObject(s, A.CKO_SECRET_KEY, ROOT_LABEL);
      const recovered = attempt(() => {
        const h = p.C_UnwrapKey(s, { mechanism: A.CKM_AES_KEY_WRAP_PAD }, root, wrapped, [
          { type: A.CKA_CLASS, value: A.CKO_SECRET_KEY },
          { type: A.CKA_KEY_TYPE, value: A.CKK_AES },
          { type: A.CKA_TOKEN, value: false },
          { type: A.CKA_SENSITIVE, value: false },
          { type: A.CKA_EXTRACTABLE, value: true },
        ]);
        const value = p.C_GetAttributeValue(s, h, [{ type: A.CKA_VALUE }])[0]!.value;
        p.C_DestroyObject(s, h);
        return gcmOpen(value, ciphertext);
      });
      assert.equal(recovered?.toString(), undefined, "a data key version was recovered in the clear");
    });
  });

  test("a root key planted without the PIN before init is not adopted (init runs findRootKey() ?? createRootKey())", async () => {
    const known = randomBytes(32);
    writeFileSync(join(scratch, "planted-root"), known);
    // No --login: pkcs11-tool opens a public session and creates a public token object.
    pkcs11Tool(
      fresh,
      [
        "--write-object",
        join(scratch, "planted-root"),
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--label",
        ROOT_LABEL,
      ],
      false,
    );
    const victim = await Pkcs11Keystore.open({
      modulePath: fresh.modulePath,
      tokenLabel: fresh.label,
      pin: Secret.fromString(fresh.pin),
    });
    try {
      let blob: Buffer | undefined;
      try {
        if (!(await victim.findRootKey())) await victim.createRootKey();
        blob = await victim.generateWrappedAesKey();
      } catch (e) {
        // Refusing to work on such a token is a correct answer too.
        assert.ok(isCustosError(e), String(e));
      }
      if (blob) {
        const b = blob;
        assert.equal(
          attempt(() => kwpUnwrap(known, b).toString("hex")),
          undefined,
          "the planter unwraps new key versions",
        );
      }
    } finally {
      await victim.close();
    }
  });

  test("an HMAC key planted without the PIN is not adopted by ensureHmacKey (how init provisions the audit key)", async () => {
    const known = randomBytes(32);
    plantWithoutPin(token, [
      [
        [A.CKA_CLASS, A.CKO_SECRET_KEY],
        [A.CKA_KEY_TYPE, A.CKK_GENERIC_SECRET],
        [A.CKA_TOKEN, true],
        [A.CKA_PRIVATE, false],
        [A.CKA_LABEL, "planted-hmac"],
        [A.CKA_ID, Buffer.from("0badc0de", "hex")],
        [A.CKA_SIGN, true],
        [A.CKA_VALUE, known],
      ],
    ]);
    const data = Buffer.from("an audited value");
    const ref = await ks.ensureHmacKey("planted-hmac");
    const mac = await ks.hmac(ref, data);
    assert.notDeepEqual(mac, createHmac("sha256", known).update(data).digest(), "the planter computes the audit MACs");
  });

  test("a signing pair planted without the PIN is not adopted by ensureKeyPair (how init provisions CA, JWT and checkpoint keys)", async () => {
    const attacker = attackerEcPair("planted-signer", Buffer.from("0badc0df", "hex"));
    plantWithoutPin(token, attacker.objects);
    const data = Buffer.from("a certificate to sign");
    const pair = await ensureKeyPair(ks, "ecdsa-p256", "planted-signer");
    const signature = await ks.sign(pair.ref, "ecdsa-p256-sha256", data);
    assert.ok(
      !verify("sha256", data, { key: attacker.publicKey, dsaEncoding: "ieee-p1363" }, signature),
      "the keystore signs with the planter's key",
    );
  });

  test("objects planted without the PIN under the root label and a signing pair's label and id are never used after a restart", async () => {
    const setup = await Pkcs11Keystore.open({
      modulePath: restartToken.modulePath,
      tokenLabel: restartToken.label,
      pin: Secret.fromString(restartToken.pin),
    });
    let real: { checkValue: string; pair: GeneratedKeyPair };
    try {
      real = {
        checkValue: (await setup.createRootKey()).checkValue,
        pair: await setup.generateKeyPair("ecdsa-p256", "victim"),
      };
    } finally {
      await setup.close();
    }
    // The pair's id is public: the planter reads it from the public key object without the PIN.
    const listing = pkcs11Tool(restartToken, ["--list-objects", "--type", "pubkey"], false);
    assert.match(listing, new RegExp(`ID:\\s+${real.pair.ref.id}`));
    const planted: PlantAttribute[][] = [];
    const attackerKeys: KeyObject[] = [];
    for (let i = 0; i < 4; i++) {
      planted.push([
        [A.CKA_CLASS, A.CKO_SECRET_KEY],
        [A.CKA_KEY_TYPE, A.CKK_AES],
        [A.CKA_TOKEN, true],
        [A.CKA_PRIVATE, false],
        [A.CKA_LABEL, ROOT_LABEL],
        [A.CKA_WRAP, true],
        [A.CKA_UNWRAP, true],
        [A.CKA_VALUE, randomBytes(32)],
      ]);
      const attacker = attackerEcPair("victim", Buffer.from(real.pair.ref.id, "hex"));
      planted.push(...attacker.objects);
      attackerKeys.push(attacker.publicKey);
    }
    plantWithoutPin(restartToken, planted);
    const realKey = createPublicKey({ key: real.pair.publicKey, format: "der", type: "spki" });
    const wrong: string[] = [];
    for (let restart = 0; restart < 3; restart++) {
      const seen = restartAndLook(restartToken, real.pair.ref);
      // Refusing (an error) is fine; using a planted object is not.
      if (seen.root.value !== undefined && seen.root.value !== real.checkValue) wrong.push(`${restart}: root`);
      if (seen.publicKey.value !== undefined && seen.publicKey.value !== real.pair.publicKey.toString("hex")) {
        wrong.push(`${restart}: public key`);
      }
      if (seen.signature.value !== undefined) {
        const sig = Buffer.from(seen.signature.value, "hex");
        const ok = verify("sha256", Buffer.from("restart"), { key: realKey, dsaEncoding: "ieee-p1363" }, sig);
        if (!ok) wrong.push(`${restart}: signature`);
      }
    }
    assert.deepEqual(wrong, []);
  });

  test("a wrong PIN: the error, its causes and the log lines name the failure but never a PIN", async () => {
    const wrongPin = `wrong-${randomBytes(6).toString("hex")}`;
    const lines: string[] = [];
    const logger = {
      warn: (o: object, m: string) => lines.push(`${m} ${JSON.stringify(o)}`),
      info: (o: object, m: string) => lines.push(`${m} ${JSON.stringify(o)}`),
    };
    await assert.rejects(
      Pkcs11Keystore.open({
        modulePath: pinToken.modulePath,
        tokenLabel: pinToken.label,
        pin: Secret.fromString(wrongPin),
        operationTimeoutMs: 300,
        logger,
      }),
      (e: unknown) => {
        assert.ok(isCustosError(e, "hsm_unavailable"), String(e));
        assert.match(e.message, /CKR_PIN_INCORRECT/);
        const everything = `${inspect(e, { depth: null, showHidden: true })}\n${e.stack}\n${lines.join("\n")}`;
        assert.ok(
          lines.some((l) => l.includes("CKR_PIN_INCORRECT")),
          lines.join("\n"),
        );
        assert.ok(!everything.includes(wrongPin), everything);
        assert.ok(!everything.includes(pinToken.pin), everything);
        return true;
      },
    );
  });
});
