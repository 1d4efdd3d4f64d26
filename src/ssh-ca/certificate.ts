/**
 * OpenSSH certificates (PROTOCOL.certkeys, the "-cert-v01@openssh.com" types).
 *
 * Signing runs on every sign request, so the to-be-signed bytes are sized first and
 * written into one buffer; the HSM's raw signature is then appended with one more
 * allocation. The parser and verifier serve tests, audits and the CLI: they accept
 * certificates from any OpenSSH CA, not only ours.
 */

import { hash, type KeyObject, verify } from "node:crypto";
import { CustosError } from "../errors/index.js";
import {
  CERT_SUFFIX,
  checkComment,
  decodeBase64,
  ecdsaCurve,
  publicKeyObject,
  readKeyFields,
  SUBJECT_KEY_TYPES,
  type SubjectKey,
  splitKeyLine,
} from "./keys.js";
import { mpintSize, SshReader, SshWriter, stringSize } from "./wire.js";

export type SshCaAlgorithm = "ecdsa-p256" | "ed25519";

export interface CertificateFields {
  readonly certType: "user" | "host";
  readonly subject: SubjectKey;
  readonly serial: bigint;
  /** 32 bytes. */
  readonly nonce: Buffer;
  readonly keyId: string;
  /** At least one: a certificate without principals is valid for every user or host. */
  readonly principals: readonly string[];
  /** Encoded as uint64 seconds (floor). */
  readonly validAfter: Date;
  readonly validBefore: Date;
  /**
   * Encoded sorted by name, each value as string(string(value)); an empty value is
   * a flag option (empty data). Host certificates: none.
   */
  readonly criticalOptions: Readonly<Record<string, string>>;
  /** Encoded sorted and de-duplicated, each with empty data. Host certificates: none. */
  readonly extensions: readonly string[];
  /** The CA public key blob (signature key). */
  readonly caKey: Buffer;
}

export interface ParsedCertificate {
  /** "<subject type>-cert-v01@openssh.com" */
  readonly type: string;
  readonly certType: "user" | "host";
  readonly nonce: Buffer;
  readonly subjectType: string;
  /** The certified public key (its plain blob, fingerprint and size). */
  readonly subject: SubjectKey;
  readonly serial: bigint;
  readonly keyId: string;
  readonly principals: string[];
  /** Dates past what `Date` can hold (OpenSSH's "forever", 2^64-1) are the largest Date. */
  readonly validAfter: Date;
  readonly validBefore: Date;
  /** The exact uint64 seconds. */
  readonly validAfterSeconds: bigint;
  readonly validBeforeSeconds: bigint;
  readonly criticalOptions: Record<string, string>;
  readonly extensions: string[];
  readonly caKey: Buffer;
  /** The algorithm named in the signature, e.g. "ecdsa-sha2-nistp256", "ssh-ed25519", "rsa-sha2-512". */
  readonly signatureAlgorithm: string;
  /** The signature blob after its algorithm name (for ECDSA the two mpints r and s). */
  readonly signature: Buffer;
  /** The signed bytes: everything up to and including the signature key. */
  readonly tbs: Buffer;
  /** The comment of the line it came from ("" for a blob). */
  readonly comment: string;
}

const CERT_TYPE_CODE = { user: 1, host: 2 } as const;

/** Names of options and extensions: printable ASCII, so JavaScript's sort is OpenSSH's byte order. */
const NAME = /^[\x21-\x7e]+$/;

/** Seconds that fit in a Date (±8.64e15 ms). */
const MAX_DATE_SECONDS = 8_640_000_000_000n;

function refuse(message: string): CustosError {
  return new CustosError("invalid_request", message);
}

function seconds(date: Date, what: string): bigint {
  const ms = date instanceof Date ? date.getTime() : Number.NaN;
  if (!Number.isFinite(ms) || ms < 0) throw refuse(`${what} must be a valid date after 1970`);
  return BigInt(Math.floor(ms / 1000));
}

function checkText(value: string, what: string): void {
  if (typeof value !== "string" || value.includes("\0")) throw refuse(`${what} must be text without NUL`);
}

function checkNames(names: readonly string[], what: string): void {
  for (const n of names) if (!NAME.test(n)) throw refuse(`${what} names must be printable ASCII`);
}

/** The bytes the CA signs: everything up to and including the signature key. */
export function certificateTbs(fields: CertificateFields): Buffer {
  const { certType, subject, serial, nonce, keyId, principals, criticalOptions, caKey } = fields;
  if (certType !== "user" && certType !== "host") throw refuse("certType must be user or host");
  if (!SUBJECT_KEY_TYPES.includes(subject.type)) throw refuse("unsupported subject key type");
  if (typeof serial !== "bigint" || serial < 0n || serial > 0xffff_ffff_ffff_ffffn) {
    throw refuse("serial must be a uint64");
  }
  if (nonce.length !== 32) throw refuse("nonce must be 32 bytes");
  checkText(keyId, "key id");
  // An empty list means "any principal": never issue that by accident.
  if (principals.length === 0) throw refuse("a certificate needs at least one principal");
  for (const p of principals) {
    checkText(p, "principal");
    if (p === "") throw refuse("a principal can't be empty");
  }
  const after = seconds(fields.validAfter, "validAfter");
  const before = seconds(fields.validBefore, "validBefore");
  if (before <= after) throw refuse("validBefore must be later than validAfter");
  const optionNames = Object.keys(criticalOptions).sort();
  const extensions = [...new Set(fields.extensions)].sort();
  if (certType === "host" && (optionNames.length > 0 || extensions.length > 0)) {
    throw refuse("host certificates carry no critical options or extensions");
  }
  checkNames(optionNames, "critical option");
  checkNames(extensions, "extension");
  if (caKey.length === 0) throw refuse("the CA key is missing");

  const type = `${subject.type}${CERT_SUFFIX}`;
  let principalsSize = 0;
  for (const p of principals) principalsSize += stringSize(p);
  let optionsSize = 0;
  for (const name of optionNames) {
    const value = criticalOptions[name] as string;
    checkText(value, "critical option value");
    optionsSize += stringSize(name) + (value === "" ? 4 : 4 + stringSize(value));
  }
  let extensionsSize = 0;
  for (const name of extensions) extensionsSize += stringSize(name) + 4;

  const size =
    stringSize(type) +
    stringSize(nonce) +
    subject.fields.length +
    8 + // serial
    4 + // type
    stringSize(keyId) +
    4 +
    principalsSize +
    16 + // valid after, valid before
    4 +
    optionsSize +
    4 +
    extensionsSize +
    4 + // reserved
    stringSize(caKey);

  const w = new SshWriter(size);
  w.string(type).string(nonce).raw(subject.fields).uint64(serial).uint32(CERT_TYPE_CODE[certType]).string(keyId);
  w.uint32(principalsSize);
  for (const p of principals) w.string(p);
  w.uint64(after).uint64(before);
  w.uint32(optionsSize);
  for (const name of optionNames) {
    const value = criticalOptions[name] as string;
    w.string(name);
    if (value === "") w.uint32(0);
    else w.uint32(stringSize(value)).string(value);
  }
  w.uint32(extensionsSize);
  for (const name of extensions) w.string(name).uint32(0);
  w.uint32(0); // reserved
  w.string(caKey);
  return w.bytes();
}

const ECDSA_P256 = "ecdsa-sha2-nistp256";

/**
 * tbs + string(signature), where signature = string(alg) string(blob): for
 * ecdsa-p256 the HSM's raw 64-byte r‖s becomes string("ecdsa-sha2-nistp256")
 * string(mpint r mpint s); for ed25519 the 64-byte signature as is under "ssh-ed25519".
 */
export function certificateBlob(tbs: Buffer, caAlgorithm: SshCaAlgorithm, rawSignature: Buffer): Buffer {
  if (rawSignature.length !== 64) throw refuse(`a ${caAlgorithm} signature must be 64 bytes`);
  if (caAlgorithm === "ecdsa-p256") {
    const r = rawSignature.subarray(0, 32);
    const s = rawSignature.subarray(32);
    const inner = mpintSize(r) + mpintSize(s);
    const sig = stringSize(ECDSA_P256) + 4 + inner;
    return new SshWriter(tbs.length + 4 + sig)
      .raw(tbs)
      .uint32(sig)
      .string(ECDSA_P256)
      .uint32(inner)
      .mpint(r)
      .mpint(s)
      .bytes();
  }
  if (caAlgorithm === "ed25519") {
    const sig = stringSize("ssh-ed25519") + 4 + 64;
    return new SshWriter(tbs.length + 4 + sig).raw(tbs).uint32(sig).string("ssh-ed25519").string(rawSignature).bytes();
  }
  throw refuse("unsupported CA algorithm");
}

function certType(blob: Buffer): string {
  const type = new SshReader(blob).text();
  if (!type.endsWith(CERT_SUFFIX) || !SUBJECT_KEY_TYPES.includes(type.slice(0, -CERT_SUFFIX.length))) {
    throw refuse("not an OpenSSH certificate of a supported type");
  }
  return type;
}

/** "<type>-cert-v01@openssh.com base64[ comment]" */
export function certificateLine(blob: Buffer, comment = ""): string {
  const type = certType(blob);
  checkComment(comment);
  const base = `${type} ${blob.toString("base64")}`;
  return comment === "" ? base : `${base} ${comment}`;
}

function toDate(s: bigint): Date {
  return new Date(Number(s > MAX_DATE_SECONDS ? MAX_DATE_SECONDS : s) * 1000);
}

/** A certificate from its line ("type base64 [comment]") or its blob. */
export function parseCertificate(lineOrBlob: string | Buffer): ParsedCertificate {
  let blob: Buffer;
  let comment = "";
  if (typeof lineOrBlob === "string") {
    const line = splitKeyLine(lineOrBlob);
    if (!line.type.endsWith(CERT_SUFFIX)) throw refuse("not an OpenSSH certificate line");
    blob = decodeBase64(line.data, "certificate data");
    if (certType(blob) !== line.type) throw refuse("the certificate data is not of the line's type");
    comment = line.comment;
  } else {
    blob = Buffer.from(lineOrBlob);
  }
  const r = new SshReader(blob);
  const type = certType(blob);
  r.text();
  const nonce = r.string();
  const subjectType = type.slice(0, -CERT_SUFFIX.length);
  const fieldsAt = r.offset;
  const { family, bits } = readKeyFields(subjectType, r);
  const fields = blob.subarray(fieldsAt, r.offset);
  const serial = r.uint64();
  const code = r.uint32();
  if (code !== 1 && code !== 2) throw refuse("certificate type must be user (1) or host (2)");
  const keyId = r.text();

  const principals: string[] = [];
  const pr = new SshReader(r.string());
  while (pr.remaining > 0) principals.push(pr.text());

  const validAfterSeconds = r.uint64();
  const validBeforeSeconds = r.uint64();

  const criticalOptions: Record<string, string> = {};
  const or = new SshReader(r.string());
  while (or.remaining > 0) {
    const name = or.text();
    const data = or.string();
    let value = "";
    if (data.length > 0) {
      const dr = new SshReader(data);
      value = dr.text();
      dr.end(`critical option ${JSON.stringify(name)}`);
    }
    if (Object.hasOwn(criticalOptions, name)) throw refuse("duplicate critical option");
    criticalOptions[name] = value;
  }

  const extensions: string[] = [];
  const er = new SshReader(r.string());
  while (er.remaining > 0) {
    extensions.push(er.text());
    er.string(); // extension data: empty for every extension OpenSSH defines
  }

  r.string(); // reserved
  const caKey = r.string();
  const tbs = blob.subarray(0, r.offset);
  const sr = new SshReader(r.string());
  r.end("the certificate");
  const signatureAlgorithm = sr.text();
  const signature = sr.string();
  sr.end("the signature");

  const subjectBlob = new SshWriter(stringSize(subjectType) + fields.length).string(subjectType).raw(fields).bytes();
  const fingerprintRaw = hash("sha256", subjectBlob, "buffer");
  return {
    type,
    certType: code === 1 ? "user" : "host",
    nonce,
    subjectType,
    subject: {
      type: subjectType,
      family,
      bits,
      blob: subjectBlob,
      fields: subjectBlob.subarray(stringSize(subjectType)),
      comment: "",
      fingerprint: `SHA256:${fingerprintRaw.toString("base64").replace(/=+$/, "")}`,
      fingerprintRaw,
    },
    serial,
    keyId,
    principals,
    validAfter: toDate(validAfterSeconds),
    validBefore: toDate(validBeforeSeconds),
    validAfterSeconds,
    validBeforeSeconds,
    criticalOptions,
    extensions,
    caKey,
    signatureAlgorithm,
    signature,
    tbs,
    comment,
  };
}

const RSA_HASHES: Readonly<Record<string, string>> = {
  "rsa-sha2-512": "sha512",
  "rsa-sha2-256": "sha256",
  "ssh-rsa": "sha1",
};

function padTo(bytes: Buffer, size: number): Buffer | undefined {
  if (bytes.length > size) return undefined;
  const out = Buffer.alloc(size);
  bytes.copy(out, size - bytes.length);
  return out;
}

/**
 * Checks the CA signature with node:crypto. CA keys: ecdsa-sha2-nistp256/384/521,
 * ssh-ed25519 and ssh-rsa (rsa-sha2-256/512, and SHA-1 "ssh-rsa"). False for a wrong
 * signature, a signature algorithm that doesn't fit the CA key, or a CA key that
 * can't be read.
 */
export function verifyCertificate(cert: ParsedCertificate): boolean {
  let caType: string;
  let key: KeyObject;
  try {
    caType = new SshReader(cert.caKey).text();
    key = publicKeyObject(cert.caKey);
  } catch {
    return false;
  }
  try {
    if (caType === "ssh-ed25519") {
      return cert.signatureAlgorithm === "ssh-ed25519" && verify(null, cert.tbs, key, cert.signature);
    }
    const curve = ecdsaCurve(caType);
    if (curve) {
      if (cert.signatureAlgorithm !== caType) return false;
      const sr = new SshReader(cert.signature);
      const r = padTo(sr.mpint(), curve.coordinate);
      const s = padTo(sr.mpint(), curve.coordinate);
      sr.end("the ECDSA signature");
      if (!r || !s) return false;
      return verify(curve.hash, cert.tbs, { key, dsaEncoding: "ieee-p1363" }, Buffer.concat([r, s]));
    }
    if (caType === "ssh-rsa") {
      const hash = Object.hasOwn(RSA_HASHES, cert.signatureAlgorithm) ? RSA_HASHES[cert.signatureAlgorithm] : undefined;
      return hash !== undefined && verify(hash, cert.tbs, key, cert.signature);
    }
  } catch {
    return false;
  }
  return false;
}
