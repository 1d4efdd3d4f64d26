/**
 * The files `custos run` keeps for the app in its credentials directory, each
 * replaced atomically (a reader sees the old file or the new, never half of one):
 * `cert.pem` (leaf then chain), `key.pem` (0600), `ca.pem` (the CA chain peers'
 * identities are checked against) and `jwt` (0600). The two private ones are
 * removed when the run ends.
 */
import { mkdir, rm, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { writeFileAtomic } from "../files/index.js";

/** Where each credential file lives. */
export interface CredentialFiles {
  readonly dir: string;
  readonly cert: string;
  readonly key: string;
  readonly ca: string;
  readonly jwt: string;
}

/** What goes into the credential files. */
export interface CredentialContents {
  readonly certificate: string;
  readonly chain: string;
  readonly caChain: string;
  readonly privateKeyPem: string;
  readonly jwt: string;
}

export const PUBLIC_MODE = 0o644;
export const PRIVATE_MODE = 0o600;
export const DIR_MODE = 0o700;

/** The file names under `dir` (made absolute: the child may change its working directory). */
export function credentialFiles(dir: string): CredentialFiles {
  const abs = resolve(dir);
  return {
    dir: abs,
    cert: join(abs, "cert.pem"),
    key: join(abs, "key.pem"),
    ca: join(abs, "ca.pem"),
    jwt: join(abs, "jwt"),
  };
}

/**
 * Creates the directory with mode 0700 (and any missing parents). One that exists
 * is used as it is (its mode is the operator's choice; the private files in it are
 * 0600 regardless), but it must be a directory.
 */
export async function prepareDirectory(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: DIR_MODE });
  const info = await stat(dir);
  if (!info.isDirectory()) throw new Error(`${dir} is not a directory`);
}

/** The leaf followed by its chain, as TLS servers and clients want them in one file. */
export function certificateWithChain(certificate: string, chain: string): string {
  const leaf = certificate.endsWith("\n") ? certificate : `${certificate}\n`;
  if (chain.trim() === "") return leaf;
  return `${leaf}${chain.endsWith("\n") ? chain : `${chain}\n`}`;
}

/**
 * Writes all four files at once. Each write is atomic, the set is not: an app that
 * reads the certificate and key during a renewal may see one old and one new, which
 * is why the app is signalled only once all four are in place.
 */
export async function writeCredentials(files: CredentialFiles, contents: CredentialContents): Promise<void> {
  await Promise.all([
    writeFileAtomic(files.key, contents.privateKeyPem, PRIVATE_MODE),
    writeFileAtomic(files.cert, certificateWithChain(contents.certificate, contents.chain), PUBLIC_MODE),
    writeFileAtomic(files.ca, ensureNewline(contents.caChain), PUBLIC_MODE),
    writeJwt(files, contents.jwt),
  ]);
}

/**
 * Removes `key.pem` and `jwt` once the app has ended: both stay valid until they
 * expire, and nothing is left to use them. The public files stay, as templates do
 * (their destinations are the operator's).
 */
export async function removePrivateFiles(files: CredentialFiles): Promise<void> {
  await Promise.all([rm(files.key, { force: true }), rm(files.jwt, { force: true })]);
}

/** Rewrites the JWT file alone (after a refresh). */
export function writeJwt(files: CredentialFiles, jwt: string): Promise<void> {
  return writeFileAtomic(files.jwt, jwt, PRIVATE_MODE);
}

function ensureNewline(text: string): string {
  return text.endsWith("\n") ? text : `${text}\n`;
}
