// A second test reporter beside TAP: after the run, it lists the tests that really
// failed (a failing `todo` test is a known bug, not a failure), each with its file,
// its suites and its error, so that a failure is found without reading 10,000 lines
// of TAP in which the known bugs' `not ok … # TODO` lines come first.
import { inspect } from 'node:util';

const MAX_ERROR_LINES = 30;

export default async function* failuresReporter(source) {
  const open = []; // names of the tests and suites started and not yet ended, by nesting
  const failures = [];
  for await (const { type, data } of source) {
    if (type === 'test:start') open[data.nesting] = data.name;
    if (type !== 'test:fail') continue;
    const failureType = data.details?.error?.failureType;
    // A parent whose only fault is a failed child: the child is listed already.
    if (data.todo !== undefined || failureType === 'subtestsFailed') continue;
    const path = [...open.slice(0, data.nesting), data.name].join(' › ');
    failures.push({ path, file: data.file, error: describe(data.details?.error) });
  }
  if (failures.length === 0) return;
  yield `\n# FAILED: ${failures.length} test${failures.length === 1 ? '' : 's'} (todo tests are known bugs and are not counted)\n`;
  for (const { path, file, error } of failures) {
    yield `not ok - ${path}\n#   file: ${file ?? 'unknown'}\n`;
    yield `${error.map((line) => `#   ${line}`).join('\n')}\n`;
  }
}

function describe(error) {
  if (error === undefined) return ['(no error recorded)'];
  // Errors from the test's own process arrive wrapped; the cause is the one thrown.
  const thrown = error.failureType === 'testCodeFailure' && error.cause ? error.cause : error;
  const text = thrown instanceof Error ? (thrown.stack ?? String(thrown)) : inspect(thrown, { depth: 4 });
  // A test file that failed as a whole (it crashed, or exited non-zero) says how.
  const exit = [error.exitCode != null && `exit code ${error.exitCode}`, error.signal && `signal ${error.signal}`];
  const lines = [...text.split('\n'), ...exit.filter(Boolean)];
  return lines.length > MAX_ERROR_LINES ? [...lines.slice(0, MAX_ERROR_LINES), '…'] : lines;
}
