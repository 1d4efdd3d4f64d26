/**
 * Envelope throughput (src/envelope) beside its limit, one node:crypto AES-256-GCM
 * cipher over the same data in the same pieces, and beside its peer, the AWS
 * Encryption SDK; then peak RSS while streaming, and KMS calls with and without the
 * data-key cache. Data keys come from the real KmsService on a SoftHSM token.
 *
 *   npm run bench -- envelope [quick]
 */
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { type Actor, AuditLog } from "../src/audit/index.js";
import type { EncryptionContext, EnvelopeKms } from "../src/envelope/index.js";
import { DEFAULT_CHUNK_SIZE, Envelope } from "../src/envelope/index.js";
import { Pkcs11Keystore } from "../src/hsm/pkcs11/index.js";
import { KmsService } from "../src/kms/index.js";
import { Secret } from "../src/secret/index.js";
import { SqliteStore } from "../src/store/index.js";
import { createTestToken } from "../test/helpers/softhsm.js";
import { type RssReadings, streamingRss } from "./envelope-rss.js";
import { PIECE, rawStreams, sink, source } from "./stream-fixtures.js";

const MiB = 1024 ** 2;
const KEY = "bench";
const CONTEXT: EncryptionContext = { bucket: "bench", object: "data" };
const SDK_BUDGET_S = 60;
const GOAL = { ofRaw: 0.85, timesSdk: 5, rssBytes: 100e6 };

const FULL = { small: MiB, large: 64 * MiB, stream: 1024 * MiB, objects: 1000, reps: 5 };
const QUICK = { small: MiB, large: 8 * MiB, stream: 64 * MiB, objects: 100, reps: 1 };

interface CountingKms extends EnvelopeKms {
  readonly calls: { generate: number; decrypt: number };
}

/** A real KmsService (SoftHSM token, SQLite store, audit log) with one encrypt key, seen through EnvelopeKms. */
async function openKms(): Promise<{ kms: CountingKms; close(): Promise<void> }> {
  const token = createTestToken("custos-bench-envelope");
  const dir = mkdtempSync(join(tmpdir(), "custos-bench-envelope-"));
  const keystore = await Pkcs11Keystore.open({
    modulePath: token.modulePath,
    tokenLabel: token.label,
    pin: Secret.fromString(token.pin),
  });
  await keystore.createRootKey();
  const store = await SqliteStore.open(join(dir, "custos.db"));
  const audit = new AuditLog({ store, keystore, ...(await AuditLog.provisionKeys(keystore)) });
  const service = new KmsService({ keystore, store, audit });
  const actor: Actor = { principal: "user:bench", requestId: "bench", source: "127.0.0.1" };
  await service.createKey(actor, { name: KEY, purpose: "encrypt" });
  const calls = { generate: 0, decrypt: 0 };
  const kms: CountingKms = {
    calls,
    async generateDataKey(keyName, context) {
      calls.generate++;
      const r = await service.generateDataKey(actor, keyName, { context });
      if (r.plaintext === undefined) throw new Error("datakey without plaintext");
      return { plaintext: r.plaintext, wrapped: r.ciphertext, version: r.version };
    },
    async decryptDataKey(keyName, wrapped, context) {
      calls.decrypt++;
      return service.decrypt(actor, keyName, { ciphertext: wrapped, context });
    },
    rewrapDataKeys: () => Promise.reject(new Error("not used by this bench")),
  };
  const close = async () => {
    await audit.stop();
    await store.close();
    await keystore.close();
    token.remove();
    rmSync(dir, { recursive: true, force: true });
  };
  return { kms, close };
}

/**
 * Median wall time in seconds of each run, taking turns (one of each per round), so
 * that a neighbour's load on this shared machine falls on all of them alike; the
 * median, not the best, so one lucky or unlucky round doesn't decide. `warm` adds an
 * untimed round first, to keep JIT and the first KMS call out of short measurements.
 */
async function medians<K extends string>(
  reps: number,
  runs: Record<K, () => Promise<unknown>>,
  warm = false,
): Promise<Record<K, number>> {
  const names = Object.keys(runs) as K[];
  const times = new Map<K, number[]>(names.map((k) => [k, []]));
  for (let round = warm ? -1 : 0; round < reps; round++) {
    for (const k of names) {
      const start = performance.now();
      await runs[k]();
      if (round >= 0) times.get(k)?.push((performance.now() - start) / 1000);
    }
  }
  const mid = (t: number[]) => t.sort((a, b) => a - b)[Math.floor((t.length - 1) / 2)] as number;
  return Object.fromEntries(names.map((k) => [k, mid(times.get(k) ?? [])])) as Record<K, number>;
}

const once = async (run: () => Promise<unknown>) => (await medians(1, { run })).run;

/**
 * The limit for buffers: what a buffer API must deliver, one contiguous output, made
 * the plainest way node:crypto offers, one cipher and one `update` over the whole
 * buffer. Every run reuses key and IV: harmless, nothing is kept.
 */
function rawBuffer(data: Buffer): { encrypt(): void; decrypt(): void } {
  const key = randomBytes(32);
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", key, iv);
  const ciphertext = c.update(data);
  c.final();
  const tag = c.getAuthTag();
  return {
    encrypt() {
      const cipher = createCipheriv("aes-256-gcm", key, iv);
      cipher.update(data);
      cipher.final();
      cipher.getAuthTag();
    },
    decrypt() {
      const decipher = createDecipheriv("aes-256-gcm", key, iv).setAuthTag(tag);
      decipher.update(ciphertext);
      decipher.final();
    },
  };
}

const mbs = (bytes: number, seconds: number) => bytes / 1e6 / seconds;
const fmt = (rate: number) => `${rate.toFixed(0).padStart(5)} MB/s`;
const met = (ok: boolean) => (ok ? "met" : "NOT met");

export default async function main(args: string[]): Promise<void> {
  const quick = args.includes("quick");
  const size = quick ? QUICK : FULL;
  const human = (n: number) => (n >= 1024 * MiB ? `${n / 1024 / MiB} GiB` : `${n / MiB} MiB`);
  console.log(`envelope bench (${quick ? "quick" : "full"}), node ${process.version}, load average ${loadavg()[0]}`);
  console.log(
    `  median of ${size.reps} rounds (${size.reps * 3} for ${human(size.small)}), the contenders taking turns`,
  );
  console.log(`  buffers: one untimed round first; ${human(size.small)} timed in batches of 32 MiB`);
  console.log(
    `  chunks of ${DEFAULT_CHUNK_SIZE / 1024} KiB (the default), stream pieces of ${PIECE / 1024} KiB; MB = 10^6 bytes; ` +
      "data keys from KmsService on SoftHSM",
  );
  console.log(`  limit = one node:crypto AES-256-GCM cipher over the data: buffers in one update (one output buffer,`);
  console.log(`    as a buffer API returns), streams in one update per piece (outputs passed on, never joined)`);
  console.log(`  SDK = @aws-crypto/client-node, raw AES keyring, as its users meet it: default 4 KiB frames;`);
  console.log(
    `    with ${DEFAULT_CHUNK_SIZE / 1024} KiB frames like our chunks it is faster, shown below the buffer rows, not judged`,
  );
  console.log(`    buffers as ours, its ${human(size.stream)} stream once if its buffer rate says < ${SDK_BUDGET_S} s`);
  console.log(`  stream decrypt: round trip source → encrypt → decrypt → sink in one pipeline, the limit likewise\n`);

  const { kms, close } = await openKms();
  try {
    const envelope = new Envelope({ kms });
    const sealOpts = { key: KEY, context: CONTEXT };
    const openOpts = { context: CONTEXT };
    // Imported here, not at the top, so that the RSS child doesn't load it.
    const aws = await import("@aws-crypto/client-node");
    const sdk = aws.buildClient(aws.CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT);
    const keyring = new aws.RawAesKeyringNode({
      keyNamespace: "bench",
      keyName: "bench",
      unencryptedMasterKey: randomBytes(32),
      wrappingSuite: aws.RawAesWrappingSuiteIdentifier.AES256_GCM_IV12_TAG16_NO_PADDING,
    });
    const noSig = aws.AlgorithmSuiteIdentifier.ALG_AES256_GCM_IV12_TAG16_HKDF_SHA512_COMMIT_KEY;
    // Without suiteId the SDK picks its default suite under this policy: committing, with an ECDSA P-384 signature.
    const sdkOpts = (signed: boolean, frameLength?: number) => ({
      encryptionContext: CONTEXT,
      ...(frameLength === undefined ? {} : { frameLength }),
      ...(signed ? {} : { suiteId: noSig }),
    });

    console.log(`${"".padEnd(32)}    Custos      limit  of limit ≥85%    SDK no-sig  ×SDK ≥5×       SDK ECDSA`);
    const row = (label: string, bytes: number, t: { ours: number; limit: number; noSig?: number; signed?: number }) => {
      const r = mbs(bytes, t.ours);
      const l = mbs(bytes, t.limit);
      const pct = `${((100 * r) / l).toFixed(0)}%`.padStart(4);
      let line = `${label.padEnd(32)}${fmt(r)} ${fmt(l)}  ${pct} ${met(r / l >= GOAL.ofRaw).padEnd(8)}`;
      if (t.noSig !== undefined) {
        const s = mbs(bytes, t.noSig);
        line += `  ${fmt(s)}  ${`${(r / s).toFixed(1)}×`.padStart(5)} ${met(r / s >= GOAL.timesSdk).padEnd(8)}`;
      }
      if (t.signed !== undefined) line += `  ${fmt(mbs(bytes, t.signed))}`;
      console.log(line);
    };

    const sdkRates = { encrypt: 0, decrypt: 0 };
    for (const n of [size.small, size.large]) {
      const data = randomBytes(n);
      const reps = n === size.small ? size.reps * 3 : size.reps;
      // Small buffers in batches of ~32 MiB, so that a sample is long against the clock and the GC.
      const inner = Math.ceil((32 * MiB) / n);
      const batch = (op: () => unknown) => async () => {
        for (let i = 0; i < inner; i++) await op();
      };
      const raw = rawBuffer(data);
      const message = await envelope.encrypt(data, sealOpts);
      if (!(await envelope.decrypt(message, openOpts)).equals(data)) throw new Error("round trip differs");
      const sdkEnc = async (signed: boolean, frameLength?: number) =>
        (await sdk.encrypt(keyring, data, sdkOpts(signed, frameLength))).result;
      const sealed = { noSig: await sdkEnc(false), signed: await sdkEnc(true) };
      const enc = await medians(
        reps,
        {
          ours: batch(() => envelope.encrypt(data, sealOpts)),
          limit: batch(() => raw.encrypt()),
          noSig: batch(() => sdkEnc(false)),
          signed: batch(() => sdkEnc(true)),
        },
        true,
      );
      const dec = await medians(
        reps,
        {
          ours: batch(() => envelope.decrypt(message, openOpts)),
          limit: batch(() => raw.decrypt()),
          noSig: batch(() => sdk.decrypt(keyring, sealed.noSig)),
          signed: batch(() => sdk.decrypt(keyring, sealed.signed)),
        },
        true,
      );
      row(`encrypt ${human(n)} buffer`, n * inner, enc);
      row(`decrypt ${human(n)} buffer`, n * inner, dec);
      if (n !== size.large) continue;
      Object.assign(sdkRates, { encrypt: (n * inner) / enc.noSig, decrypt: (n * inner) / dec.noSig });
      // The SDK with frames the size of our chunks: shown, not judged.
      const big = await sdkEnc(false, DEFAULT_CHUNK_SIZE);
      const e4 = await once(() => sdkEnc(false, DEFAULT_CHUNK_SIZE));
      const d4 = await once(() => sdk.decrypt(keyring, big));
      console.log(
        `  SDK no-sig with ${DEFAULT_CHUNK_SIZE / 1024} KiB frames: encrypt ${fmt(mbs(n, e4))} (Custos ${((e4 * inner) / enc.ours).toFixed(1)}×), ` +
          `decrypt ${fmt(mbs(n, d4))} (Custos ${((d4 * inner) / dec.ours).toFixed(1)}×)`,
      );
    }

    const total = size.stream;
    const encrypting = await medians(size.reps, {
      ours: () => pipeline(source(total), envelope.encryptStream(sealOpts), sink(-1)),
      limit: () => pipeline(source(total), rawStreams().seal, sink(-1)),
    });
    const roundTrip = await medians(size.reps, {
      ours: () =>
        pipeline(source(total), envelope.encryptStream(sealOpts), envelope.decryptStream(openOpts), sink(total)),
      limit: () => {
        const raw = rawStreams();
        return pipeline(source(total), raw.seal, raw.open, sink(total));
      },
    });
    // The SDK streams the whole size only if its rate on the large buffer says it finishes within the budget.
    const sdkEncS = total / sdkRates.encrypt;
    const sdkRtS = total / sdkRates.encrypt + total / sdkRates.decrypt;
    if (sdkEncS <= SDK_BUDGET_S) {
      const sdkSeal = () => sdk.encryptStream(keyring, sdkOpts(false));
      Object.assign(encrypting, { noSig: await once(() => pipeline(source(total), sdkSeal(), sink(-1))) });
      if (sdkRtS <= SDK_BUDGET_S) {
        const sdkOpen = () => sdk.decryptStream(keyring);
        Object.assign(roundTrip, {
          noSig: await once(() => pipeline(source(total), sdkSeal(), sdkOpen(), sink(total))),
        });
      }
    }
    row(`encrypt ${human(total)} stream`, total, encrypting);
    row(`encrypt→decrypt ${human(total)} stream`, total, roundTrip);
    for (const [what, s, t] of [
      ["encrypt", sdkEncS, encrypting],
      ["encrypt→decrypt", sdkRtS, roundTrip],
    ] as const) {
      if (!("noSig" in t)) {
        const at = `${human(size.large)}: ${fmt(sdkRates.encrypt / 1e6)} encrypt, ${fmt(sdkRates.decrypt / 1e6)} decrypt`;
        console.log(
          `  SDK ${what} ${human(total)} stream: skipped (too slow, ~${s.toFixed(0)} s at its rate on ${at})`,
        );
      }
    }

    const objects = Array.from({ length: size.objects }, () => randomBytes(1024));
    console.log(`\nKMS calls for ${size.objects} objects of 1 KiB under one key and context, one at a time`);
    const fresh = (cache: boolean) => new Envelope({ kms, ...(cache ? {} : { cache: false as const }) });
    const report = (what: string, cache: boolean, calls: number, seen: number, s: number) =>
      console.log(
        `  ${what}, ${cache ? "default cache" : "cache: false "}  Envelope.kmsCalls ${String(calls).padStart(5)} ` +
          `(KMS saw ${seen})  ${(size.objects / s).toFixed(0).padStart(6)} objects/s`,
      );
    let messages: Buffer[] = [];
    for (const cache of [true, false]) {
      const e = fresh(cache);
      const before = kms.calls.generate;
      const out: Buffer[] = [];
      const s = await once(async () => {
        for (const o of objects) out.push(await e.encrypt(o, sealOpts));
      });
      if (cache) messages = out;
      report("encrypt", cache, e.kmsCalls, kms.calls.generate - before, s);
    }
    // Both decrypt the messages from the cached run (one data key): a fresh cache needs it once, no cache each time.
    for (const cache of [true, false]) {
      const e = fresh(cache);
      const before = kms.calls.decrypt;
      const s = await once(async () => {
        for (const m of messages) await e.decrypt(m, openOpts);
      });
      report("decrypt", cache, e.kmsCalls, kms.calls.decrypt - before, s);
    }
  } finally {
    await close();
  }

  // After the in-process KMS is closed: SoftHSM sees the server's new token only on a fresh C_Initialize.
  const mb = (kib: number) => `${((kib * 1024) / 1e6).toFixed(0)} MB`;
  const grew = (r: RssReadings) => mb(r.peak - r.afterSetup);
  console.log(
    `\npeak RSS (VmHWM) streaming ${human(size.stream)}: encrypt, then encrypt→decrypt, in a child of its own`,
  );
  console.log(
    "  (plain node, the library compiled by tsc, data keys from a Custos server in another process over HTTPS)",
  );
  const rss = await streamingRss(size.stream);
  console.log(`  node and the child's imports, before anything: ${mb(rss.envelope.atRest)}`);
  console.log(
    `  envelope: set-up ${mb(rss.envelope.afterSetup)}, encrypt ${mb(rss.envelope.afterEncrypt)}, ` +
      `encrypt→decrypt ${mb(rss.envelope.peak)} (+${grew(rss.envelope)} streaming)  ` +
      `goal ≤ 100 MB: ${met(rss.envelope.peak * 1024 <= GOAL.rssBytes)}`,
  );
  console.log(
    `  limit, raw Transforms, no KMS: set-up ${mb(rss.raw.afterSetup)}, encrypt ${mb(rss.raw.afterEncrypt)}, ` +
      `encrypt→decrypt ${mb(rss.raw.peak)} (+${grew(rss.raw)} streaming)`,
  );
}
