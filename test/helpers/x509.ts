import { spawnSync } from "node:child_process";

/**
 * A throwaway self-signed EC P-256 certificate, valid a day, made by `openssl req
 * -x509`: `<base>.pem`, its key beside it in `<base>.key`. With `ip`, its
 * subjectAltName names that address, so a TLS client can reach a server presenting it.
 */
export function selfSignedCert(base: string, subject: string, ip?: string): { certFile: string; keyFile: string } {
  const certFile = `${base}.pem`;
  const keyFile = `${base}.key`;
  const made = spawnSync("openssl", [
    ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"],
    ...["-keyout", keyFile, "-out", certFile, "-days", "1", "-subj", subject],
    ...(ip === undefined ? [] : ["-addext", `subjectAltName=IP:${ip}`]),
  ]);
  if (made.status !== 0) throw new Error(`openssl req failed: ${made.stderr.toString()}`);
  return { certFile, keyFile };
}
