import { createServer, connect, type Server, type Socket } from 'node:net';
import { rm } from 'node:fs/promises';
import { withDeadline } from '../util/deadline.js';
import { listenPrivately } from '../util/private-socket.js';

/**
 * The byte pipe under the QMP protocol. The protocol layer knows nothing of
 * sockets; anything that can carry bytes both ways (a unix or TCP socket, a
 * WebSocket) can sit here.
 */
export interface Transport {
  /** Human-readable peer, for error messages ("unix:/tmp/x/qmp.sock"). */
  readonly peer: string;
  send(data: string): void;
  onData(cb: (chunk: Buffer) => void): void;
  /** Called once, when the pipe is gone for whatever reason. */
  onClose(cb: (error?: Error) => void): void;
  close(): void;
}

class SocketTransport implements Transport {
  private closeCbs: Array<(error?: Error) => void> = [];
  private closed = false;
  private lastError: Error | undefined;

  constructor(
    private readonly socket: Socket,
    readonly peer: string,
  ) {
    socket.setNoDelay?.(true);
    socket.on('error', (e) => (this.lastError = e));
    socket.on('close', () => {
      this.closed = true;
      for (const cb of this.closeCbs.splice(0)) cb(this.lastError);
    });
  }
  /**
   * Writes are coalesced per microtask: a burst of commands issued in one tick
   * (Promise.all over many executes) leaves in one write, so QEMU reads them in
   * one go; a lone command still leaves before the event loop next waits.
   */
  send(data: string): void {
    if (this.closed) return;
    this.outbox.push(data);
    if (this.outbox.length === 1) queueMicrotask(this.flush);
  }
  private outbox: string[] = [];
  private readonly flush = (): void => {
    const data = this.outbox.length === 1 ? this.outbox[0]! : this.outbox.join('');
    this.outbox = [];
    if (!this.closed) this.socket.write(data);
  };
  onData(cb: (chunk: Buffer) => void): void {
    this.socket.on('data', cb);
  }
  onClose(cb: (error?: Error) => void): void {
    if (this.closed) queueMicrotask(() => cb(this.lastError));
    else this.closeCbs.push(cb);
  }
  close(): void {
    this.socket.destroy();
  }
}

function connectSocket(opts: { path: string } | { host: string; port: number }, peer: string, timeoutMs: number): Promise<Transport> {
  const socket = connect(opts as never);
  const ready = new Promise<Transport>((resolve, reject) => {
    socket.once('connect', () => resolve(new SocketTransport(socket, peer)));
    socket.once('error', (e) => reject(new Error(`cannot connect to QMP at ${peer}: ${e.message}`)));
  });
  return withDeadline(ready, timeoutMs, `connect to QMP at ${peer}`, () => void socket.destroy());
}

export function connectUnix(path: string, timeoutMs = 5000): Promise<Transport> {
  return connectSocket({ path }, `unix:${path}`, timeoutMs);
}

export function connectTcp(host: string, port: number, timeoutMs = 5000): Promise<Transport> {
  return connectSocket({ host, port }, `tcp:${host}:${port}`, timeoutMs);
}

/**
 * A listening unix socket that QEMU connects to (`-qmp unix:PATH` without
 * server=on, `-chardev socket,path=PATH` likewise). Listening on our side means
 * there is nothing to poll for: QEMU connects while it creates the chardev, and
 * the greeting follows as soon as the monitor is up. Python's qemu.machine does
 * the same. The socket is 0600 from its creation, in a directory that must be
 * 0700 (listenPrivately).
 */
export class UnixListener {
  private constructor(
    private readonly server: Server,
    readonly path: string,
    private readonly pending: Promise<Socket>,
  ) {}

  static async create(path: string): Promise<UnixListener> {
    const server = createServer();
    let resolveConn!: (s: Socket) => void;
    const pending = new Promise<Socket>((r) => (resolveConn = r));
    server.once('connection', (s) => {
      resolveConn(s);
      server.close(); // one peer only; no one else may connect after QEMU
    });
    await listenPrivately(server, path, 'QMP listener');
    return new UnixListener(server, path, pending);
  }

  /** The peer's socket; rejects at the deadline or when `abort` settles first. */
  async accept(timeoutMs: number, abort?: Promise<string>): Promise<Socket> {
    const contenders: Array<Promise<Socket>> = [this.pending];
    if (abort) contenders.push(abort.then((why) => Promise.reject(new Error(why))));
    return withDeadline(Promise.race(contenders), timeoutMs, `QEMU connecting to ${this.path}`);
  }

  async acceptTransport(timeoutMs: number, abort?: Promise<string>): Promise<Transport> {
    return new SocketTransport(await this.accept(timeoutMs, abort), `unix:${this.path}`);
  }

  async close(): Promise<void> {
    this.server.close();
    await rm(this.path, { force: true });
  }
}
