/** Reading Custos's public endpoints (CA certificates, CRLs, SSH CA keys, the KRL) from the CLI. */
import { request as httpsRequest } from "node:https";
import { apiError, ClientError, transportError } from "../client/index.js";
import type { CliContext } from "./context.js";

/** Largest public answer taken (a CRL or KRL of many revocations is the big one). */
const MAX_PUBLIC_ANSWER_BYTES = 64 * 1024 * 1024;
const PUBLIC_TIMEOUT_MS = 60_000;
const TLS_ERROR = /CERT|SELF_SIGNED|ISSUER|SIGNATURE|ERR_TLS|ERR_SSL|HOSTNAME/;

export interface PublicAnswer {
  readonly body: Buffer;
  readonly headers: NodeJS.Dict<string | string[]>;
}

/**
 * GETs a public, non-JSON endpoint (PEM, DER, text, the binary KRL) without a token.
 * The API client speaks only JSON; this borrows its address (validated there) and
 * trusts the same CUSTOS_CACERT, verification always on.
 */
export async function getPublic(ctx: CliContext, path: string): Promise<PublicAnswer> {
  const { address, ca } = ctx.client();
  const url = new URL(`${address.pathname.replace(/\/+$/, "")}${path}`, address);
  return new Promise<PublicAnswer>((resolve, reject) => {
    const req = httpsRequest(
      url,
      { method: "GET", agent: false, rejectUnauthorized: true, timeout: PUBLIC_TIMEOUT_MS, ...(ca ? { ca } : {}) },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_PUBLIC_ANSWER_BYTES) {
            res.destroy(
              transportError("internal", `answer from ${url.origin} exceeds ${MAX_PUBLIC_ANSWER_BYTES} bytes`),
            );
          } else {
            chunks.push(chunk);
          }
        });
        res.on("error", (e) => reject(e instanceof ClientError ? e : transportError("unavailable", e.message, e)));
        res.on("end", () => {
          const body = Buffer.concat(chunks);
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) {
            resolve({ body, headers: res.headers });
            return;
          }
          const requestId = typeof res.headers["x-request-id"] === "string" ? res.headers["x-request-id"] : undefined;
          let error: { code?: unknown; message?: unknown } | undefined;
          try {
            error = (JSON.parse(body.toString("utf8")) as { error?: typeof error }).error;
          } catch {
            error = undefined;
          }
          if (typeof error?.code === "string") {
            const message = typeof error.message === "string" ? error.message : error.code;
            reject(apiError(status, error.code, message, requestId));
          } else {
            reject(apiError(status, "http_error", `HTTP ${status} ${res.statusMessage ?? ""}`.trim(), requestId));
          }
        });
      },
    );
    req.on("timeout", () => {
      req.destroy(transportError("unavailable", `no answer from ${url.origin} within ${PUBLIC_TIMEOUT_MS} ms`));
    });
    req.on("error", (e) => {
      if (e instanceof ClientError) {
        reject(e);
        return;
      }
      const code = (e as { code?: unknown }).code;
      if (typeof code === "string" && TLS_ERROR.test(code)) {
        const hint = ca ? "" : " (set CUSTOS_CACERT to the Custos CA certificate file)";
        reject(transportError("tls_error", `TLS verification of ${url.origin} failed: ${e.message}${hint}`, e));
      } else {
        reject(transportError("unavailable", `cannot reach ${url.origin}: ${e.message}`, e));
      }
    });
    req.end();
  });
}
