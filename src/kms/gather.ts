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

/** Calls of one kind, queued per wrapped key until the event loop turns; a queue of one is sent alone. */
class Gathered<M, R> {
  readonly #one: (wrappedKey: Buffer, message: M) => Promise<R>;
  readonly #many: (wrappedKey: Buffer, messages: M[]) => Promise<unknown[]>;
  #queues = new Map<Buffer, Array<Waiting<M, R>>>();

  constructor(
    one: (wrappedKey: Buffer, message: M) => Promise<R>,
    many: (wrappedKey: Buffer, messages: M[]) => Promise<unknown[]>,
  ) {
    this.#one = one;
    this.#many = many;
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
      const [only] = queue;
      if (queue.length === 1 && only) {
        this.#one(wrappedKey, only.message).then(only.resolve, only.reject);
        continue;
      }
      this.#many(
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
 * The cipher every KMS operation shares. Each operation (and each item of a batch)
 * makes single encrypt/decrypt calls; the calls made before the event loop next
 * turns are sent as one `encryptMany`/`decryptMany` per wrapped key (that is, per key
 * version), which runs on the HSM thread, and a lone call stays a single call. A
 * 1000-item batch is then one HSM job per version instead of 1000 calls; under load,
 * the requests that arrive together share one, which takes their AES-GCM off the
 * event loop (datakey at c=64 spent 150 µs of event-loop time a request, and 126 µs
 * with this). A caller's result or error is still its own.
 */
export function gatheringCipher(keystore: Keystore): KeyCipher {
  const encrypts = new Gathered<GcmMessage, GcmCiphertext>(
    (key, m) => keystore.encrypt(key, m.plaintext, m.aad),
    (key, messages) => keystore.encryptMany(key, messages),
  );
  const decrypts = new Gathered<GcmSealed, Secret>(
    (key, m) => keystore.decrypt(key, m.iv, m.ciphertext, m.aad),
    (key, messages) => keystore.decryptMany(key, messages),
  );
  return {
    encrypt: (wrappedKey, plaintext, aad) => encrypts.add(wrappedKey, { plaintext, aad }),
    decrypt: (wrappedKey, iv, ciphertext, aad) => decrypts.add(wrappedKey, { iv, ciphertext, aad }),
  };
}
