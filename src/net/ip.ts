/**
 * IP addresses and CIDR networks as certificates carry them: the octets of an
 * address (X.509 iPAddress names), canonical text, and strict network parsing
 * (X.509 role ranges, OpenSSH source-address lists).
 */
import { isIP, SocketAddress } from "node:net";

export interface Cidr {
  /** The network's address: 4 octets for IPv4, 16 for IPv6. */
  readonly bytes: Buffer;
  readonly prefix: number;
  /** `address/prefix`, the address in canonical form (RFC 5952 for IPv6). */
  readonly canonical: string;
}

/** The canonical text of an IP address (RFC 5952 for IPv6), or undefined if it is none. Zone ids are refused. */
export function canonicalIp(text: string): string | undefined {
  if (text.includes("%")) return undefined;
  const family = isIP(text);
  if (family === 0) return undefined;
  return new SocketAddress({ address: text, family: family === 4 ? "ipv4" : "ipv6" }).address;
}

/**
 * The octets of an IP address: 4 for IPv4, 16 for IPv6 (an IPv4-mapped address
 * stays 16: it is IPv6). Undefined if `text` is none, or has a zone id.
 */
export function ipOctets(text: string): Buffer | undefined {
  if (text.includes("%")) return undefined;
  const family = isIP(text);
  if (family === 4) return Buffer.from(ipv4Octets(text));
  if (family === 6) return ipv6Octets(text);
  return undefined;
}

/** The four decimal parts of an IPv4 address that isIP has accepted. */
function ipv4Octets(text: string): number[] {
  return text.split(".").map(Number);
}

/**
 * The 16 bytes of an IPv6 address that isIP has accepted: eight hexadecimal groups,
 * where one "::" stands for a run of zero groups and a dotted IPv4 ending
 * (::ffff:10.0.0.1) for the last two groups.
 */
function ipv6Octets(text: string): Buffer {
  const [left = "", right] = text.split("::");
  const head = ipv6Groups(left);
  const tail = right === undefined ? [] : ipv6Groups(right);
  const groups = [...head, ...new Array<number>(Math.max(0, 8 - head.length - tail.length)).fill(0), ...tail];
  const octets = Buffer.alloc(16);
  for (const [i, group] of groups.entries()) octets.writeUInt16BE(group, 2 * i);
  return octets;
}

/** The 16-bit groups of one side of an IPv6 address's "::"; a dotted IPv4 ending is two groups. */
function ipv6Groups(part: string): number[] {
  if (part === "") return [];
  return part.split(":").flatMap((group) => {
    if (!group.includes(".")) return [Number.parseInt(group, 16)];
    const [a = 0, b = 0, c = 0, d = 0] = ipv4Octets(group);
    return [(a << 8) | b, (c << 8) | d];
  });
}

/**
 * Parses "address/prefix" strictly: no host bits set past the prefix (OpenSSH refuses
 * such a network too), no zone id, a decimal prefix without leading zeros.
 */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf("/");
  if (slash < 0) return undefined;
  const address = canonicalIp(text.slice(0, slash));
  const prefixText = text.slice(slash + 1);
  if (address === undefined || !/^(0|[1-9][0-9]{0,2})$/.test(prefixText)) return undefined;
  const prefix = Number(prefixText);
  const bytes = ipOctets(address) as Buffer;
  if (prefix > bytes.length * 8 || !hostBitsClear(bytes, prefix)) return undefined;
  return { bytes, prefix, canonical: `${address}/${prefix}` };
}

/** Whether an address's octets lie in the network (same family only). */
export function inCidr(address: Uint8Array, cidr: Cidr): boolean {
  if (address.length !== cidr.bytes.length) return false;
  const whole = cidr.prefix >> 3;
  for (let i = 0; i < whole; i++) if (address[i] !== cidr.bytes[i]) return false;
  const mask = prefixMask(cidr.prefix);
  return mask === 0 || ((address[whole] ?? 0) & mask) === ((cidr.bytes[whole] ?? 0) & mask);
}

/** Whether every bit after the first `prefix` is zero. */
function hostBitsClear(bytes: Uint8Array, prefix: number): boolean {
  const whole = prefix >> 3;
  if (((bytes[whole] ?? 0) & ~prefixMask(prefix) & 0xff) !== 0) return false;
  return bytes.subarray(whole + 1).every((b) => b === 0);
}

/** The mask of the prefix's bits in its last, partial byte (0 when the prefix ends on a byte boundary). */
function prefixMask(prefix: number): number {
  return (0xff << (8 - (prefix & 7))) & 0xff;
}
