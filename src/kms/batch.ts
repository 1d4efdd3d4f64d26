import type { Actor } from "../audit/index.js";
import { canonicalContext, type EncryptionContext, validateContext } from "../context/index.js";
import { CustosError, type ErrorCode, isCustosError } from "../errors/index.js";
import { Secret } from "../secret/index.js";
import { open, preloadedView, reseal, seal, sealInput } from "./crypto.js";
import { type KmsContext, loadKey, recordOp } from "./internal.js";
import { assertUsable } from "./state.js";
import type {
  BatchItemResult,
  DataKeyInput,
  DataKeyResult,
  DecryptInput,
  DecryptResult,
  EncryptInput,
  EncryptResult,
  RewrapInput,
  RewrapResult,
} from "./types.js";
import { checkBatch, checkDataKeyBytes, checkName, checkWithPlaintext } from "./validate.js";

/** Bytes drawn from the HSM's RNG per call when a batch pre-draws its data keys. */
const RANDOM_CHUNK = 1024;

function failure(e: unknown): { ok: false; error: { code: ErrorCode; message: string } } {
  // Unexpected errors keep their detail internal, as at the API edge.
  if (!isCustosError(e) || e.code === "internal")
    return { ok: false, error: { code: "internal", message: "internal error" } };
  return { ok: false, error: { code: e.code, message: e.message } };
}

function success<T extends object>(value: T): BatchItemResult<T> {
  return { ok: true, value, ...value };
}

/**
 * The shared shape of every batch: key-level checks once (a missing, disabled or
 * wrong-purpose key fails the whole call), versions read once, items run bounded and
 * concurrently with per-item errors, then one audit record with the counts. If that
 * record can't be written, every plaintext produced is zeroed and the caller gets
 * the audit error instead of results.
 */
async function runBatch<I extends { readonly context?: unknown }, R extends { readonly version: number }>(
  ctx: KmsContext,
  actor: Actor,
  name: string,
  items: unknown,
  op: {
    action: string;
    decrypts: boolean;
    secretOf?: (r: R) => Secret | undefined;
    /** What the record says of the successful items beyond versions and contexts. */
    summary?: (succeeded: readonly I[]) => Record<string, unknown>;
  },
  /** One item's work, given its context as `checkContexts` validated it. */
  item: (
    view: Awaited<ReturnType<typeof preloadedView>>,
    input: I,
    context: EncryptionContext,
    i: number,
  ) => Promise<R>,
  prepare?: (inputs: readonly I[]) => Promise<() => void>,
): Promise<BatchItemResult<R>[]> {
  checkName(name);
  const inputs = checkBatch<I>(items);
  const contexts = checkContexts(inputs);
  const key = await loadKey(ctx, name);
  assertUsable(key, "encrypt", op.decrypts ? "decrypt" : "other");
  const view = await preloadedView(ctx, key);
  const cleanup = prepare ? await prepare(inputs) : () => {};
  let results: BatchItemResult<R>[];
  // What an item meets (a bad plaintext, a ciphertext that doesn't open) is its own
  // result; Custos or its HSM failing is the whole batch's, answered as a single call
  // would be (503 hsm_unavailable), so that clients retry it.
  let outage: unknown;
  try {
    // All at once: the KMS cipher gathers the items' HSM calls into one job per key version.
    results = await Promise.all(
      inputs.map(async (input, i) => {
        try {
          if (typeof input !== "object" || input === null) {
            return failure(new CustosError("invalid_request", "item must be an object"));
          }
          return success(await item(view, input, contexts[i] as EncryptionContext, i));
        } catch (e) {
          if (!isCustosError(e) || !e.isClientError) outage ??= e;
          return failure(e);
        }
      }),
    );
  } finally {
    cleanup();
  }
  const destroySecrets = () => {
    for (const r of results) if (r.ok) op.secretOf?.(r.value)?.destroy();
  };
  if (outage !== undefined) {
    destroySecrets();
    throw outage;
  }
  const succeeded = inputs.filter((_, i) => results[i]?.ok);
  try {
    await recordOp(ctx, actor, op.action, name, {
      batch: true,
      items: inputs.length,
      succeeded: succeeded.length,
      failed: inputs.length - succeeded.length,
      ...usedBy(contexts, results),
      ...op.summary?.(succeeded),
    });
  } catch (e) {
    destroySecrets();
    throw e;
  }
  return results;
}

/**
 * Every item's context, checked before any work: a context that breaks the limits
 * makes the batch malformed, and a malformed batch is refused whole, naming the item.
 * The API's schema can't be the only check: it counts code points, so 129 emoji (258
 * UTF-16 units) or a lone surrogate pass it. An item that is not an object has no
 * context here and fails on its own. The items and the audit record use these, so
 * each context is validated once.
 */
function checkContexts(inputs: readonly { readonly context?: unknown }[]): EncryptionContext[] {
  return inputs.map((input, i) => {
    try {
      return validateContext(typeof input === "object" && input !== null ? input.context : undefined);
    } catch (e) {
      if (!isCustosError(e)) throw e;
      throw new CustosError("invalid_request", `items[${i}]: ${e.message}`);
    }
  });
}

/**
 * The versions and contexts a batch's successful items used, each once, so that the
 * batch's one record says what a record per item would have (a single operation
 * records its version and context, a rewrap also the version it read from).
 */
function usedBy<R extends { readonly version: number; readonly fromVersion?: number }>(
  contexts: readonly EncryptionContext[],
  results: readonly BatchItemResult<R>[],
): { fromVersions?: number[]; versions: number[]; contexts: EncryptionContext[] } {
  const fromVersions = new Set<number>();
  const versions = new Set<number>();
  const used = new Map<string, EncryptionContext>();
  // Contexts as sent, first: the canonical encoding is built once per spelling.
  const spellings = new Set<string>();
  results.forEach((r, i) => {
    const context = contexts[i];
    if (!r.ok || context === undefined) return;
    if (r.value.fromVersion !== undefined) fromVersions.add(r.value.fromVersion);
    versions.add(r.value.version);
    const spelling = JSON.stringify(context);
    if (spellings.has(spelling)) return;
    spellings.add(spelling);
    used.set(canonicalContext(context).toString("latin1"), context);
  });
  return {
    ...(fromVersions.size > 0 ? { fromVersions: distinct([...fromVersions]) } : {}),
    versions: distinct([...versions]),
    contexts: [...used.values()],
  };
}

/** Encrypts up to 1000 items under one key. */
export function encryptBatch(ctx: KmsContext, actor: Actor, name: string, items: readonly EncryptInput[]) {
  return runBatch<EncryptInput, EncryptResult>(
    ctx,
    actor,
    name,
    items,
    { action: "key.encrypt", decrypts: false },
    (view, input, context) => sealInput(view, input, context),
  );
}

/** Decrypts up to 1000 ciphertexts of one key; each success's `plaintext` is the caller's to destroy. */
export function decryptBatch(ctx: KmsContext, actor: Actor, name: string, items: readonly DecryptInput[]) {
  return runBatch<DecryptInput, DecryptResult>(
    ctx,
    actor,
    name,
    items,
    { action: "key.decrypt", decrypts: true, secretOf: (r) => r.plaintext },
    (view, input, context) => open(view, input.ciphertext, context),
  );
}

/** Moves up to 1000 ciphertexts of one key to its latest version. */
export async function rewrapBatch(
  ctx: KmsContext,
  actor: Actor,
  name: string,
  items: readonly RewrapInput[],
): Promise<BatchItemResult<RewrapResult>[]> {
  const results = await runBatch<RewrapInput, RewrapResult & { fromVersion: number }>(
    ctx,
    actor,
    name,
    items,
    { action: "key.rewrap", decrypts: true },
    (view, input, context) => reseal(view, input.ciphertext, context),
  );
  // The versions read from went into the batch's record; the answer leaves them out, as a single rewrap's does.
  return results.map((r) => {
    if (!r.ok) return r;
    const { fromVersion: _, ...value } = r.value;
    return { ok: true as const, value, ...value };
  });
}

/**
 * Up to 1000 data keys under one key's latest version. The random bytes for all of
 * them are drawn up front in a few large RNG calls, so each item costs one HSM
 * operation (the AES-GCM encryption), not two.
 */
export function generateDataKeyBatch(ctx: KmsContext, actor: Actor, name: string, items: readonly DataKeyInput[]) {
  let pool: Buffer = Buffer.alloc(0);
  const offsets: number[] = [];
  const prepare = async (inputs: readonly DataKeyInput[]): Promise<() => void> => {
    let total = 0;
    for (const input of inputs) {
      offsets.push(total);
      total += safeBytes(input);
    }
    const chunks: Buffer[] = [];
    for (let drawn = 0; drawn < total; drawn += RANDOM_CHUNK) {
      chunks.push(await ctx.keystore.random(Math.min(RANDOM_CHUNK, total - drawn)));
    }
    pool = Buffer.concat(chunks);
    for (const c of chunks) c.fill(0);
    return () => pool.fill(0);
  };
  return runBatch<DataKeyInput, DataKeyResult>(
    ctx,
    actor,
    name,
    items,
    {
      action: "key.datakey",
      decrypts: false,
      secretOf: (r) => r.plaintext,
      // A single data key's record has its size and whether its plaintext was handed out: these are every value seen.
      summary: (succeeded) => ({
        bytes: distinct(succeeded.map((input) => checkDataKeyBytes(input.bytes))),
        withPlaintext: distinct(succeeded.map((input) => checkWithPlaintext(input.withPlaintext))),
      }),
    },
    async (view, input, context, i) => {
      const bytes = checkDataKeyBytes(input.bytes);
      const start = offsets[i] ?? 0;
      const plaintext = Secret.copy(pool.subarray(start, start + bytes));
      try {
        const sealed = await plaintext.use((b) => seal(view, b, context, view.key.latestVersion));
        if (!checkWithPlaintext(input.withPlaintext)) {
          plaintext.destroy();
          return sealed;
        }
        return { ...sealed, plaintext };
      } catch (e) {
        plaintext.destroy();
        throw e;
      }
    },
    prepare,
  );
}

/** An item's size for pre-drawing; invalid sizes draw nothing and fail in the item itself. */
function safeBytes(input: DataKeyInput): number {
  try {
    return checkDataKeyBytes(input?.bytes);
  } catch {
    return 0;
  }
}

/** The distinct values, in order (false before true). */
function distinct<T extends number | boolean>(values: readonly T[]): T[] {
  return [...new Set(values)].sort((a, b) => Number(a) - Number(b));
}
