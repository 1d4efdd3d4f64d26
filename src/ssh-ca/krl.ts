/**
 * OpenSSH Key Revocation Lists (PROTOCOL.krl, format version 1), unsigned: sshd
 * reads them from a file it trusts and OpenSSH ≥ 9.4 refuses signed ones anyway.
 *
 * What we revoke: certificates by serial per CA (KRL_SECTION_CERT_SERIAL_LIST;
 * our serials are random, so ranges and bitmaps would not pay), optionally by key
 * id, and plain keys by the SHA-256 of their blob (which also revokes every
 * certificate of that key: OpenSSH hashes a certificate's plain key).
 *
 * sshd treats a KRL it can't parse as revoking every key, so everything OpenSSH
 * would refuse (serial 0, a hash of the wrong size, NUL in a key id) is refused here
 * before it can lock everyone out.
 */

import { CustosError } from "../errors/index.js";
import { SshReader, SshWriter, stringSize } from "./wire.js";

export interface KrlContent {
  /** krl_version: increases at every regeneration. */
  readonly version: bigint;
  readonly generatedAt: Date;
  readonly comment?: string;
  readonly cas: readonly {
    readonly caKey: Buffer;
    readonly serials: readonly bigint[];
    readonly keyIds?: readonly string[];
  }[];
  /** Raw SHA-256 of revoked plain key blobs (KRL_SECTION_FINGERPRINT_SHA256). */
  readonly fingerprints: readonly Buffer[];
}

/** "SSHKRL\n\0" */
export const KRL_MAGIC = Buffer.from("SSHKRL\n\0", "latin1");
const KRL_FORMAT_VERSION = 1;

const SECTION_CERTIFICATES = 1;
const SECTION_EXPLICIT_KEY = 2;
const SECTION_FINGERPRINT_SHA1 = 3;
const SECTION_SIGNATURE = 4;
const SECTION_FINGERPRINT_SHA256 = 5;
const CERT_SERIAL_LIST = 0x20;
const CERT_SERIAL_RANGE = 0x21;
const CERT_SERIAL_BITMAP = 0x22;
const CERT_KEY_ID = 0x23;

const UINT64_MAX = 0xffff_ffff_ffff_ffffn;

function refuse(message: string): CustosError {
  return new CustosError("invalid_request", message);
}

function seconds(date: Date): bigint {
  const ms = date instanceof Date ? date.getTime() : Number.NaN;
  if (!Number.isFinite(ms) || ms < 0) throw refuse("KRL generatedAt must be a valid date after 1970");
  return BigInt(Math.floor(ms / 1000));
}

function checkText(value: string, what: string): void {
  if (typeof value !== "string" || value.includes("\0")) throw refuse(`${what} must be text without NUL`);
}

interface CaSection {
  readonly caKey: Buffer;
  readonly serials: Set<bigint>;
  readonly keyIds: Set<string>;
}

/** One entry per distinct CA key (first seen first), its serials and key ids merged. */
function mergeCas(cas: KrlContent["cas"]): CaSection[] {
  const out: CaSection[] = [];
  for (const ca of cas) {
    if (ca.caKey.length === 0) throw refuse("a KRL CA entry needs the CA key");
    let entry = out.find((e) => e.caKey.equals(ca.caKey));
    if (!entry) {
      entry = { caKey: ca.caKey, serials: new Set(), keyIds: new Set() };
      out.push(entry);
    }
    for (const s of ca.serials) {
      // OpenSSH refuses to load a KRL that lists serial 0 (the "no serial" value).
      if (typeof s !== "bigint" || s < 1n || s > UINT64_MAX) throw refuse("a revoked serial must be 1 to 2^64-1");
      entry.serials.add(s);
    }
    for (const id of ca.keyIds ?? []) {
      checkText(id, "a revoked key id");
      entry.keyIds.add(id);
    }
  }
  return out.filter((e) => e.serials.size > 0 || e.keyIds.size > 0);
}

/** Key ids in OpenSSH's order (strcmp over the UTF-8 bytes). */
function sortedKeyIds(ids: Set<string>): Buffer[] {
  return [...ids].map((id) => Buffer.from(id, "utf8")).sort(Buffer.compare);
}

/**
 * The KRL bytes: unsigned, format version 1. Per CA one certificates section with
 * its serials sorted and de-duplicated (and its key ids, if any); then the SHA-256
 * fingerprints, in numeric order as PROTOCOL.krl requires. Empty sections are
 * omitted; a KRL that revokes nothing is valid.
 */
export function buildKrl(content: KrlContent): Buffer {
  const comment = content.comment ?? "";
  checkText(comment, "the KRL comment");
  if (typeof content.version !== "bigint" || content.version < 0n || content.version > UINT64_MAX) {
    throw refuse("krl_version must be a uint64");
  }
  const generated = seconds(content.generatedAt);

  const cas = mergeCas(content.cas).map((ca) => {
    const serials = [...ca.serials].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const keyIds = sortedKeyIds(ca.keyIds);
    let keyIdsSize = 0;
    for (const id of keyIds) keyIdsSize += stringSize(id);
    const size =
      stringSize(ca.caKey) +
      4 + // reserved
      (serials.length > 0 ? 1 + 4 + 8 * serials.length : 0) +
      (keyIds.length > 0 ? 1 + 4 + keyIdsSize : 0);
    return { caKey: ca.caKey, serials, keyIds, keyIdsSize, size };
  });

  const fingerprints = [...content.fingerprints].sort(Buffer.compare).filter((fp, i, all) => {
    if (fp.length !== 32) throw refuse("a revoked key's SHA-256 fingerprint must be 32 bytes");
    return i === 0 || !fp.equals(all[i - 1] as Buffer);
  });
  const fingerprintsSize = 36 * fingerprints.length;

  let size = KRL_MAGIC.length + 4 + 8 + 8 + 8 + 4 + stringSize(comment);
  for (const ca of cas) size += 1 + 4 + ca.size;
  if (fingerprints.length > 0) size += 1 + 4 + fingerprintsSize;

  const w = new SshWriter(size);
  w.raw(KRL_MAGIC).uint32(KRL_FORMAT_VERSION).uint64(content.version).uint64(generated).uint64(0n);
  w.uint32(0); // reserved
  w.string(comment);
  for (const ca of cas) {
    w.uint8(SECTION_CERTIFICATES).uint32(ca.size);
    w.string(ca.caKey).uint32(0); // reserved
    if (ca.serials.length > 0) {
      w.uint8(CERT_SERIAL_LIST).uint32(8 * ca.serials.length);
      for (const s of ca.serials) w.uint64(s);
    }
    if (ca.keyIds.length > 0) {
      w.uint8(CERT_KEY_ID).uint32(ca.keyIdsSize);
      for (const id of ca.keyIds) w.string(id);
    }
  }
  if (fingerprints.length > 0) {
    w.uint8(SECTION_FINGERPRINT_SHA256).uint32(fingerprintsSize);
    for (const fp of fingerprints) w.string(fp);
  }
  return w.bytes();
}

/** What a KRL holds, as `parseKrl` reads it. */
export interface ParsedKrl {
  readonly version: bigint;
  readonly generatedAt: Date;
  readonly comment: string;
  readonly cas: { caKey: Buffer; serials: bigint[]; ranges: [bigint, bigint][]; keyIds: string[] }[];
  /** SHA-256 fingerprints (raw), in file order. */
  readonly fingerprints: Buffer[];
  /** Revoked plain key blobs (KRL_SECTION_EXPLICIT_KEY). */
  readonly keys: Buffer[];
  readonly sha1Fingerprints: Buffer[];
}

/**
 * Reads an unsigned format-1 KRL (ours, or one made by `ssh-keygen -k`). Bitmap
 * serial sections are expanded into serials.
 */
export function parseKrl(krl: Buffer): ParsedKrl {
  if (krl.length < KRL_MAGIC.length || !krl.subarray(0, KRL_MAGIC.length).equals(KRL_MAGIC)) {
    throw refuse("not an OpenSSH KRL");
  }
  const header = new SshReader(krl.subarray(KRL_MAGIC.length));
  if (header.uint32() !== KRL_FORMAT_VERSION) throw refuse("unsupported KRL format version");
  const version = header.uint64();
  const generated = header.uint64();
  header.uint64(); // flags
  header.string(); // reserved
  const comment = header.text();
  const out: ParsedKrl = {
    version,
    generatedAt: new Date(Number(generated) * 1000),
    comment,
    cas: [],
    fingerprints: [],
    keys: [],
    sha1Fingerprints: [],
  };
  while (header.remaining > 0) {
    const type = header.uint8();
    if (type === SECTION_SIGNATURE) throw refuse("signed KRLs are not supported");
    const section = new SshReader(header.string());
    switch (type) {
      case SECTION_CERTIFICATES: {
        const ca = {
          caKey: Buffer.from(section.string()),
          serials: [] as bigint[],
          ranges: [] as [bigint, bigint][],
          keyIds: [] as string[],
        };
        section.string(); // reserved
        while (section.remaining > 0) {
          const sub = section.uint8();
          const data = new SshReader(section.string());
          if (sub === CERT_SERIAL_LIST) while (data.remaining > 0) ca.serials.push(data.uint64());
          else if (sub === CERT_SERIAL_RANGE) ca.ranges.push([data.uint64(), data.uint64()]);
          else if (sub === CERT_SERIAL_BITMAP) {
            const offset = data.uint64();
            const bitmap = data.mpint();
            for (let byte = 0; byte < bitmap.length; byte++) {
              const v = bitmap[bitmap.length - 1 - byte] as number;
              for (let bit = 0; bit < 8; bit++) if (v & (1 << bit)) ca.serials.push(offset + BigInt(byte * 8 + bit));
            }
          } else if (sub === CERT_KEY_ID) while (data.remaining > 0) ca.keyIds.push(data.text());
          else throw refuse("unsupported KRL certificate section");
          data.end("a KRL certificate section");
        }
        out.cas.push(ca);
        break;
      }
      case SECTION_EXPLICIT_KEY:
        while (section.remaining > 0) out.keys.push(Buffer.from(section.string()));
        break;
      case SECTION_FINGERPRINT_SHA1:
      case SECTION_FINGERPRINT_SHA256: {
        const list = type === SECTION_FINGERPRINT_SHA1 ? out.sha1Fingerprints : out.fingerprints;
        const size = type === SECTION_FINGERPRINT_SHA1 ? 20 : 32;
        while (section.remaining > 0) {
          const fp = section.string();
          if (fp.length !== size) throw refuse("KRL fingerprint has the wrong size");
          list.push(Buffer.from(fp));
        }
        break;
      }
      default:
        throw refuse("unsupported KRL section");
    }
    section.end("a KRL section");
  }
  return out;
}
