import { isCustosError } from "../errors/index.js";
import type { GcmCiphertext, GcmMessage, GcmSealed, Keystore } from "../hsm/index.js";
import type { Secret } from "../secret/index.js";

/** The keystore calls one KMS operation makes on a key's material. */
export type KeyCipher = Pick<Keystore, "encrypt" | "decrypt">;

interface Waiting<M, R> {
  readonly message: M;
  readonly resolve: (result: R) => void;
  readonly reject: (error: unknown) => void;
}

/** Calls of one kind, queued per wrapped key until the event loop turns. */
class Gathered<M, R> {
  readonly #send: (wrappedKey: Buffer, messages: M[]) => Promise<unknown[]>;
  #queues = new Map<Buffer, Array<Waiting<M, R>>>();

  constructor(send: (wrappedKey: Buffer, messages: M[]) => Promise<unknown[]>) {
    this.#send = send;
  }

  add(wrappedKey: Buffer, message: M): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      if (this.#queues.size === 0) setImmediate(() => this.#flush());
      let queue = this.#queues.get(wrappedKey);
      if (!queue) {
        queue = [];
        this.#queues.set(wrappedKey, queue);
      }
      queue.push({ message, resolve, reject });
    });
  }

  #flush(): void {
    const queues = this.#queues;
    this.#queues = new Map();
    for (const [wrappedKey, queue] of queues) {
      this.#send(
        wrappedKey,
        queue.map((w) => w.message),
      ).then(
        (results) => {
          queue.forEach((w, i) => {
            const result = results[i];
            if (isCustosError(result)) w.reject(result);
            else w.resolve(result as R);
          });
        },
        (error: unknown) => {
          for (const w of queue) w.reject(error);
        },
      );
    }
  }
}

/**
 * The cipher a batch's items share. Each item runs as it would alone and makes single
 * encrypt/decrypt calls; the calls made before the event loop next turns are sent as
 * one `encryptMany`/`decryptMany` per wrapped key (that is, per key version). A
 * 1000-item batch is then one HSM job per version instead of 1000 calls, and an
 * item's result or error is still its own.
 */
export function gatheringCipher(keystore: Keystore): KeyCipher {
  const encrypts = new Gathered<GcmMessage, GcmCiphertext>((key, messages) => keystore.encryptMany(key, messages));
  const decrypts = new Gathered<GcmSealed, Secret>((key, messages) => keystore.decryptMany(key, messages));
  return {
    encrypt: (wrappedKey, plaintext, aad) => encrypts.add(wrappedKey, { plaintext, aad }),
    decrypt: (wrappedKey, iv, ciphertext, aad) => decrypts.add(wrappedKey, { iv, ciphertext, aad }),
  };
}
