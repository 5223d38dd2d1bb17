import { QmpMessageTooLargeError, QmpProtocolError } from './errors.js';

export type QmpMessage = Record<string, unknown>;

/**
 * The largest message a connection accepts by default. QEMU's biggest answers
 * are query-qmp-schema (a few hundred KB) and HMP output such as `info mtree`
 * (a few MB); a peer sending more is broken or hostile.
 */
export const DEFAULT_MAX_MESSAGE_BYTES = 32 << 20;

/**
 * Deepest nesting of objects and arrays accepted, QEMU's own limit for what
 * it reads (MAX_NESTING in qobject/json-streamer.c). JSON.parse copes with far
 * deeper input, but anything that walks the value recursively afterwards
 * (JSON.stringify in an error message, a deep-equal) overflows the stack.
 */
export const MAX_NESTING = 1024;

/**
 * Splits a byte stream into JSON objects. QEMU writes one object per line
 * ("\r\n"), but `pretty=on` monitors spread one over many lines, so the split
 * follows braces and strings, not newlines. Bytes are decoded only once a whole
 * object is there, so a multi-byte character split across reads is safe.
 *
 * Each byte is scanned once and the chunks of an unfinished object are kept
 * as a list and joined once, when its closing brace arrives: the cost is
 * linear in the message's size (a buffer grown by concatenation on every read
 * made a 40 MB message cost seconds). An object longer than `maxMessageBytes`
 * is refused as soon as it passes the limit, before it is kept whole.
 */
export class JsonObjectSplitter {
  /** Chunks (or tails of chunks) of the object being read, oldest first. */
  private parts: Buffer[] = [];
  /** Bytes in `parts`. */
  private partBytes = 0;
  private depth = 0;
  /** Open objects and arrays. */
  private nesting = 0;
  private inString = false;
  private escaped = false;
  /** Bytes of the current string scanned so far. */
  private stringRun = 0;

  constructor(
    private readonly onMessage: (msg: QmpMessage, raw: string) => void,
    readonly maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES,
  ) {}

  push(chunk: Buffer): void {
    // Offset in `chunk` where the current object starts (0 when it began in an earlier chunk).
    let start = this.depth > 0 ? 0 : -1;
    const n = chunk.length;
    let nextQuote = -1;
    let nextSlash = -1;
    for (let i = 0; i < n; i++) {
      const c = chunk[i]!;
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === 0x5c /* \ */) this.escaped = true;
        else if (c === 0x22 /* " */) this.inString = false;
        else if (++this.stringRun > 64) {
          // A long string: skip its plain run with native searches (the byte
          // loop stays for short ones, where a native call costs more). Each
          // search result is kept until the scan passes it, so a string with
          // many escapes still costs one pass, not one search per escape.
          if (nextQuote <= i) nextQuote = indexOr(chunk, 0x22, i + 1, n);
          if (nextSlash <= i) nextSlash = indexOr(chunk, 0x5c, i + 1, n);
          const stop = Math.min(nextQuote, nextSlash);
          this.stringRun += stop - 1 - i;
          i = stop - 1;
        }
        continue;
      }
      if (c === 0x22) {
        this.inString = true;
        this.stringRun = 0;
      } else if (c === 0x7b /* { */) {
        if (this.depth++ === 0) start = i;
        this.nest(chunk, i);
      } else if (c === 0x5b /* [ */ && this.depth > 0) {
        this.nest(chunk, i);
      } else if (c === 0x5d /* ] */ && this.depth > 0) {
        this.nesting--;
      } else if (c === 0x7d /* } */) {
        if (this.depth === 0) throw new QmpProtocolError(`unbalanced '}' in QMP stream: ${excerpt(chunk, i)}`);
        this.nesting--;
        if (--this.depth === 0) {
          this.nesting = 0; // brackets the parser will refuse must not carry over
          this.checkSize(this.partBytes + i + 1 - start);
          this.emit(this.take(chunk.subarray(start, i + 1)));
          start = -1;
        }
      } else if (this.depth === 0 && c !== 0x0a && c !== 0x0d && c !== 0x20 && c !== 0x09) {
        throw new QmpProtocolError(`unexpected byte 0x${c.toString(16)} between QMP messages: ${excerpt(chunk, i)}`);
      }
    }
    if (this.depth > 0) {
      const tail = chunk.subarray(start);
      this.checkSize(this.partBytes + tail.length);
      this.parts.push(tail);
      this.partBytes += tail.length;
    }
  }

  /** Bytes held for an unfinished object. */
  get buffered(): number {
    return this.partBytes;
  }

  private nest(chunk: Buffer, at: number): void {
    if (++this.nesting > MAX_NESTING) throw new QmpProtocolError(`QMP message nests objects and arrays deeper than ${MAX_NESTING} levels: ${excerpt(chunk, at)}`);
  }

  private checkSize(size: number): void {
    if (size > this.maxMessageBytes) throw new QmpMessageTooLargeError(size, this.maxMessageBytes, this.depth > 0);
  }

  /** The whole object: the kept parts and its last piece, decoded once. */
  private take(last: Buffer): string {
    if (this.parts.length === 0) return last.toString('utf8');
    this.parts.push(last);
    const whole = Buffer.concat(this.parts, this.partBytes + last.length);
    this.parts = [];
    this.partBytes = 0;
    return whole.toString('utf8');
  }

  private emit(raw: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(raw);
    } catch (e) {
      throw new QmpProtocolError(`malformed JSON from QMP peer (${(e as Error).message}): ${quote(raw)}`);
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
      throw new QmpProtocolError(`QMP message is not an object: ${quote(raw)}`);
    }
    this.onMessage(msg as QmpMessage, raw);
  }
}

/** A value as JSON for an error text, at most 200 characters. */
export function show(v: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(v) ?? String(v);
  } catch (e) {
    text = `(cannot be shown: ${(e as Error).message})`;
  }
  return quote(text);
}

/** At most 200 characters of a message, for error texts. */
export function quote(raw: string): string {
  return raw.length <= 200 ? raw : `${raw.slice(0, 200)}... (${raw.length} characters)`;
}

function indexOr(buf: Buffer, byte: number, from: number, none: number): number {
  const at = buf.indexOf(byte, from);
  return at < 0 ? none : at;
}

function excerpt(buf: Buffer, at: number): string {
  return JSON.stringify(buf.toString('utf8', Math.max(0, at - 40), Math.min(buf.length, at + 40)));
}

export function encode(msg: QmpMessage): string {
  return JSON.stringify(msg) + '\n';
}
