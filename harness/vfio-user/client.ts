/**
 * A minimal vfio-user client for tests and benches: requests with replies
 * matched by message id. It cannot pass fds (Node's net module has no
 * SCM_RIGHTS); tests/fixtures/vfio-user/scm_client.py does that.
 */
import { connect, type Socket } from 'node:net';
import { withDeadline } from '../util/deadline.js';
import { Flags, FrameReader, HEADER_SIZE, encodeRequest, type Header } from './protocol.js';

export interface Reply {
  header: Header;
  /** The payload after the header (a copy). */
  body: Buffer;
}

export class VfioUserClient {
  private readonly waiting = new Map<number, { resolve: (r: Reply) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private closedWith: Error | undefined;
  /** Replies no request was waiting for (e.g. to a posted write, which must not happen). */
  readonly unexpected: Reply[] = [];

  private constructor(private readonly sock: Socket) {
    const reader = new FrameReader(
      {
        frame: (f) => {
          const header = { msgId: f.msgId, command: f.command, size: f.size, flags: f.flags, error: f.error };
          const r = { header, body: Buffer.from(f.buf.subarray(f.bodyStart, f.bodyStart + f.size - HEADER_SIZE)) };
          const w = this.waiting.get(f.msgId);
          if (w) {
            this.waiting.delete(f.msgId);
            w.resolve(r);
          } else this.unexpected.push(r);
        },
        problem: (p) => (this.closedWith = new Error(`unframeable reply: ${JSON.stringify(p.header)}`)),
      },
      64 << 20,
    );
    sock.on('data', (d: Buffer) => reader.push(d));
    sock.on('error', (e) => (this.closedWith = e));
    sock.on('close', () => {
      this.closedWith ??= new Error('server closed the connection');
      // A request the server can no longer answer fails now, not at its deadline.
      for (const w of this.waiting.values()) w.reject(new Error(`vfio-user request unanswered: ${this.closedWith.message}`));
      this.waiting.clear();
    });
  }

  static connect(path: string, ms = 5000): Promise<VfioUserClient> {
    const sock = connect(path);
    return withDeadline(
      new Promise((resolve, reject) => {
        sock.once('connect', () => resolve(new VfioUserClient(sock)));
        sock.once('error', reject);
      }),
      ms,
      `vfio-user connect to ${path}`,
      () => void sock.destroy(),
    );
  }

  get closed(): boolean {
    return this.sock.destroyed || this.closedWith !== undefined;
  }

  /** Sends raw bytes as they are (for malformed-input tests). */
  sendRaw(bytes: Buffer): void {
    this.sock.write(bytes);
  }

  /** A request and its reply; an error reply resolves too (check header.flags). */
  request(command: number, payload?: Buffer, ms = 5000): Promise<Reply> {
    const msgId = this.take();
    if (this.sock.destroyed) return Promise.reject(new Error(`vfio-user request to a closed connection${this.closedWith ? `: ${this.closedWith.message}` : ''}`));
    const p = new Promise<Reply>((resolve, reject) => this.waiting.set(msgId, { resolve, reject }));
    this.sock.write(encodeRequest(msgId, command, payload));
    return withDeadline(p, ms, `vfio-user reply to command ${command} (message ${msgId})`, () => {
      this.waiting.delete(msgId);
      return this.closedWith ? `connection: ${this.closedWith.message}` : undefined;
    });
  }

  /** A request with No_reply set: nothing comes back. */
  post(command: number, payload?: Buffer): void {
    this.sock.write(encodeRequest(this.take(), command, payload, Flags.NO_REPLY));
  }

  /** Resolves when the server closes the connection. */
  waitClosed(ms: number): Promise<void> {
    if (this.sock.destroyed) return Promise.resolve();
    return withDeadline(new Promise((resolve) => this.sock.once('close', () => resolve())), ms, 'vfio-user server closing the connection');
  }

  close(): void {
    this.sock.destroy();
  }

  private take(): number {
    const id = this.nextId;
    this.nextId = (this.nextId + 1) & 0xffff;
    return id;
  }
}

/** True when a reply carries the Error bit; `errno` is then in header.error. */
export function isErrorReply(r: Reply): boolean {
  return (r.header.flags & Flags.ERROR) !== 0;
}
