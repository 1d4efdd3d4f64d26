/**
 * The body of the HSM thread (see hsm-thread.ts): runs each job's C_*Init/C_* pairs,
 * one item after the other, on the session the main thread leased for the job.
 *
 * PKCS#11 state belongs to the process, so this thread loads the same library, finds
 * it already initialised, and uses the main thread's session and key handles as they
 * are. It never initialises or finalises the library on its own account: the main
 * thread's connection does both, and only while no job holds a session.
 */
import { parentPort, workerData } from "node:worker_threads";
import { ckrOf } from "./ckr.js";
import { GCM_IV_LENGTH, GCM_TAG_LENGTH, pk } from "./constants.js";
import type { GcmJob, HsmJob, HsmJobResult, SignJob } from "./hsm-thread.js";
import { gcmMechanism } from "./templates.js";

const p = new pk.PKCS11();
p.load((workerData as { modulePath: string }).modulePath);
try {
  p.C_Initialize({ flags: pk.CKF_OS_LOCKING_OK });
} catch (e) {
  if (ckrOf(e)?.name !== "CKR_CRYPTOKI_ALREADY_INITIALIZED") throw e;
}

function view(bytes: Uint8Array, start: number, end: number): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset + start, end - start);
}

function startOf(ends: Uint32Array, i: number): number {
  return i === 0 ? 0 : (ends[i - 1] as number);
}

function gcm(job: GcmJob): HsmJobResult {
  const { encrypt, session, key, ivs, input, inputEnds, aad, aadEnds, tolerate } = job;
  const count = inputEnds.length;
  const growth = encrypt ? GCM_TAG_LENGTH : -GCM_TAG_LENGTH;
  const outputEnds = new Uint32Array(count);
  let longest = 0;
  for (let i = 0, end = 0; i < count; i++) {
    const length = (inputEnds[i] as number) - startOf(inputEnds, i);
    longest = Math.max(longest, length);
    end += length + growth;
    outputEnds[i] = end;
  }
  const output = new Uint8Array(count === 0 ? 0 : (outputEnds[count - 1] as number));
  // SoftHSM wants room for the whole input when it decrypts GCM (it strips the tag
  // last), so each plaintext lands here first and is then copied into its place.
  const scratch = Buffer.alloc(encrypt ? 0 : longest);
  const failed: Array<string | null> = new Array(count).fill(null);
  const sessionHandle = Buffer.from(session);
  const keyHandle = Buffer.from(key);
  let initUs = 0;
  try {
    for (let i = 0; i < count; i++) {
      const mechanism = gcmMechanism(
        view(ivs, i * GCM_IV_LENGTH, (i + 1) * GCM_IV_LENGTH),
        view(aad, startOf(aadEnds, i), aadEnds[i] as number),
      );
      const data = view(input, startOf(inputEnds, i), inputEnds[i] as number);
      const out = view(output, startOf(outputEnds, i), outputEnds[i] as number);
      const started = performance.now();
      try {
        if (encrypt) {
          p.C_EncryptInit(sessionHandle, mechanism, keyHandle);
          initUs += performance.now() - started;
          p.C_Encrypt(sessionHandle, data, out);
        } else {
          p.C_DecryptInit(sessionHandle, mechanism, keyHandle);
          initUs += performance.now() - started;
          p.C_Decrypt(sessionHandle, data, scratch).copy(out);
        }
      } catch (e) {
        const name = ckrOf(e)?.name;
        if (name === undefined || !tolerate.includes(name)) throw e;
        // This item alone failed (a decryption that did not authenticate); the
        // failed call ended its operation, so the session goes on to the next.
        out.fill(0);
        failed[i] = name;
      }
    }
  } catch (e) {
    output.fill(0);
    return { id: job.id, ok: false, error: e instanceof Error ? e.message : String(e) };
  } finally {
    // Plaintext going in (data keys to encrypt) is not left behind in this thread.
    if (encrypt) input.fill(0);
    scratch.fill(0);
  }
  return { id: job.id, ok: true, output, outputEnds, failed, initUs: count === 0 ? 0 : (initUs * 1000) / count };
}

function sign(job: SignJob): HsmJobResult {
  const session = Buffer.from(job.session);
  const out = Buffer.alloc(job.maxLength);
  try {
    const started = performance.now();
    p.C_SignInit(session, job.mechanism, Buffer.from(job.key));
    const initUs = (performance.now() - started) * 1000;
    // An empty message needs a real pointer, as on the main thread (see EMPTY_SIGN_INPUT there).
    const data = job.input.length === 0 ? Buffer.alloc(1).subarray(1) : view(job.input, 0, job.input.length);
    const signature = p.C_Sign(session, data, out);
    const output = new Uint8Array(signature);
    return { id: job.id, ok: true, output, outputEnds: Uint32Array.of(output.length), failed: [null], initUs };
  } catch (e) {
    return { id: job.id, ok: false, error: e instanceof Error ? e.message : String(e) };
  }
}

parentPort?.on("message", (job: HsmJob) => {
  const result = job.kind === "gcm" ? gcm(job) : sign(job);
  parentPort?.postMessage(result, result.ok ? [result.output.buffer as ArrayBuffer] : []);
});
