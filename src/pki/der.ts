/**
 * The little DER the leaf builder needs around what @peculiar/asn1-x509 encodes:
 * wrapping already-encoded fields in a SEQUENCE (or another constructed tag), and
 * finding a field's bytes inside a structure the schema has encoded or checked.
 * Nothing here encodes a value of its own.
 */

/** The DER length octets of `n`. */
function lengthOctets(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let rest = n; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

/** A TLV whose content is the concatenation of `parts`. */
export function tlv(tag: number, parts: readonly Uint8Array[]): Buffer {
  const content = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([tag]), lengthOctets(content.length), content]);
}

export const SEQUENCE = 0x30;
export const BIT_STRING = 0x03;

/** Where one TLV starting at `offset` keeps its content, or undefined when its header is malformed. */
export function readTlv(der: Uint8Array, offset: number): { tag: number; start: number; end: number } | undefined {
  const tag = der[offset];
  const first = der[offset + 1];
  if (tag === undefined || first === undefined) return undefined;
  let start = offset + 2;
  let length = first;
  if (first >= 0x80) {
    const count = first & 0x7f;
    if (count === 0 || count > 4) return undefined;
    length = 0;
    for (let i = 0; i < count; i++) {
      const b = der[start + i];
      if (b === undefined) return undefined;
      length = length * 256 + b;
    }
    start += count;
  }
  const end = start + length;
  return end <= der.length ? { tag, start, end } : undefined;
}

/** The subjectPublicKey bits of a DER SubjectPublicKeyInfo (what a key identifier hashes). */
export function subjectPublicKeyBits(spki: Uint8Array): Uint8Array {
  const outer = readTlv(spki, 0);
  const algorithm = outer && readTlv(spki, outer.start);
  const bits = algorithm && readTlv(spki, algorithm.end);
  if (!outer || outer.tag !== SEQUENCE || !bits || bits.tag !== BIT_STRING) {
    throw new Error("not a DER SubjectPublicKeyInfo");
  }
  // The first content byte counts unused bits (0 for keys); the key is what follows.
  return spki.subarray(bits.start + 1, bits.end);
}
