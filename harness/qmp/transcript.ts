import { createWriteStream, type WriteStream } from 'node:fs';

/**
 * A JSON-lines record of every QMP message on one connection, each with its
 * wall-clock time and milliseconds since the connection opened:
 *   {"t":"2026-11-26T01:02:03.456Z","ms":12.345,"dir":"out","msg":{...}}
 * The message is copied as raw text, not re-serialized: cheap on the hot path
 * and exactly what crossed the wire.
 */
export class Transcript {
  private readonly out: WriteStream;
  private readonly t0 = performance.now();

  constructor(readonly path: string) {
    this.out = createWriteStream(path, { flags: 'a', mode: 0o600 });
  }

  record(dir: 'in' | 'out' | 'note', raw: string): void {
    const ms = (performance.now() - this.t0).toFixed(3);
    this.out.write(`{"t":"${new Date().toISOString()}","ms":${ms},"dir":"${dir}","msg":${raw.trimEnd()}}\n`);
  }

  note(text: string): void {
    this.record('note', JSON.stringify(text));
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.out.end(resolve));
  }
}
