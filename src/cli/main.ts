/** The `custos` executable's entry point (bin/custos.js imports this). */
import { processIo } from "./io.js";
import { run } from "./run.js";

// A reader that left (`| head`) fails the pending write, and run() reports that as
// 141; the stream's own 'error' event would crash the process with a stack trace.
// So would a log reader that left stderr: `custos run` must go on supervising its app.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code !== "EPIPE") throw e;
  });
}
// exitCode rather than exit(): stdout may still be draining into a pipe.
process.exitCode = await run(process.argv.slice(2), processIo());
