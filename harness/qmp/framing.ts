import { QmpProtocolError } from './errors.js';

export type QmpMessage = Record<string, unknown>;

/**
 * Splits a byte stream into JSON objects. QEMU writes one object per line
 * ("\r\n"), but `pretty=on` monitors spread one over many lines, so the split
 * follows braces and strings, not newlines. Bytes are decoded only once a whole
 * object is there, so a multi-byte character split across reads is safe.
 */
export class JsonObjectSplitter {
  private buf: Buffer = Buffer.alloc(0);
  private scanned = 0; // bytes of buf already scanned
  private depth = 0;
  private inString = false;
  private escaped = false;
  private start = -1; // offset of the current object's '{'

  constructor(private readonly onMessage: (msg: QmpMessage, raw: string) => void) {}

  push(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const b = this.buf;
    let consumed = 0;
    for (let i = this.scanned; i < b.length; i++) {
      const c = b[i]!;
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === 0x5c /* \ */) this.escaped = true;
        else if (c === 0x22 /* " */) this.inString = false;
        continue;
      }
      if (c === 0x22) {
        this.inString = true;
      } else if (c === 0x7b /* { */) {
        if (this.depth++ === 0) this.start = i;
      } else if (c === 0x7d /* } */) {
        if (this.depth === 0) throw new QmpProtocolError(`unbalanced '}' in QMP stream: ${this.excerpt(i)}`);
        if (--this.depth === 0) {
          this.emit(b.toString('utf8', this.start, i + 1));
          consumed = i + 1;
        }
      } else if (this.depth === 0 && c !== 0x0a && c !== 0x0d && c !== 0x20 && c !== 0x09) {
        throw new QmpProtocolError(`unexpected byte 0x${c.toString(16)} between QMP messages: ${this.excerpt(i)}`);
      }
    }
    this.buf = consumed === b.length ? Buffer.alloc(0) : b.subarray(consumed);
    this.scanned = this.buf.length;
    if (this.depth > 0) this.start -= consumed;
  }

  private emit(raw: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(raw);
    } catch (e) {
      throw new QmpProtocolError(`malformed JSON from QMP peer (${(e as Error).message}): ${raw.slice(0, 200)}`);
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
      throw new QmpProtocolError(`QMP message is not an object: ${raw.slice(0, 200)}`);
    }
    this.onMessage(msg as QmpMessage, raw);
  }

  private excerpt(at: number): string {
    return JSON.stringify(this.buf.toString('utf8', Math.max(0, at - 40), Math.min(this.buf.length, at + 40)));
  }
}

export function encode(msg: QmpMessage): string {
  return JSON.stringify(msg) + '\n';
}
