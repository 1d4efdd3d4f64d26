import { createHash } from "node:crypto";
import type { Mechanism, RsaPSS, Template } from "pkcs11js";
import { CustosError, decryptionFailed, isCustosError } from "../../errors/index.js";
import { Secret } from "../../secret/index.js";
import { InFlight } from "../in-flight.js";
import type {
  GcmCiphertext,
  GcmMessage,
  GcmSealed,
  GeneratedKeyPair,
  HsmHealth,
  HsmKeyRef,
  Keystore,
  RootKeyInfo,
  SignatureScheme,
  SigningAlgorithm,
} from "../keystore.js";
import { ckrOf, classify } from "./ckr.js";
import { Connection, type HsmLogger, type OpContext } from "./connection.js";
import {
  CKK_EC_EDWARDS,
  CKM_EDDSA,
  GCM_IV_LENGTH,
  GCM_TAG_LENGTH,
  MAX_GCM_INPUT,
  OID_P256,
  pk,
  WRAPPED_AES256_LENGTH,
} from "./constants.js";
import { HsmThread } from "./hsm-thread.js";
import { generateKeyNested } from "./nested-template.js";
import { attribute, checkLabel, findAll, findOne, ownKey, refTemplate, ulongAttribute } from "./objects.js";
import { ed25519Spki, p256Spki, rsaSpki } from "./spki.js";
import {
  checkValueKeyTemplate,
  dataObjectTemplate,
  gcmMechanism,
  hmacKeyTemplate,
  KEY_WRAP_PAD,
  type KeyBirthplace,
  keyPairTemplates,
  rootKeyTemplate,
  TOKEN_COPY,
  transientAesTemplate,
  unwrappedAesTemplate,
} from "./templates.js";
import { UnwrapCache, type UnwrappedKey } from "./unwrap-cache.js";

/** How to reach the token and how hard to try. */
export interface Pkcs11KeystoreOptions {
  /** Path of the PKCS#11 module (.so). */
  modulePath: string;
  /** CKA label of the token; the slot is found by it (slot ids change). */
  tokenLabel: string;
  /** User PIN. The keystore keeps its own copy and zeroes it on close. */
  pin: Secret;
  /** Sessions in the pool (one operation per session at a time). Default 4. */
  poolSize?: number;
  /** Deadline of every operation, recovery included. Default 5000. */
  operationTimeoutMs?: number;
  /** CKA_LABEL of the root wrapping key. Default "custos-root". */
  rootKeyLabel?: string;
  /** Unwrapped encryption keys kept as session objects. Default 1024. */
  unwrapCacheSize?: number;
  /**
   * When the module answers C_*Init faster than INLINE_MAX_US (a local software
   * token): run small single AES-GCM calls synchronously (the thread-pool hop costs
   * more than the operation), and EC/EdDSA signatures and batches on the HSM thread.
   * A network HSM answers in milliseconds and always goes async, one call at a time
   * per session. Default true.
   */
  inlineFastCalls?: boolean;
  logger?: HsmLogger;
}

/**
 * The known key wrapped to compute the root key check value. RFC 5649 wrapping is
 * deterministic, so wrapping a fixed public key identifies the wrapping key exactly,
 * using only the WRAP capability the root key already has. The result is hashed so
 * the check value is not itself a usable wrapped blob.
 */
const CHECK_VALUE_KEY = createHash("sha256").update("custos root key check value v1").digest();
const IV_BATCH = 256;
/**
 * The C_*Init latency under which a module counts as local (see inlineFastCalls). A local
 * token's C_SignInit decrypts the private key object first (15-40 us in SoftHSM,
 * more under load), so signing gets more room; both sit far below a network HSM's
 * round trip.
 */
const INLINE_MAX_US = { cipher: 50, sign: 200 } as const;
const INLINE_MAX_BYTES = 4096;
const MAX_SIGN_INPUT = 1024 * 1024;
const MAX_DATA_OBJECT = 64 * 1024;
/**
 * An empty message as PKCS#11 wants it: a real pointer with length 0. Node backs an
 * empty Buffer with no memory, so pkcs11js would pass pData = NULL, which SoftHSM
 * refuses (CKR_ARGUMENTS_BAD) whatever the length; a zero-length view into one
 * allocated byte is the same empty message with a pointer. Never written to.
 */
const EMPTY_SIGN_INPUT = Buffer.alloc(1).subarray(1);
const ID_LENGTH = 16;
/** Answers of C_UnwrapKey that mean "this blob was not wrapped by this key". */
const UNWRAP_REJECTED = new Set([
  "CKR_GENERAL_ERROR",
  "CKR_WRAPPED_KEY_INVALID",
  "CKR_WRAPPED_KEY_LEN_RANGE",
  "CKR_ENCRYPTED_DATA_INVALID",
  "CKR_ENCRYPTED_DATA_LEN_RANGE",
]);
/** Answers of C_Decrypt (AES-GCM) that mean authentication failed; SoftHSM uses the first. */
const GCM_REJECTED = new Set(["CKR_GENERAL_ERROR", "CKR_ENCRYPTED_DATA_INVALID", "CKR_ENCRYPTED_DATA_LEN_RANGE"]);

/**
 * A token key as one pool session uses it: a session-object copy made on that session
 * (SoftHSM re-reads a token object's file at every C_*Init; a copy in memory signs
 * 1.5x and MACs 2.3x faster), or the token object itself where the HSM refuses copies.
 */
interface TokenObject {
  readonly handle: Buffer;
  /** The token object itself, touched every COPY_RECHECK_MS so a copy never outlives it by more. */
  readonly source: Buffer;
  checkedAt: number;
  readonly epoch: number;
  /** Pool serial of the session that may use `handle` (a copy dies with it). */
  readonly serial: number;
  readonly keyType: number;
  /** True when `handle` is a session copy this keystore must destroy with the key. */
  readonly copy: boolean;
}

/** What C_CopyObject changes: the copy lives in the session, never on the token. */
const SESSION_COPY = [{ type: pk.CKA_TOKEN, value: false }];
/**
 * How long a session copy is used without touching its token object. Touching it is
 * what notices a removed or re-initialised token (a software token's session objects
 * outlive its files; a real HSM's die with the token).
 */
const COPY_RECHECK_MS = 1000;
/** Where a session's handle for the token key `name` is cached in #objects. */
function objectKey(name: string, serial: number): string {
  return `${name}@${serial}`;
}
/** What a call on a destroyed object's handle answers. */
const HANDLE_INVALID = new Set(["CKR_KEY_HANDLE_INVALID", "CKR_OBJECT_HANDLE_INVALID"]);
/** Searches for the keys themselves, never our session copies of them. */
const ON_TOKEN = { type: pk.CKA_TOKEN, value: true };

function bytes(value: Uint8Array, what: string): Buffer {
  if (!(value instanceof Uint8Array)) throw new CustosError("invalid_request", `${what} must be bytes`);
  return Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

function wrappedForEncrypt(wrappedKey: Buffer): Buffer {
  const wrapped = bytes(wrappedKey, "wrapped key");
  if (wrapped.length !== WRAPPED_AES256_LENGTH) throw new CustosError("invalid_request", "wrapped key has a bad size");
  return wrapped;
}

function wrappedForDecrypt(wrappedKey: Buffer): Buffer {
  const wrapped = bytes(wrappedKey, "wrapped key");
  if (wrapped.length !== WRAPPED_AES256_LENGTH) throw decryptionFailed();
  return wrapped;
}

function encryptArgs(m: GcmMessage): { input: Buffer; ad: Buffer } {
  const input = bytes(m.plaintext, "plaintext");
  const ad = bytes(m.aad, "aad");
  // SoftHSM answers an empty C_Encrypt with CKR_ARGUMENTS_BAD and leaves the operation active.
  if (input.length === 0) throw new CustosError("invalid_request", "plaintext must not be empty");
  if (input.length > MAX_GCM_INPUT || ad.length > MAX_GCM_INPUT) {
    throw new CustosError("payload_too_large", `plaintext and aad are limited to ${MAX_GCM_INPUT} bytes`);
  }
  return { input, ad };
}

function decryptArgs(m: GcmSealed): { nonce: Buffer; input: Buffer; ad: Buffer } {
  const nonce = Buffer.from(bytes(m.iv, "iv"));
  const input = bytes(m.ciphertext, "ciphertext");
  const ad = bytes(m.aad, "aad");
  if (nonce.length !== GCM_IV_LENGTH) throw decryptionFailed();
  // The empty plaintext can't be made by encrypt(), so a bare tag is a forgery or truncation.
  if (input.length <= GCM_TAG_LENGTH) throw decryptionFailed();
  if (input.length > MAX_GCM_INPUT + GCM_TAG_LENGTH || ad.length > MAX_GCM_INPUT) {
    throw new CustosError("payload_too_large", `ciphertext and aad are limited to ${MAX_GCM_INPUT} bytes`);
  }
  return { nonce, input, ad };
}

/**
 * Checks every item of a many-message call: refused items take their error as their
 * result; the rest, with their checked arguments and places, go to the HSM.
 */
function sortOut<I, A, R>(
  messages: readonly I[],
  check: (m: I) => A,
): { results: Array<R | CustosError>; items: Array<{ at: number; args: A }> } {
  if (!Array.isArray(messages)) throw new CustosError("invalid_request", "messages must be an array");
  const results = new Array<R | CustosError>(messages.length);
  const items: Array<{ at: number; args: A }> = [];
  messages.forEach((m, at) => {
    try {
      if (typeof m !== "object" || m === null) throw new CustosError("invalid_request", "a message must be an object");
      items.push({ at, args: check(m) });
    } catch (e) {
      if (!isCustosError(e)) throw e;
      results[at] = e;
    }
  });
  return { results, items };
}

/** Item `k` of a GCM job's packed output, as a view (no copy). */
function itemOf(output: Uint8Array, ends: Uint32Array, k: number): Buffer {
  const start = k === 0 ? 0 : (ends[k - 1] as number);
  return Buffer.from(output.buffer, output.byteOffset + start, (ends[k] as number) - start);
}

function intOption(value: number | undefined, fallback: number, min: number, max: number, name: string): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new CustosError("invalid_request", `${name} must be an integer in ${min}..${max}`);
  }
  return v;
}

/** The name under which a signing key's session copies are kept. */
function privateName(ref: HsmKeyRef): string {
  return `private:${ref.label}:${ref.id}`;
}

function notFound(ref: HsmKeyRef): CustosError {
  return new CustosError("not_found", `no HSM key with label ${JSON.stringify(ref.label)} and id ${ref.id}`);
}

/**
 * Keystore over a PKCS#11 token: see `Keystore` for the contract. Open it with
 * `Pkcs11Keystore.open()`; close it once at shutdown.
 */
export class Pkcs11Keystore implements Keystore {
  readonly #c: Connection;
  readonly #pin: Secret;
  readonly #rootLabel: string;
  readonly #rootTemplate: Template;
  readonly #unwrapped: UnwrapCache;
  readonly #objects = new Map<string, TokenObject>();
  readonly #hmacEnsures = new InFlight<HsmKeyRef>();
  /** The tail of this keystore's operations that run one at a time (root key creations, data object writes). */
  #turns: Promise<unknown> = Promise.resolve();
  #ivs: Buffer = Buffer.alloc(0);
  #ivOffset = 0;
  readonly #inlineAllowed: boolean;
  readonly #thread: HsmThread;
  /** The PKCS#11 module, for the one call pkcs11js cannot make (see nested-template.ts). */
  readonly #modulePath: string;
  /** Moving averages of C_EncryptInit/C_DecryptInit and of C_SignInit latency, in microseconds. */
  readonly #initUs: Record<"cipher" | "sign", number> = { ...INLINE_MAX_US };

  private constructor(
    c: Connection,
    pin: Secret,
    rootLabel: string,
    cacheSize: number,
    inline: boolean,
    thread: HsmThread,
    modulePath: string,
  ) {
    this.#thread = thread;
    this.#modulePath = modulePath;
    this.#inlineAllowed = inline;
    this.#c = c;
    this.#pin = pin;
    this.#rootLabel = rootLabel;
    this.#rootTemplate = [
      ...ownKey(pk.CKO_SECRET_KEY),
      { type: pk.CKA_KEY_TYPE, value: pk.CKK_AES },
      { type: pk.CKA_LABEL, value: rootLabel },
    ];
    this.#unwrapped = new UnwrapCache(cacheSize);
    c.onEpoch(() => {
      this.#unwrapped.clear();
      this.#objects.clear();
    });
    c.onSessionDrop((serial) => {
      this.#unwrapped.dropSession(serial);
      for (const [key, object] of this.#objects) if (object.serial === serial) this.#objects.delete(key);
    });
  }

  /** Loads the module, finds the token by label, opens the pool and logs in. */
  static async open(o: Pkcs11KeystoreOptions): Promise<Pkcs11Keystore> {
    if (!o.modulePath || !o.tokenLabel)
      throw new CustosError("invalid_request", "modulePath and tokenLabel are required");
    const poolSize = intOption(o.poolSize, 4, 1, 64, "poolSize");
    const operationTimeoutMs = intOption(o.operationTimeoutMs, 5000, 50, 600_000, "operationTimeoutMs");
    const cacheSize = intOption(o.unwrapCacheSize, 1024, 0, 1_000_000, "unwrapCacheSize");
    const rootLabel = o.rootKeyLabel ?? "custos-root";
    checkLabel(rootLabel);
    const pin = o.pin.use((b) => Secret.copy(b));
    try {
      const c = await Connection.open({
        modulePath: o.modulePath,
        tokenLabel: o.tokenLabel,
        pin,
        poolSize,
        operationTimeoutMs,
        logger: o.logger,
      });
      const thread = new HsmThread(o.modulePath, o.logger);
      return new Pkcs11Keystore(c, pin, rootLabel, cacheSize, o.inlineFastCalls ?? true, thread, o.modulePath);
    } catch (e) {
      pin.destroy();
      throw e;
    }
  }

  health(): HsmHealth {
    return this.#c.health();
  }

  // --- root key --------------------------------------------------------------

  async createRootKey(): Promise<RootKeyInfo> {
    // One creation at a time in this keystore, so that the next one's check sees the key.
    await this.#inTurn(() =>
      this.#c.run("createRootKey", async (ctx) => {
        if (this.#rootsOnToken(ctx).length > 0) throw new CustosError("conflict", "the token already holds a root key");
        const id = this.#randomId(ctx);
        // Its CKA_UNWRAP_TEMPLATE needs a template inside a template, which pkcs11js
        // can't pass. An AES key is made in microseconds: on this thread.
        const [root] = await this.#generateOnToken(ctx, async (where) => [
          generateKeyNested(
            this.#modulePath,
            ctx.session,
            { mechanism: pk.CKM_AES_KEY_GEN },
            rootKeyTemplate(this.#rootLabel, id, where),
          ),
        ]);
        // PKCS#11 has no create-if-absent, so another keystore in this process may have
        // made one meanwhile. A key is kept only by a creator that finds it alone; every
        // later creator sees it and backs out, so two root keys never both survive. (In a
        // dead heat all back out: no key, every caller told conflict, and creating again
        // works.) Another process's key may go unseen here (SoftHSM's process that has
        // just made an object misses objects others made meanwhile): processes take turns
        // outside the HSM (`custos init` holds a lock), and findRootKey refuses a token
        // left with two.
        if (this.#rootsOnToken(ctx).length > 1) {
          ctx.p.C_DestroyObject(ctx.session, root as Buffer);
          throw new CustosError("conflict", "another root key was created on the token at the same time");
        }
      }),
    );
    const info = await this.findRootKey();
    if (!info) throw new CustosError("hsm_error", "root key vanished right after creation");
    return info;
  }

  async findRootKey(): Promise<RootKeyInfo | undefined> {
    return this.#c.run("findRootKey", async (ctx) => {
      // Asked of the token itself, never of a session copy: this is how start-up and
      // health checks learn that the root key is gone.
      const roots = this.#rootsOnToken(ctx);
      if (roots.length > 1) {
        const ids = roots.map((h) => attribute(ctx, h, pk.CKA_ID).toString("hex")).join(" and ");
        throw new CustosError(
          "root_key_mismatch",
          `the token holds more than one root key labelled ${JSON.stringify(this.#rootLabel)} (ids ${ids}); ` +
            "which one wraps Custos's keys can't be told apart: remove the one this Custos was not initialised with",
        );
      }
      const root = roots[0];
      if (!root) return undefined;
      const id = attribute(ctx, root, pk.CKA_ID).toString("hex");
      const known = ctx.p.C_CreateObject(ctx.session, checkValueKeyTemplate(CHECK_VALUE_KEY));
      let wrapped: Buffer;
      try {
        wrapped = await ctx.p.C_WrapKeyAsync(ctx.session, KEY_WRAP_PAD, root, known, Buffer.alloc(64));
      } finally {
        this.#destroyQuietly(ctx, known);
      }
      const checkValue = createHash("sha256").update(wrapped).digest("hex");
      // The unwrap template can't be read through pkcs11js; it came with unmodifiability, and neither can be added later.
      const hardened = attribute(ctx, root, pk.CKA_MODIFIABLE)[0] === 0;
      return { label: this.#rootLabel, id, checkValue, hardened };
    });
  }

  // --- encryption keys --------------------------------------------------------

  async generateWrappedAesKey(): Promise<Buffer> {
    return this.#c.run("generateWrappedAesKey", async (ctx) => {
      const root = this.#requireRoot(ctx);
      const key = await ctx.p.C_GenerateKeyAsync(
        ctx.session,
        { mechanism: pk.CKM_AES_KEY_GEN },
        transientAesTemplate(),
      );
      try {
        const wrapped = await ctx.p.C_WrapKeyAsync(ctx.session, KEY_WRAP_PAD, root, key, Buffer.alloc(64));
        if (wrapped.length !== WRAPPED_AES256_LENGTH) throw new CustosError("hsm_error", "unexpected wrapped key size");
        return Buffer.from(wrapped);
      } finally {
        this.#destroyQuietly(ctx, key);
      }
    });
  }

  async encrypt(wrappedKey: Buffer, plaintext: Uint8Array, aad: Uint8Array): Promise<GcmCiphertext> {
    const wrapped = wrappedForEncrypt(wrappedKey);
    const { input, ad } = encryptArgs({ plaintext, aad });
    return this.#c.run("encrypt", (ctx) =>
      this.#withKey(ctx, wrapped, "encrypt", async (key) => {
        const iv = this.#nextIv(ctx);
        const started = performance.now();
        ctx.p.C_EncryptInit(ctx.session, gcmMechanism(iv, ad), key);
        ctx.active = true;
        const out = Buffer.alloc(input.length + GCM_TAG_LENGTH);
        const ciphertext = this.#inline("cipher", started, input.length)
          ? ctx.p.C_Encrypt(ctx.session, input, out)
          : await ctx.p.C_EncryptAsync(ctx.session, input, out);
        ctx.active = false;
        return { iv, ciphertext };
      }),
    );
  }

  async decrypt(wrappedKey: Buffer, iv: Uint8Array, ciphertext: Uint8Array, aad: Uint8Array): Promise<Secret> {
    const wrapped = wrappedForDecrypt(wrappedKey);
    const { nonce, input, ad } = decryptArgs({ iv, ciphertext, aad });
    return this.#c.run("decrypt", (ctx) =>
      this.#withKey(ctx, wrapped, "decrypt", async (key) => {
        const started = performance.now();
        ctx.p.C_DecryptInit(ctx.session, gcmMechanism(nonce, ad), key);
        ctx.active = true;
        const out = Buffer.alloc(input.length);
        try {
          const plain = this.#inline("cipher", started, input.length)
            ? ctx.p.C_Decrypt(ctx.session, input, out)
            : await ctx.p.C_DecryptAsync(ctx.session, input, out);
          ctx.active = false;
          return Secret.copy(plain);
        } catch (e) {
          const ckr = ckrOf(e);
          if (ckr && GCM_REJECTED.has(ckr.name)) {
            // A failed C_Decrypt ends the operation; the token must still be alive for
            // this to be the ciphertext's fault rather than the device's.
            ctx.active = false;
            this.#c.assertAlive(ctx);
            throw decryptionFailed();
          }
          throw e;
        } finally {
          out.fill(0);
        }
      }),
    );
  }

  async encryptMany(wrappedKey: Buffer, messages: readonly GcmMessage[]): Promise<Array<GcmCiphertext | CustosError>> {
    const wrapped = wrappedForEncrypt(wrappedKey);
    const { results, items } = sortOut<GcmMessage, ReturnType<typeof encryptArgs>, GcmCiphertext>(
      messages,
      encryptArgs,
    );
    if (items.length === 0) return results;
    if (!this.#fast("cipher")) {
      await this.#eachOnPool(items, async ({ at, args }) => {
        results[at] = await this.encrypt(wrapped, args.input, args.ad);
      });
      return results;
    }
    return this.#c.run("encryptMany", (ctx) =>
      this.#withKey(ctx, wrapped, "encrypt", async (key) => {
        const ivs = items.map(() => this.#nextIv(ctx));
        const job = items.map(({ args }, k) => ({ iv: ivs[k] as Buffer, input: args.input, aad: args.ad }));
        ctx.active = true;
        const done = await this.#thread.gcm(true, ctx.session, key, job, []);
        this.#measured("cipher", done.initUs);
        ctx.active = false;
        items.forEach(({ at }, k) => {
          results[at] = { iv: ivs[k] as Buffer, ciphertext: itemOf(done.output, done.outputEnds, k) };
        });
        return results;
      }),
    );
  }

  async decryptMany(wrappedKey: Buffer, sealed: readonly GcmSealed[]): Promise<Array<Secret | CustosError>> {
    const { results, items } = sortOut<GcmSealed, ReturnType<typeof decryptArgs>, Secret>(sealed, decryptArgs);
    if (items.length === 0) return results;
    try {
      const wrapped = wrappedForDecrypt(wrappedKey);
      if (!this.#fast("cipher")) {
        await this.#eachOnPool(items, async ({ at, args }) => {
          try {
            results[at] = await this.decrypt(wrapped, args.nonce, args.input, args.ad);
          } catch (e) {
            if (!isCustosError(e, "decryption_failed")) throw e;
            results[at] = e;
          }
        });
        return results;
      }
      return await this.#decryptOnThread(wrapped, items, results);
    } catch (e) {
      // A key the root key did not wrap (or of the wrong size): every item fails as a single decrypt would.
      if (!isCustosError(e, "decryption_failed")) throw e;
      for (const { at } of items) results[at] = e;
      return results;
    }
  }

  #decryptOnThread(
    wrapped: Buffer,
    items: ReadonlyArray<{ at: number; args: ReturnType<typeof decryptArgs> }>,
    results: Array<Secret | CustosError>,
  ): Promise<Array<Secret | CustosError>> {
    return this.#c.run("decryptMany", (ctx) =>
      this.#withKey(ctx, wrapped, "decrypt", async (key) => {
        const job = items.map(({ args }) => ({ iv: args.nonce, input: args.input, aad: args.ad }));
        ctx.active = true;
        const done = await this.#thread.gcm(false, ctx.session, key, job, [...GCM_REJECTED]);
        this.#measured("cipher", done.initUs);
        ctx.active = false;
        try {
          // As for one decryption: failed items are the ciphertexts' fault only if the token is alive.
          if (done.failed.some((name) => name !== null)) this.#c.assertAlive(ctx);
          items.forEach(({ at }, k) => {
            results[at] =
              done.failed[k] === null ? Secret.copy(itemOf(done.output, done.outputEnds, k)) : decryptionFailed();
          });
          return results;
        } finally {
          done.output.fill(0);
        }
      }),
    );
  }

  // --- signing keys -------------------------------------------------------------

  async generateKeyPair(algorithm: SigningAlgorithm, label: string): Promise<GeneratedKeyPair> {
    checkLabel(label);
    if (algorithm !== "ecdsa-p256" && algorithm !== "ed25519" && algorithm !== "rsa-3072") {
      throw new CustosError("invalid_request", "unsupported signing algorithm");
    }
    const id = await this.#c.run("generateKeyPair", async (ctx) => {
      const newId = this.#randomId(ctx);
      await this.#generateOnToken(ctx, async (where) => {
        const t = keyPairTemplates(algorithm, label, newId, where);
        const pair = await ctx.p.C_GenerateKeyPairAsync(ctx.session, t.mechanism, t.publicKey, t.privateKey);
        return [pair.publicKey, pair.privateKey];
      });
      return newId.toString("hex");
    });
    const ref: HsmKeyRef = { label, id };
    return { ref, publicKey: await this.publicKey(ref) };
  }

  async findKeyPair(label: string): Promise<GeneratedKeyPair | undefined> {
    checkLabel(label);
    const template = [...ownKey(pk.CKO_PRIVATE_KEY), { type: pk.CKA_LABEL, value: label }, ON_TOKEN];
    const id = await this.#c.run("findKeyPair", async (ctx) => {
      const handle = findOne(ctx, template);
      if (handle) return attribute(ctx, handle, pk.CKA_ID).toString("hex");
      this.#c.assertAlive(ctx);
      return undefined;
    });
    if (id === undefined) return undefined;
    const ref: HsmKeyRef = { label, id };
    return { ref, publicKey: await this.publicKey(ref) };
  }

  async sign(ref: HsmKeyRef, scheme: SignatureScheme, data: Uint8Array): Promise<Buffer> {
    const input = bytes(data, "data");
    if (input.length > MAX_SIGN_INPUT) throw new CustosError("payload_too_large", "data to sign is too large");
    const plan = signPlan(scheme, input.length === 0 ? EMPTY_SIGN_INPUT : input);
    const template = refTemplate(pk.CKO_PRIVATE_KEY, ref);
    return this.#c.run("sign", async (ctx) => {
      const signature = await this.#withTokenObject(ctx, privateName(ref), template, async (key) => {
        if (key.keyType !== plan.keyType) {
          throw new CustosError("invalid_request", `signature scheme ${scheme} does not fit this key`);
        }
        if (plan.keyType !== pk.CKK_RSA && this.#fast("sign")) {
          ctx.active = true;
          const done = await this.#thread.sign(ctx.session, key.handle, plan.mechanism, plan.input, plan.maxLength);
          ctx.active = false;
          this.#measured("sign", done.initUs);
          return Buffer.from(done.output.buffer, done.output.byteOffset, done.output.length);
        }
        const started = performance.now();
        ctx.p.C_SignInit(ctx.session, plan.mechanism, key.handle);
        ctx.active = true;
        const out = Buffer.alloc(plan.maxLength);
        // An RSA-3072 signature takes milliseconds even in a software token: never on this thread.
        const signed =
          plan.keyType !== pk.CKK_RSA && this.#inline("sign", started, plan.input.length)
            ? ctx.p.C_Sign(ctx.session, plan.input, out)
            : await ctx.p.C_SignAsync(ctx.session, plan.input, out);
        ctx.active = false;
        return Buffer.from(signed);
      });
      if (!signature) throw notFound(ref);
      return signature;
    });
  }

  async publicKey(ref: HsmKeyRef): Promise<Buffer> {
    const template = refTemplate(pk.CKO_PUBLIC_KEY, ref);
    return this.#c.run("publicKey", async (ctx) => {
      const handle = findOne(ctx, template);
      if (!handle) {
        this.#c.assertAlive(ctx);
        throw notFound(ref);
      }
      const keyType = ulongAttribute(ctx, handle, pk.CKA_KEY_TYPE);
      if (keyType === pk.CKK_EC) {
        if (!attribute(ctx, handle, pk.CKA_EC_PARAMS).equals(OID_P256)) {
          throw new CustosError("hsm_error", "EC key is not on P-256");
        }
        return p256Spki(attribute(ctx, handle, pk.CKA_EC_POINT));
      }
      if (keyType === CKK_EC_EDWARDS) return ed25519Spki(attribute(ctx, handle, pk.CKA_EC_POINT));
      if (keyType === pk.CKK_RSA) {
        return rsaSpki(attribute(ctx, handle, pk.CKA_MODULUS), attribute(ctx, handle, pk.CKA_PUBLIC_EXPONENT));
      }
      throw new CustosError("hsm_error", "unsupported public key type");
    });
  }

  async destroyKeyPair(ref: HsmKeyRef): Promise<void> {
    const templates = [refTemplate(pk.CKO_PRIVATE_KEY, ref), refTemplate(pk.CKO_PUBLIC_KEY, ref)];
    await this.#c.run("destroyKeyPair", async (ctx) => {
      this.#forgetCopies(ctx, privateName(ref));
      const handles = templates.flatMap((t) => findAll(ctx, [...t, ON_TOKEN]));
      // Nothing found is success only if we were really looking (logged in, token there).
      if (handles.length === 0) this.#c.assertAlive(ctx);
      for (const h of handles) ctx.p.C_DestroyObject(ctx.session, h);
    });
  }

  // --- HMAC ---------------------------------------------------------------------

  async ensureHmacKey(label: string): Promise<HsmKeyRef> {
    checkLabel(label);
    // Two concurrent first calls must not make two keys under one label.
    return this.#hmacEnsures.run(label, () =>
      this.#c.run("ensureHmacKey", async (ctx) => {
        const template = [
          ...ownKey(pk.CKO_SECRET_KEY),
          { type: pk.CKA_KEY_TYPE, value: pk.CKK_GENERIC_SECRET },
          { type: pk.CKA_LABEL, value: label },
          ON_TOKEN,
        ];
        const existing = findOne(ctx, template);
        if (existing) return { label, id: attribute(ctx, existing, pk.CKA_ID).toString("hex") };
        this.#c.assertAlive(ctx);
        const id = this.#randomId(ctx);
        await this.#generateOnToken(ctx, async (where) => [
          await ctx.p.C_GenerateKeyAsync(
            ctx.session,
            { mechanism: pk.CKM_GENERIC_SECRET_KEY_GEN },
            hmacKeyTemplate(label, id, where),
          ),
        ]);
        return { label, id: id.toString("hex") };
      }),
    );
  }

  async readData(label: string): Promise<Buffer[]> {
    checkLabel(label);
    return this.#c.run("readData", async (ctx) => {
      const objects = findAll(ctx, dataObjectTemplate(label));
      if (objects.length === 0) this.#c.assertAlive(ctx);
      return objects.map((o) => Buffer.from(attribute(ctx, o, pk.CKA_VALUE)));
    });
  }

  async writeData(label: string, value: Uint8Array): Promise<void> {
    checkLabel(label);
    const data = Buffer.from(bytes(value, "value"));
    if (data.length > MAX_DATA_OBJECT) throw new CustosError("invalid_request", "a data object holds at most 64 KiB");
    // A data object's value can't be changed in place (SoftHSM holds CKA_VALUE read-only): the new object is made
    // before the old ones go, so a crash in between leaves both, never neither.
    // Writes take turns, so the last call's value is the one kept.
    await this.#inTurn(() =>
      this.#c.run("writeData", async (ctx) => {
        const template = dataObjectTemplate(label);
        const old = findAll(ctx, template);
        if (old.length === 0) this.#c.assertAlive(ctx);
        ctx.p.C_CreateObject(ctx.session, [...template, { type: pk.CKA_VALUE, value: data }]);
        for (const o of old) ctx.p.C_DestroyObject(ctx.session, o);
      }),
    );
  }

  async hmac(ref: HsmKeyRef, data: Uint8Array): Promise<Buffer> {
    const input = bytes(data, "data");
    if (input.length === 0 || input.length > MAX_SIGN_INPUT) {
      throw new CustosError("invalid_request", "data to MAC must be 1 byte to 1 MiB");
    }
    const template = refTemplate(pk.CKO_SECRET_KEY, ref);
    return this.#c.run("hmac", async (ctx) => {
      const mac = await this.#withTokenObject(ctx, `hmac:${ref.label}:${ref.id}`, template, async (key) => {
        if (key.keyType !== pk.CKK_GENERIC_SECRET) throw new CustosError("invalid_request", "not an HMAC key");
        ctx.p.C_SignInit(ctx.session, { mechanism: pk.CKM_SHA256_HMAC }, key.handle);
        ctx.active = true;
        const signed = await ctx.p.C_SignAsync(ctx.session, input, Buffer.alloc(32));
        ctx.active = false;
        return Buffer.from(signed);
      });
      if (!mac) throw notFound(ref);
      return mac;
    });
  }

  // --- misc -----------------------------------------------------------------------

  async random(length: number): Promise<Buffer> {
    if (!Number.isInteger(length) || length < 1 || length > 1024) {
      throw new CustosError("invalid_request", "random length must be 1..1024 bytes");
    }
    return this.#c.run("random", async (ctx) => Buffer.from(ctx.p.C_GenerateRandom(ctx.session, Buffer.alloc(length))));
  }

  async close(): Promise<void> {
    this.#unwrapped.clear();
    this.#objects.clear();
    await this.#c.close();
    // After the connection's close: it waits for leased sessions, and every job holds one.
    await this.#thread.close();
    this.#pin.destroy();
  }

  // --- internals --------------------------------------------------------------------

  /**
   * Runs `use` with the unwrapped session object for `wrapped`, unwrapping it (once,
   * then from the cache) if needed.
   */
  async #withKey<T>(
    ctx: OpContext,
    wrapped: Buffer,
    purpose: "encrypt" | "decrypt",
    use: (key: Buffer) => Promise<T>,
  ): Promise<T> {
    const cacheKey = createHash("sha256").update(wrapped).digest("base64");
    let entry = this.#unwrapped.lookup(cacheKey, ctx.epoch);
    if (!entry) {
      const root = this.#requireRoot(ctx);
      let handle: Buffer;
      try {
        handle = await ctx.p.C_UnwrapKeyAsync(ctx.session, KEY_WRAP_PAD, root, wrapped, unwrappedAesTemplate());
      } catch (e) {
        const ckr = ckrOf(e);
        if (!ckr || !UNWRAP_REJECTED.has(ckr.name)) throw e;
        this.#c.assertAlive(ctx);
        if (purpose === "decrypt") throw decryptionFailed();
        throw new CustosError("invalid_request", "wrapped key was not made under this root key");
      }
      const fresh: UnwrappedKey = { handle, serial: ctx.serial, epoch: ctx.epoch, pins: 1, evicted: false };
      const inserted = this.#unwrapped.insert(cacheKey, fresh, this.#c.epoch);
      for (const h of inserted.destroy) this.#destroyQuietly(ctx, h);
      entry = inserted.entry;
    }
    try {
      return await use(entry.handle);
    } catch (e) {
      const name = ckrOf(e)?.name;
      if (HANDLE_INVALID.has(name ?? "")) {
        this.#unwrapped.evict(cacheKey, entry);
      }
      throw e;
    } finally {
      if (this.#unwrapped.unpin(entry)) this.#destroyQuietly(ctx, entry.handle);
    }
  }

  /** Up to two root keys on the token (two is one too many); an empty search is trusted only on a live session. */
  #rootsOnToken(ctx: OpContext): Buffer[] {
    const roots = findAll(ctx, [...this.#rootTemplate, ON_TOKEN], 2);
    if (roots.length === 0) this.#c.assertAlive(ctx);
    return roots;
  }

  #requireRoot(ctx: OpContext): Buffer {
    const root = this.#tokenObject(ctx, "root", this.#rootTemplate);
    if (!root) throw new CustosError("hsm_unavailable", "the token holds no root key (was it re-initialised?)");
    return root.handle;
  }

  /**
   * The handle this session uses for a token key: found once per session and epoch
   * (handles die with sessions and logins; every epoch change drops them all) and
   * copied into the session where the HSM allows it. An empty search is trusted only
   * after checking that the session is logged in and the token present.
   */
  #tokenObject(ctx: OpContext, name: string, template: Template): TokenObject | undefined {
    const key = objectKey(name, ctx.serial);
    const cached = this.#objects.get(key);
    if (cached && cached.epoch === ctx.epoch) {
      const now = performance.now();
      if (now - cached.checkedAt < COPY_RECHECK_MS) return cached;
      if (this.#sourceAlive(ctx, cached)) {
        cached.checkedAt = now;
        return cached;
      }
      // The key was destroyed on the token (by another keystore or process, say): only
      // this entry is stale, the session is fine. Search again; an empty search means
      // not_found.
      this.#forget(ctx, key, cached);
    }
    const handle = findOne(ctx, [...template, ON_TOKEN]);
    if (!handle) {
      this.#c.assertAlive(ctx);
      return undefined;
    }
    const keyType = ulongAttribute(ctx, handle, pk.CKA_KEY_TYPE);
    const copy = this.#sessionCopy(ctx, handle);
    const found: TokenObject = {
      handle: copy ?? handle,
      source: handle,
      checkedAt: performance.now(),
      epoch: ctx.epoch,
      serial: ctx.serial,
      keyType,
      copy: !!copy,
    };
    // A session of a past epoch is closed when released, and its copy with it.
    if (ctx.epoch === this.#c.epoch) this.#objects.set(key, found);
    return found;
  }

  /**
   * Runs `use` with this session's handle for a token key; undefined when there is no
   * such key. A key used straight from the token (no session copy: see #sessionCopy)
   * that another keystore or process destroyed answers CKR_KEY_HANDLE_INVALID. That is
   * the key gone, not the session: its entry is dropped and the search made again,
   * rather than every session rebuilt as for a session-class failure.
   */
  async #withTokenObject<T>(
    ctx: OpContext,
    name: string,
    template: Template,
    use: (key: TokenObject) => Promise<T>,
  ): Promise<T | undefined> {
    const key = this.#tokenObject(ctx, name, template);
    if (!key) return undefined;
    try {
      return await use(key);
    } catch (e) {
      if (!HANDLE_INVALID.has(ckrOf(e)?.name ?? "") || this.#sourceAlive(ctx, key)) throw e;
      this.#forget(ctx, objectKey(name, ctx.serial), key);
      const again = this.#tokenObject(ctx, name, template);
      return again && use(again);
    }
  }

  /** Drops a cached token key whose object is gone, and its session copy. */
  #forget(ctx: OpContext, cacheKey: string, object: TokenObject): void {
    this.#objects.delete(cacheKey);
    if (object.copy) this.#destroyQuietly(ctx, object.handle);
  }

  /**
   * Whether a cached key's token object still exists. A dead session or a lost login
   * answers with a session- or device-class CKR and is thrown as such; only the
   * object's own handle being invalid means the key itself is gone.
   */
  #sourceAlive(ctx: OpContext, object: TokenObject): boolean {
    try {
      ulongAttribute(ctx, object.source, pk.CKA_KEY_TYPE);
      return true;
    } catch (e) {
      if (ckrOf(e)?.name === "CKR_OBJECT_HANDLE_INVALID") return false;
      throw e;
    }
  }

  /**
   * A session copy of `handle`, or undefined when the HSM won't make one: CKA_COPYABLE
   * false, CKA_MODIFIABLE false (every key made since keys became unmodifiable: only
   * keys made before get copies), no C_CopyObject, or no room for more session objects
   * (an HSM's memory is small; running out of it here is no reason to rebuild the
   * connection).
   */
  #sessionCopy(ctx: OpContext, handle: Buffer): Buffer | undefined {
    try {
      return ctx.p.C_CopyObject(ctx.session, handle, SESSION_COPY);
    } catch (e) {
      const ckr = ckrOf(e);
      if (ckr && (classify(ckr.name) === "other" || ckr.name === "CKR_DEVICE_MEMORY")) return undefined;
      throw e;
    }
  }

  /** Destroys every session's copy of a key that is going away. */
  #forgetCopies(ctx: OpContext, name: string): void {
    for (const [key, object] of this.#objects) if (key.startsWith(`${name}@`)) this.#forget(ctx, key, object);
  }

  /** Records how long the *Init just took and says whether the data call should stay on this thread. */
  #inline(kind: "cipher" | "sign", started: number, length: number): boolean {
    this.#measured(kind, (performance.now() - started) * 1000);
    return this.#fast(kind) && length <= INLINE_MAX_BYTES;
  }

  /**
   * Runs `fn` over `items` as single calls, a few more at a time than the pool has
   * sessions: each call's deadline then starts when it can run, rather than a
   * thousand of them waiting out their deadlines in the session queue of a slow HSM.
   */
  async #eachOnPool<T>(items: readonly T[], fn: (item: T) => Promise<void>): Promise<void> {
    let next = 0;
    const lane = async (): Promise<void> => {
      while (next < items.length) await fn(items[next++] as T);
    };
    const lanes = Math.min(items.length, 2 * this.#c.health().sessions.size);
    await Promise.all(Array.from({ length: lanes }, lane));
  }

  /** Runs `fn` once every earlier one-at-a-time operation of this keystore has settled. */
  #inTurn<T>(fn: () => Promise<T>): Promise<T> {
    const turn = this.#turns.then(fn);
    this.#turns = turn.catch(() => {});
    return turn;
  }

  /** Folds one C_*Init latency, in microseconds, into the module's moving average. */
  #measured(kind: "cipher" | "sign", us: number): void {
    this.#initUs[kind] = this.#initUs[kind] * 0.9 + us * 0.1;
  }

  /**
   * Whether the module answers `kind` like a local token (see INLINE_MAX_US): then a
   * batch goes to the HSM thread as one job and a signature runs there whole. A
   * network HSM answers each call in milliseconds; its calls stay single and async,
   * spread over the pooled sessions. The thread reports its own C_*Init latencies,
   * so a module that slows down is noticed either way.
   */
  #fast(kind: "cipher" | "sign"): boolean {
    return this.#inlineAllowed && this.#initUs[kind] < INLINE_MAX_US[kind];
  }

  /** IVs come from the HSM's RNG in batches: one C_GenerateRandom per 256 encryptions. */
  #nextIv(ctx: OpContext): Buffer {
    if (this.#ivOffset + GCM_IV_LENGTH > this.#ivs.length) {
      this.#ivs = ctx.p.C_GenerateRandom(ctx.session, Buffer.alloc(GCM_IV_LENGTH * IV_BATCH));
      this.#ivOffset = 0;
    }
    const iv = Buffer.from(this.#ivs.subarray(this.#ivOffset, this.#ivOffset + GCM_IV_LENGTH));
    this.#ivs.fill(0, this.#ivOffset, this.#ivOffset + GCM_IV_LENGTH);
    this.#ivOffset += GCM_IV_LENGTH;
    return iv;
  }

  #randomId(ctx: OpContext): Buffer {
    return ctx.p.C_GenerateRandom(ctx.session, Buffer.alloc(ID_LENGTH));
  }

  /**
   * Makes the objects `generate` makes (a key or a pair) on the token, and lets them
   * stand as #keepCreated says. SoftHSM re-reads a token's directory without holding
   * the token's lock, and a re-read on one thread that overlaps an object's creation on
   * another drops the new object from the process's view for good (its file stays; the
   * next process sees it): two keystores racing to make the root key were both told
   * they had made it, 4 times in 1,000 races on a busy machine. Every search runs on
   * this thread, so the slow part (generation) runs off it as session objects, and
   * only their copies onto the token are made here, where no search can overlap them.
   * An HSM that can't copy objects generates straight onto its token instead.
   */
  async #generateOnToken(ctx: OpContext, generate: (where: KeyBirthplace) => Promise<Buffer[]>): Promise<Buffer[]> {
    const inSession = await generate("session");
    let onToken: Buffer[] = [];
    try {
      for (const handle of inSession) onToken.push(ctx.p.C_CopyObject(ctx.session, handle, TOKEN_COPY));
    } catch (e) {
      for (const handle of onToken) this.#destroyQuietly(ctx, handle);
      const ckr = ckrOf(e);
      if (!ckr || classify(ckr.name) !== "other") throw e;
      onToken = await generate("token");
    } finally {
      for (const handle of inSession) this.#destroyQuietly(ctx, handle);
    }
    this.#keepCreated(ctx, onToken);
    return onToken;
  }

  /**
   * Lets objects a call has just created stand, unless the caller already gave up on
   * the call at its deadline: it was told hsm_unavailable and holds no reference to
   * them, so they are destroyed rather than left on the token for nobody.
   */
  #keepCreated(ctx: OpContext, handles: Buffer[]): void {
    if (!ctx.abandoned) return;
    for (const h of handles) this.#destroyQuietly(ctx, h);
    throw new CustosError("hsm_unavailable", "call abandoned at its deadline; what it created was destroyed");
  }

  #destroyQuietly(ctx: OpContext, handle: Buffer): void {
    try {
      ctx.p.C_DestroyObject(ctx.session, handle);
    } catch {
      // The object may already be gone with its session; nothing else to do.
    }
  }
}

interface SignPlan {
  readonly mechanism: Mechanism;
  readonly input: Buffer;
  readonly keyType: number;
  readonly maxLength: number;
}

function signPlan(scheme: SignatureScheme, data: Buffer): SignPlan {
  switch (scheme) {
    case "ecdsa-p256-sha256":
      // SoftHSM offers only raw CKM_ECDSA: hash here, sign the digest there.
      return {
        mechanism: { mechanism: pk.CKM_ECDSA },
        input: createHash("sha256").update(data).digest(),
        keyType: pk.CKK_EC,
        maxLength: 132,
      };
    case "ed25519":
      return { mechanism: { mechanism: CKM_EDDSA }, input: data, keyType: CKK_EC_EDWARDS, maxLength: 64 };
    case "rsa-pkcs1-sha256":
      return { mechanism: { mechanism: pk.CKM_SHA256_RSA_PKCS }, input: data, keyType: pk.CKK_RSA, maxLength: 1024 };
    case "rsa-pss-sha256": {
      const parameter: RsaPSS = {
        type: pk.CK_PARAMS_RSA_PSS,
        hashAlg: pk.CKM_SHA256,
        mgf: pk.CKG_MGF1_SHA256,
        saltLen: 32,
      };
      return {
        mechanism: { mechanism: pk.CKM_SHA256_RSA_PKCS_PSS, parameter },
        input: data,
        keyType: pk.CKK_RSA,
        maxLength: 1024,
      };
    }
    default:
      throw new CustosError("invalid_request", "unsupported signature scheme");
  }
}
