import { createHash } from "node:crypto";
import { type FileHandle, open, rm } from "node:fs/promises";
import type { FastifyPluginAsync } from "fastify";
import { type ApiDeps, authorize } from "../app.js";

/**
 * The whole store copied out, for a backup (privileged `store:backup`): a SQLite file
 * that stands alone, as of one moment, made while the server goes on serving. Its
 * SHA-256 and the newest audit record it holds go in the headers and in the
 * request's own audit record, which comes after the copy and so is not in it.
 */
export function storeRoutes(deps: ApiDeps): FastifyPluginAsync {
  return async (app) => {
    app.get("/v1/store/backup", async (req, reply) => {
      authorize(deps, req, "store:backup", "store");
      const { path, auditSeq } = await deps.store.snapshot();
      let handle: FileHandle | undefined;
      try {
        handle = await open(path, "r");
        const { size } = await handle.stat();
        const sha256 = createHash("sha256");
        for await (const chunk of handle.createReadStream({ autoClose: false, start: 0 })) sha256.update(chunk);
        const digest = sha256.digest("hex");
        Object.assign(req.custos.details, { bytes: size, sha256: digest, auditSeq });
        reply
          .type("application/vnd.sqlite3")
          .header("content-length", size)
          .header("content-disposition", `attachment; filename="custos-backup-${auditSeq}.db"`)
          .header("cache-control", "no-store")
          .header("x-custos-backup-sha256", digest)
          .header("x-custos-backup-audit-seq", auditSeq);
        // Sent from the open file, whose name is removed below: nothing stays on disk however the answer ends.
        const body = handle.createReadStream({ start: 0 });
        handle = undefined;
        return reply.send(body);
      } finally {
        await handle?.close();
        await rm(path, { force: true });
      }
    });
  };
}
