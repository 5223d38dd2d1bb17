import WebSocket from 'ws';
import { withDeadline } from '../util/deadline.js';

/**
 * A ws client that queues every message, so none is missed between awaits
 * (tests of the QMP bridge and the watch server, the websocket-chardev repro).
 */
export async function wsClient(url: string, opts: WebSocket.ClientOptions = {}, protocols?: string) {
  const ws = protocols ? new WebSocket(url, protocols, opts) : new WebSocket(url, opts);
  const queue: string[] = [];
  const waiters: Array<(s: string) => void> = [];
  ws.on('message', (d) => {
    const s = String(d);
    const w = waiters.shift();
    if (w) w(s);
    else queue.push(s);
  });
  await withDeadline(new Promise((resolve, reject) => (ws.once('open', resolve), ws.once('error', reject))), 5000, `WebSocket connect to ${url}`);
  return {
    ws,
    next: (ms = 5000, what = `a message from ${url}`) =>
      withDeadline(queue.length ? Promise.resolve(queue.shift()!) : new Promise<string>((r) => waiters.push(r)), ms, what),
    send: (o: object) => ws.send(JSON.stringify(o)),
    /** QEMU's websocket chardev reads binary frames only. */
    sendBinary: (text: string) => ws.send(Buffer.from(text)),
    close: () => ws.close(),
  };
}

export type WsClient = Awaited<ReturnType<typeof wsClient>>;
