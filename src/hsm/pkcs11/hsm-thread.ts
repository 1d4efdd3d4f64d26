import { Worker } from "node:worker_threads";
import type { Mechanism } from "pkcs11js";
import type { HsmLogger } from "./connection.js";
import { GCM_IV_LENGTH } from "./constants.js";

/**
 * A batch of AES-GCM calls for the HSM thread: every item under one key, on one
 * session that the main thread holds for the job. Items travel packed back to back
 * in a few buffers (transferred, not copied) with their end offsets.
 */
export interface GcmJob {
  readonly kind: "gcm";
  readonly id: number;
  readonly encrypt: boolean;
  readonly session: Uint8Array;
  readonly key: Uint8Array;
  /** One 12-byte IV per item. */
  readonly ivs: Uint8Array;
  readonly input: Uint8Array;
  readonly inputEnds: Uint32Array;
  readonly aad: Uint8Array;
  readonly aadEnds: Uint32Array;
  /** CKR names that fail only their item; any other failure fails the job. */
  readonly tolerate: readonly string[];
}

/** One signature, on the session the main thread holds for it. */
export interface SignJob {
  readonly kind: "sign";
  readonly id: number;
  readonly session: Uint8Array;
  readonly key: Uint8Array;
  readonly mechanism: Mechanism;
  readonly input: Uint8Array;
  readonly maxLength: number;
}

export type HsmJob = GcmJob | SignJob;

export type HsmJobResult =
  | {
      readonly id: number;
      readonly ok: true;
      /** Each item's output, back to back: ciphertext‖tag, plaintext, or the signature. */
      readonly output: Uint8Array;
      readonly outputEnds: Uint32Array;
      /** Per item: null, or the tolerated CKR name it failed with. */
      readonly failed: ReadonlyArray<string | null>;
      /** Mean time of the job's C_*Init calls, in microseconds: how fast the module is. */
      readonly initUs: number;
    }
  | { readonly id: number; readonly ok: false; readonly error: string };

type Done = Extract<HsmJobResult, { ok: true }>;

/** One item of a job, as the keystore hands it over. */
export interface GcmItem {
  readonly iv: Uint8Array;
  readonly input: Uint8Array;
  readonly aad: Uint8Array;
}

function pack(parts: readonly Uint8Array[]): { bytes: Uint8Array; ends: Uint32Array } {
  const ends = new Uint32Array(parts.length);
  let total = 0;
  parts.forEach((part, i) => {
    total += part.length;
    ends[i] = total;
  });
  // A buffer of its own (never a slice of Node's shared pool), so it can be transferred.
  const bytes = new Uint8Array(new ArrayBuffer(total));
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.length;
  }
  return { bytes, ends };
}

/**
 * A worker thread that runs HSM calls beside the event loop.
 *
 * A software token's AES-GCM or ECDSA costs as much CPU as much of a request, and
 * run inline it holds the main thread; pkcs11js's own async calls move only the data
 * step to libuv's pool and cost more in hops than they save. Here a whole batch, or
 * a signature with its C_SignInit, is one message each way and runs on another core.
 * Started on first use. A job is bound to the lease of the session it names, so the
 * connection's rule that nothing finalizes the library under a leased session covers
 * the thread too.
 */
export class HsmThread {
  readonly #modulePath: string;
  readonly #logger: HsmLogger | undefined;
  #worker: Worker | undefined;
  readonly #pending = new Map<number, (result: HsmJobResult) => void>();
  #nextId = 1;

  constructor(modulePath: string, logger: HsmLogger | undefined) {
    this.#modulePath = modulePath;
    this.#logger = logger;
  }

  /**
   * Runs AES-GCM over the items on `session` with `key`. Resolves with the job's
   * result, or rejects with its PKCS#11 error (a CKR the connection's recovery knows).
   */
  gcm(encrypt: boolean, session: Buffer, key: Buffer, items: readonly GcmItem[], tolerate: readonly string[]) {
    const ivs = new Uint8Array(new ArrayBuffer(items.length * GCM_IV_LENGTH));
    items.forEach((item, i) => {
      ivs.set(item.iv, i * GCM_IV_LENGTH);
    });
    const input = pack(items.map((i) => i.input));
    const aad = pack(items.map((i) => i.aad));
    const job: GcmJob = {
      kind: "gcm",
      id: this.#nextId++,
      encrypt,
      session: new Uint8Array(session),
      key: new Uint8Array(key),
      ivs,
      input: input.bytes,
      inputEnds: input.ends,
      aad: aad.bytes,
      aadEnds: aad.ends,
      tolerate,
    };
    return this.#post(job, [ivs.buffer, input.bytes.buffer as ArrayBuffer, aad.bytes.buffer as ArrayBuffer]);
  }

  /** C_SignInit and C_Sign of `input` on `session` with `key`; rejects as `gcm` does. */
  sign(session: Buffer, key: Buffer, mechanism: Mechanism, input: Buffer, maxLength: number) {
    const job: SignJob = {
      kind: "sign",
      id: this.#nextId++,
      session: new Uint8Array(session),
      key: new Uint8Array(key),
      mechanism,
      input: new Uint8Array(input),
      maxLength,
    };
    return this.#post(job, [job.input.buffer as ArrayBuffer]);
  }

  async #post(job: HsmJob, transfer: ArrayBuffer[]): Promise<Done> {
    const worker = this.#start();
    const result = await new Promise<HsmJobResult>((resolve) => {
      this.#pending.set(job.id, resolve);
      worker.postMessage(job, transfer);
    });
    if (!result.ok) throw new Error(result.error);
    return result;
  }

  /** Stops the thread; call only once no session is leased (nothing can be in a job). */
  async close(): Promise<void> {
    const worker = this.#worker;
    this.#worker = undefined;
    await worker?.terminate();
  }

  #start(): Worker {
    if (this.#worker) return this.#worker;
    const worker = spawn(this.#modulePath);
    worker.unref();
    worker.on("message", (result: HsmJobResult) => {
      const resolve = this.#pending.get(result.id);
      this.#pending.delete(result.id);
      resolve?.(result);
    });
    const fail = (reason: string) => {
      if (this.#worker !== worker) return;
      this.#worker = undefined;
      this.#logger?.warn({ reason }, "hsm: the HSM thread stopped; its jobs fail and the next one starts it again");
      // A device-class failure: the connection rebuilds and the caller's retry starts a new thread.
      for (const resolve of this.#pending.values()) {
        resolve({ id: 0, ok: false, error: reason });
      }
      this.#pending.clear();
    };
    worker.on("error", (e) => fail(`CKR_FUNCTION_FAILED: HSM thread error: ${e.message}`));
    worker.on("exit", (code) => fail(`CKR_FUNCTION_FAILED: HSM thread exited with code ${code}`));
    this.#worker = worker;
    this.#logger?.info({}, "hsm: HSM thread started");
    return worker;
  }
}

/**
 * Starts the worker from this file's sibling: the built .js as it is, the .ts source
 * (a checkout run through tsx) by registering tsx inside the thread first, since a
 * worker does not inherit a loader registered through tsx's API.
 */
function spawn(modulePath: string): Worker {
  const here = import.meta.url;
  const options = { workerData: { modulePath } };
  if (!here.endsWith(".ts")) return new Worker(new URL("./hsm-thread-worker.js", here), options);
  const entry = new URL("./hsm-thread-worker.ts", here).href;
  const tsx = import.meta.resolve("tsx/esm/api");
  const source = `import(${JSON.stringify(tsx)}).then((t) => { t.register(); return import(${JSON.stringify(entry)}); });`;
  return new Worker(source, { ...options, eval: true });
}
