import type { Actor } from "../audit/index.js";
import type { EncryptionContext } from "../context/index.js";
import type { Secret } from "../secret/index.js";
import * as batch from "./batch.js";
import { gatheringCipher } from "./gather.js";
import type { KmsContext } from "./internal.js";
import * as keys from "./keys.js";
import * as ops from "./operations.js";
import { runDue } from "./schedule.js";
import { openFor, openManyFor, sealFor } from "./sealing.js";
import * as signing from "./signing.js";
import type {
  BatchItemResult,
  CreateKeyInput,
  DataKeyInput,
  DataKeyResult,
  DecryptInput,
  DecryptResult,
  EncryptInput,
  EncryptResult,
  KeyDetails,
  KeyInfo,
  KmsDeps,
  ListKeysInput,
  RewrapInput,
  RewrapResult,
  RunDueResult,
  ScheduleDestructionInput,
  SignInput,
  SignResult,
  UpdateKeyInput,
  VerifyInput,
  VerifyResult,
} from "./types.js";

/**
 * Named, versioned keys and the operations on them. State changes commit with their
 * audit entry atomically in the store; crypto operations are audited after the HSM
 * work and before returning, so a caller never gets a result that wasn't recorded
 * (`audit_unavailable` instead). Plain reads (`listKeys`, `getKey`) are not audited
 * here: the API records every request that the service doesn't.
 */
export class KmsService {
  readonly #ctx: KmsContext;

  constructor(deps: KmsDeps) {
    const clock = deps.clock ?? (() => new Date());
    this.#ctx = {
      keystore: deps.keystore,
      cipher: gatheringCipher(deps.keystore),
      store: deps.store,
      audit: deps.audit,
      now: clock,
      minDestructionWaitSeconds: deps.minDestructionWaitSeconds ?? 86400,
    };
  }

  // --- key management -------------------------------------------------------

  /** Creates a key with version 1 generated in the HSM. `conflict` if the name is taken. */
  createKey(_actor: Actor, input: CreateKeyInput): Promise<KeyDetails> {
    return keys.createKey(this.#ctx, _actor, input);
  }

  /** Key metadata in name order; `after` paginates. */
  listKeys(_actor: Actor, input: ListKeysInput = {}): Promise<KeyInfo[]> {
    return keys.listKeys(this.#ctx, input);
  }

  /** Metadata and versions (public keys of sign keys as PEM; never material). */
  getKey(_actor: Actor, name: string): Promise<KeyDetails> {
    return keys.getKey(this.#ctx, name);
  }

  /** Adds version latestVersion+1; concurrent rotations each get their own version. */
  rotateKey(actor: Actor, name: string): Promise<KeyDetails> {
    return keys.rotateKey(this.#ctx, actor, name);
  }

  /** Description, rotation period (null stops it), minDecryptionVersion (raise only). */
  updateKey(actor: Actor, name: string, input: UpdateKeyInput): Promise<KeyDetails> {
    return keys.updateKey(this.#ctx, actor, name, input);
  }

  disableKey(actor: Actor, name: string): Promise<KeyDetails> {
    return keys.disableKey(this.#ctx, actor, name);
  }

  enableKey(actor: Actor, name: string): Promise<KeyDetails> {
    return keys.enableKey(this.#ctx, actor, name);
  }

  /** Enabled or disabled → pending_destruction; default wait 30 days, never below the configured minimum. */
  scheduleDestruction(actor: Actor, name: string, input: ScheduleDestructionInput = {}): Promise<KeyDetails> {
    return keys.scheduleDestruction(this.#ctx, actor, name, input);
  }

  /** pending_destruction → disabled. */
  cancelDestruction(actor: Actor, name: string): Promise<KeyDetails> {
    return keys.cancelDestruction(this.#ctx, actor, name);
  }

  /** Destroys every version now, from any state (privileged). */
  destroyKey(actor: Actor, name: string): Promise<KeyDetails> {
    return keys.destroyKey(this.#ctx, actor, name);
  }

  /** Performs due destructions and automatic rotations; the composition root calls it on a timer. */
  runDue(now: Date = this.#ctx.now()): Promise<RunDueResult> {
    return runDue(this.#ctx, now);
  }

  // --- encryption -------------------------------------------------------------

  encrypt(actor: Actor, name: string, input: EncryptInput): Promise<EncryptResult> {
    return ops.encrypt(this.#ctx, actor, name, input);
  }

  decrypt(actor: Actor, name: string, input: DecryptInput): Promise<DecryptResult> {
    return ops.decrypt(this.#ctx, actor, name, input);
  }

  rewrap(actor: Actor, name: string, input: RewrapInput): Promise<RewrapResult> {
    return ops.rewrap(this.#ctx, actor, name, input);
  }

  generateDataKey(actor: Actor, name: string, input: DataKeyInput = {}): Promise<DataKeyResult> {
    return ops.generateDataKey(this.#ctx, actor, name, input);
  }

  encryptBatch(actor: Actor, name: string, items: readonly EncryptInput[]): Promise<BatchItemResult<EncryptResult>[]> {
    return batch.encryptBatch(this.#ctx, actor, name, items);
  }

  decryptBatch(actor: Actor, name: string, items: readonly DecryptInput[]): Promise<BatchItemResult<DecryptResult>[]> {
    return batch.decryptBatch(this.#ctx, actor, name, items);
  }

  rewrapBatch(actor: Actor, name: string, items: readonly RewrapInput[]): Promise<BatchItemResult<RewrapResult>[]> {
    return batch.rewrapBatch(this.#ctx, actor, name, items);
  }

  generateDataKeyBatch(
    actor: Actor,
    name: string,
    items: readonly DataKeyInput[],
  ): Promise<BatchItemResult<DataKeyResult>[]> {
    return batch.generateDataKeyBatch(this.#ctx, actor, name, items);
  }

  // --- for services that audit their own operations ------------------------

  /**
   * Encrypts under the key's latest version without a `key.encrypt` record: for a
   * service (secrets) that writes its own record per operation, atomically with its
   * change. Not exposed by the API. See sealing.ts.
   */
  sealFor(name: string, plaintext: Uint8Array, context: EncryptionContext): Promise<string> {
    return sealFor(this.#ctx, name, plaintext, context);
  }

  /**
   * Decrypts what `sealFor` made, without a `key.decrypt` record (the calling service
   * audits the read). A destroyed key answers `key_destroyed`; the caller owns the `Secret`.
   */
  openFor(name: string, ciphertext: string, context: EncryptionContext): Promise<Secret> {
    return openFor(this.#ctx, name, ciphertext, context);
  }

  /** `openFor` over several ciphertexts of one key, all or nothing. See sealing.ts. */
  openManyFor(
    name: string,
    items: readonly { readonly ciphertext: string; readonly context: EncryptionContext }[],
  ): Promise<Secret[]> {
    return openManyFor(this.#ctx, name, items);
  }

  // --- signing and randomness -----------------------------------------------

  sign(actor: Actor, name: string, input: SignInput): Promise<SignResult> {
    return signing.sign(this.#ctx, actor, name, input);
  }

  verify(actor: Actor, name: string, input: VerifyInput): Promise<VerifyResult> {
    return signing.verify(this.#ctx, actor, name, input);
  }

  /** 1..1024 bytes from the HSM's RNG. */
  random(actor: Actor, bytes: number): Promise<Buffer> {
    return ops.random(this.#ctx, actor, bytes);
  }
}
