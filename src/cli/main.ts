/** The `custos` executable's entry point (bin/custos.js imports this). */
import { processIo } from "./io.js";
import { run } from "./run.js";

// A failed write to stdout (a reader that left `| head`, a full disk) fails the pending
// write, and run() reports it (141 for EPIPE, else an io_error); the stream's own 'error'
// event, unhandled, would crash the process with a stack trace. A failed write to stderr
// (a log reader gone, a full device) has nowhere to be reported: the command goes on
// (`custos run` supervising its app, `storage rewrap` rewrapping) and its exit code tells.
for (const stream of [process.stdout, process.stderr]) stream.on("error", () => {});
// exitCode rather than exit(): stdout may still be draining into a pipe.
process.exitCode = await run(process.argv.slice(2), processIo());
