/**
 * The envelope's KMS interface over the real KmsService in process (real SoftHSM
 * token, real store, real audit), for tests that don't need HTTP in between.
 */
import type { Actor } from "../../src/audit/index.js";
import type { EncryptionContext } from "../../src/context/index.js";
import type { EnvelopeKms } from "../../src/envelope/index.js";
import type { KmsService } from "../../src/kms/index.js";

export interface CountingKms extends EnvelopeKms {
  /** Calls made, by method. */
  readonly calls: { generate: number; decrypt: number; rewrap: number };
}

export function serviceKms(kms: KmsService, actor: Actor): CountingKms {
  const calls = { generate: 0, decrypt: 0, rewrap: 0 };
  return {
    calls,
    async generateDataKey(keyName: string, context: EncryptionContext) {
      calls.generate++;
      const r = await kms.generateDataKey(actor, keyName, { context });
      if (r.plaintext === undefined) throw new Error("datakey without plaintext");
      return { plaintext: r.plaintext, wrapped: r.ciphertext, version: r.version };
    },
    async decryptDataKey(keyName: string, wrapped: string, context: EncryptionContext) {
      calls.decrypt++;
      return kms.decrypt(actor, keyName, { ciphertext: wrapped, context });
    },
    async rewrapDataKeys(keyName, items) {
      calls.rewrap++;
      const results = await kms.rewrapBatch(
        actor,
        keyName,
        items.map((i) => ({ ciphertext: i.wrapped, context: i.context })),
      );
      return results.map((r) =>
        r.ok ? { wrapped: r.value.ciphertext, version: r.value.version } : { error: r.error },
      );
    },
  };
}
