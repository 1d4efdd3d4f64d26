/**
 * The envelope's KMS interface over the Custos HTTPS API. The client brings TLS with
 * the configured CA, keep-alive and retries on `hsm_unavailable`; this adds batching:
 * data-key requests made in the same tick for the same key go as one batch call, so a
 * storage layer opening many objects at once pays one round trip, not one each.
 */
import { type CustosClient, clientFromEnv, type EnvClientOptions } from "../client/index.js";
import type { EncryptionContext } from "../context/index.js";
import { Secret } from "../secret/index.js";
import {
  type DataKey,
  type EnvelopeKms,
  type ItemResult,
  isItemError,
  itemError,
  KmsItemError,
  type Rewrapped,
  type UnwrappedKey,
} from "./kms.js";

/** The API's limit on items per batch call. */
const MAX_BATCH = 1000;

interface KeyAnswer {
  plaintext: string;
  ciphertext?: string;
  version: number;
}

type ItemError = { error: { code: string; message: string } };

export function httpKms(client: CustosClient): EnvelopeKms {
  const path = (keyName: string, op: string) => `/v1/keys/${encodeURIComponent(keyName)}/${op}`;
  const generate = new Coalescer<{ context: EncryptionContext }, KeyAnswer>((keyName, items) =>
    client.request("POST", path(keyName, "datakey"), { body: items.length === 1 ? items[0] : { items } }),
  );
  const decrypt = new Coalescer<{ ciphertext: string; context: EncryptionContext }, KeyAnswer>((keyName, items) =>
    client.request("POST", path(keyName, "decrypt"), { body: items.length === 1 ? items[0] : { items } }),
  );
  return {
    async generateDataKey(keyName, context): Promise<DataKey> {
      const answer = await generate.call(keyName, { context });
      return { plaintext: secretOf(answer), wrapped: answer.ciphertext as string, version: answer.version };
    },
    async decryptDataKey(keyName, wrapped, context): Promise<UnwrappedKey> {
      const answer = await decrypt.call(keyName, { ciphertext: wrapped, context });
      return { plaintext: secretOf(answer), version: answer.version };
    },
    async rewrapDataKeys(keyName, items): Promise<ItemResult<Rewrapped>[]> {
      const out: ItemResult<Rewrapped>[] = [];
      for (let at = 0; at < items.length; at += MAX_BATCH) {
        const body = {
          items: items.slice(at, at + MAX_BATCH).map((i) => ({ ciphertext: i.wrapped, context: i.context })),
        };
        const answer = await client.request<{ items: ItemResult<{ ciphertext: string; version: number }>[] }>(
          "POST",
          path(keyName, "rewrap"),
          { body },
        );
        for (const item of answer.items) {
          out.push(isItemError(item) ? item : { wrapped: item.ciphertext, version: item.version });
        }
      }
      return out;
    },
  };
}

/** `httpKms` over a client configured from CUSTOS_ADDR, CUSTOS_TOKEN(_FILE) and CUSTOS_CACERT. */
export function httpKmsFromEnv(
  env: NodeJS.ProcessEnv = process.env,
  options: EnvClientOptions = {},
): { kms: EnvelopeKms; close(): void } {
  const client = clientFromEnv(env, options);
  return { kms: httpKms(client), close: () => client.close() };
}

/** The base64 plaintext of an answer as a Secret (the JSON string itself can't be zeroed). */
function secretOf(answer: KeyAnswer): Secret {
  return Secret.adopt(Buffer.from(answer.plaintext, "base64"));
}

interface Waiting<I, A> {
  readonly item: I;
  resolve(answer: A): void;
  reject(error: unknown): void;
}

/**
 * Gathers calls made in the same tick per key name and sends them as one request
 * (the single form when there is one). Each caller gets its own item's answer or error.
 */
class Coalescer<I, A extends object> {
  readonly #pending = new Map<string, Waiting<I, A>[]>();

  constructor(private readonly send: (keyName: string, items: I[]) => Promise<A | { items: (A | ItemError)[] }>) {}

  call(keyName: string, item: I): Promise<A> {
    return new Promise<A>((resolve, reject) => {
      let queue = this.#pending.get(keyName);
      if (queue === undefined) {
        queue = [];
        this.#pending.set(keyName, queue);
        process.nextTick(() => this.#flush(keyName));
      }
      queue.push({ item, resolve, reject });
    });
  }

  #flush(keyName: string): void {
    const queue = this.#pending.get(keyName) ?? [];
    this.#pending.delete(keyName);
    for (let at = 0; at < queue.length; at += MAX_BATCH) {
      const group = queue.slice(at, at + MAX_BATCH);
      this.send(
        keyName,
        group.map((w) => w.item),
      ).then(
        (answer) => {
          if (group.length === 1) {
            (group[0] as Waiting<I, A>).resolve(answer as A);
            return;
          }
          const items = (answer as { items: (A | ItemError)[] }).items;
          group.forEach((w, i) => {
            const r = items[i];
            if (r === undefined) w.reject(new KmsItemError("internal", "the KMS answered fewer items than asked"));
            else if ("error" in r) w.reject(itemError(r));
            else w.resolve(r);
          });
        },
        (error) => {
          for (const w of group) w.reject(error);
        },
      );
    }
  }
}
