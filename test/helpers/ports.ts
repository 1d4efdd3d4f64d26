import { createServer } from "node:net";

/**
 * A loopback port nothing listens on right now. In a module of its own so that
 * helpers which must not load the server's modules (the OpenSSH harness) can use it.
 */
export function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => ok(port));
    });
  });
}
