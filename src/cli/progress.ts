/**
 * Progress of a long run over files: a redrawn bar on a terminal, and plain lines
 * (at most one a second) when stderr goes to a file or a pipe, where a bar would be
 * a smear of carriage returns.
 */
const BAR_WIDTH = 24;
const TTY_INTERVAL_MS = 100;
const LINE_INTERVAL_MS = 1000;

export class Progress {
  readonly #out: NodeJS.WritableStream;
  readonly #tty: boolean;
  readonly #now: () => number;
  readonly #started: number;
  #files = 0;
  #bytes = 0;
  #lastDrawn = Number.NEGATIVE_INFINITY;
  /** The work counted when last drawn, so `finish` doesn't repeat a line that already says it all. */
  #drawnFiles = -1;
  #drawnBytes = -1;

  constructor(
    out: NodeJS.WritableStream,
    readonly totalFiles: number,
    readonly totalBytes: number,
    now: () => number = Date.now,
  ) {
    this.#out = out;
    this.#tty = (out as { isTTY?: boolean }).isTTY === true;
    this.#now = now;
    this.#started = now();
  }

  /** Counts work done; draws when it is time to. */
  advance(files: number, bytes: number): void {
    this.#files += files;
    this.#bytes += bytes;
    const now = this.#now();
    if (now - this.#lastDrawn >= (this.#tty ? TTY_INTERVAL_MS : LINE_INTERVAL_MS)) this.#draw(now);
  }

  /** Draws the final state, unless already drawn (and ends the bar's line). */
  finish(): void {
    if (this.#files !== this.#drawnFiles || this.#bytes !== this.#drawnBytes) this.#draw(this.#now());
    if (this.#tty) this.#out.write("\n");
  }

  #draw(now: number): void {
    this.#lastDrawn = now;
    this.#drawnFiles = this.#files;
    this.#drawnBytes = this.#bytes;
    const seconds = Math.max((now - this.#started) / 1000, 1e-3);
    const rate = this.#bytes / seconds;
    const left = this.totalBytes - this.#bytes;
    const eta = this.#bytes > 0 ? formatDuration(left / rate) : "?";
    const files = `${this.#files}/${this.totalFiles} files`;
    const bytes = `${formatBytes(this.#bytes)} of ${formatBytes(this.totalBytes)}`;
    const speed = `${formatBytes(rate)}/s`;
    if (!this.#tty) {
      this.#out.write(`progress: ${files}, ${bytes}, ${speed}, ETA ${eta}\n`);
      return;
    }
    const share =
      this.totalBytes > 0 ? this.#bytes / this.totalBytes : this.totalFiles > 0 ? this.#files / this.totalFiles : 1;
    const filled = Math.round(share * BAR_WIDTH);
    const bar = `[${"#".repeat(filled)}${"-".repeat(BAR_WIDTH - filled)}]`;
    this.#out.write(
      `\r\x1b[K${bar} ${(share * 100).toFixed(0).padStart(3)}%  ${files}  ${bytes}  ${speed}  ETA ${eta}`,
    );
  }
}

/** 1536 → "1.5 KiB". */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${Math.round(n)} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** 3725 → "1:02:05"; 65 → "1:05". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
}
