/**
 * The small KMS interface the envelope library needs. `httpKms` implements it over
 * the Custos API; tests and embedders may implement it over anything else.
 */
import type { EncryptionContext } from "../context/index.js";
import type { Secret } from "../secret/index.js";

/** A fresh data key: the plaintext (owned by the receiver, who must destroy it) and its wrapped form. */
export interface DataKey {
  readonly plaintext: Secret;
  /** The KMS ciphertext of the data key (`custos:v1:…`), with the context as AAD. */
  readonly wrapped: string;
  /** The key version it is wrapped under. */
  readonly version: number;
}

export interface UnwrappedKey {
  readonly plaintext: Secret;
  readonly version: number;
}

/** One item of a batch answer: a value, or the error the KMS gave for that item. */
export type ItemResult<T> = T | { readonly error: { readonly code: string; readonly message: string } };

export interface Rewrapped {
  readonly wrapped: string;
  readonly version: number;
}

/**
 * Errors thrown by an implementation carry a string `code` (the Custos error codes):
 * `decryption_failed` and `not_found` from `decryptDataKey` become the envelope's
 * uniform `decryption_failed`; every other error reaches the caller as it is.
 */
export interface EnvelopeKms {
  generateDataKey(keyName: string, context: EncryptionContext): Promise<DataKey>;
  decryptDataKey(keyName: string, wrapped: string, context: EncryptionContext): Promise<UnwrappedKey>;
  /** Rewraps each data key under the key's newest version, inside the KMS. Answers in the same order. */
  rewrapDataKeys(
    keyName: string,
    items: readonly { readonly wrapped: string; readonly context: EncryptionContext }[],
  ): Promise<ItemResult<Rewrapped>[]>;
}

/** One item's failure in a batch answer, as an error with the KMS's code (the client's errors have one too). */
export class KmsItemError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "KmsError";
  }
}

export function itemError(item: { readonly error: { readonly code: string; readonly message: string } }): KmsItemError {
  return new KmsItemError(item.error.code, item.error.message);
}

export function isItemError<T extends object>(
  item: ItemResult<T>,
): item is { readonly error: { readonly code: string; readonly message: string } } {
  return "error" in item;
}
