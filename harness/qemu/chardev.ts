import { createWriteStream, type WriteStream } from 'node:fs';
import type { Socket } from 'node:net';

/**
 * One socket chardev of a running QEMU (a serial port, a virtio-console port),
 * with everything it says logged to a file in the machine's artifacts. Readers
 * subscribe with onData; `tail()` gives the last bytes for error messages.
 */
export class ChardevStream {
  private readonly log: WriteStream;
  private tailBuf = '';
  private static readonly tailMax = 16 * 1024;
  private listeners = new Set<(text: string) => void>();
  private closeListeners = new Set<() => void>();
  private closed = false;

  constructor(
    readonly id: string,
    readonly socket: Socket,
    readonly logPath: string,
  ) {
    this.log = createWriteStream(logPath, { flags: 'a' });
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      this.log.write(text);
      this.tailBuf = (this.tailBuf + text).slice(-ChardevStream.tailMax);
      for (const l of this.listeners) l(text);
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.closed = true;
      this.log.end();
      for (const l of this.closeListeners) l();
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Everything that arrives from now on; returns an unsubscribe function. */
  onData(cb: (text: string) => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  onClose(cb: () => void): () => void {
    if (this.closed) queueMicrotask(cb);
    else this.closeListeners.add(cb);
    return () => this.closeListeners.delete(cb);
  }

  write(data: string | Buffer): void {
    if (!this.closed) this.socket.write(data);
  }

  /** The last `maxChars` characters received (for failure messages). */
  tail(maxChars = 2000): string {
    return this.tailBuf.slice(-maxChars);
  }

  close(): void {
    this.socket.destroy();
  }
}
