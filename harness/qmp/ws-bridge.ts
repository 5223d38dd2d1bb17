import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { WebSocketServer, type WebSocket } from 'ws';
import { QmpCommandError } from './errors.js';
import type { QmpConnection } from './protocol.js';

export interface BridgeOptions {
  /** Loopback unless a caller says otherwise on purpose. */
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** Required from every client; a random one is made when absent. */
  token?: string;
  /** Only query-* commands (and every event): a watcher may look, not steer. */
  readOnly?: boolean;
}

export interface QmpBridge {
  /** ws://host:port/ — the client adds ?token=… or an `Authorization: Bearer` header. */
  url: string;
  token: string;
  close(): Promise<void>;
}

/**
 * QMP over WebSocket for people and remote controllers watching a running
 * machine. QEMU's own websocket chardev greets but never handles a QMP command
 * (facts sheet §10), so the harness serves the bridge itself, on top of the
 * connection it already owns: each client gets QEMU's greeting, every event,
 * and answers to its own commands under its own ids. The harness's connection
 * stays the only one QEMU sees; capabilities were negotiated once, so a
 * client's qmp_capabilities is answered here.
 */
export async function startQmpBridge(conn: QmpConnection, opts: BridgeOptions = {}): Promise<QmpBridge> {
  const host = opts.host ?? '127.0.0.1';
  const token = opts.token ?? randomBytes(24).toString('base64url');
  const wss = new WebSocketServer({
    host,
    port: opts.port ?? 0,
    verifyClient: (info: { req: IncomingMessage }, cb: (ok: boolean, code?: number, message?: string) => void) =>
      tokenOk(info.req, token) ? cb(true) : cb(false, 401, 'QMP bridge: token required'),
  });
  await new Promise<void>((resolve, reject) => {
    wss.once('listening', resolve);
    wss.once('error', reject);
  });
  const clients = new Set<WebSocket>();
  wss.on('connection', (ws) => {
    clients.add(ws);
    ws.on('close', () => clients.delete(ws));
    bridgeClient(conn, ws, { readOnly: opts.readOnly === true });
  });
  const { port } = wss.address() as { port: number };
  return {
    url: `ws://${host.includes(':') ? `[${host}]` : host}:${port}/`,
    token,
    close: async () => {
      for (const ws of clients) ws.terminate();
      await new Promise<void>((r) => wss.close(() => r()));
    },
  };
}

/**
 * One client on the harness's connection: QEMU's greeting, every event, and
 * answers to its own commands. Also the way in for `harness run --watch`
 * (harness/report/watch.ts), which owns the HTTP server and its routing.
 * Stops forwarding when the socket closes.
 */
export function bridgeClient(conn: QmpConnection, ws: WebSocket, opts: { readOnly: boolean }): void {
  const untap = conn.tap((msg, raw) => {
    if ('event' in msg && ws.readyState === ws.OPEN) ws.send(raw.trimEnd());
  });
  ws.on('close', untap);
  ws.send(JSON.stringify({ QMP: { ...conn.greeting, capabilities: conn.oobEnabled ? ['oob'] : [] } }));
  ws.on('message', (data) => void answer(conn, ws, String(data), opts.readOnly));
}

/** What a read-only bridge lets through: QEMU's query-* commands change nothing. */
export const readOnlyAllows = (command: string): boolean => command.startsWith('query-');

async function answer(conn: QmpConnection, ws: WebSocket, text: string, readOnly: boolean): Promise<void> {
  let msg: Record<string, unknown>;
  try {
    msg = JSON.parse(text) as Record<string, unknown>;
    if (typeof msg !== 'object' || msg === null) throw new Error('not an object');
  } catch (e) {
    ws.send(JSON.stringify({ error: { class: 'GenericError', desc: `QMP bridge: malformed JSON: ${(e as Error).message}` } }));
    return;
  }
  const oob = 'exec-oob' in msg;
  const command = (oob ? msg['exec-oob'] : msg.execute) as string;
  const id = 'id' in msg ? { id: msg.id } : {};
  if (typeof command !== 'string') {
    ws.send(JSON.stringify({ error: { class: 'GenericError', desc: "QMP input lacks member 'execute'" }, ...id }));
    return;
  }
  if (command === 'qmp_capabilities') {
    ws.send(JSON.stringify({ return: {}, ...id }));
    return;
  }
  if (readOnly && !readOnlyAllows(command)) {
    ws.send(JSON.stringify({ error: { class: 'GenericError', desc: `QMP bridge: read-only (query-* commands only): ${command} refused` }, ...id }));
    return;
  }
  try {
    const ret = await conn.execute(command, msg.arguments as object | undefined, { oob });
    ws.send(JSON.stringify({ return: ret, ...id }));
  } catch (e) {
    const error = e instanceof QmpCommandError ? { class: e.errorClass, desc: e.desc } : { class: 'GenericError', desc: `QMP bridge: ${(e as Error).message}` };
    ws.send(JSON.stringify({ error, ...id }));
  }
}

function tokenOk(req: IncomingMessage, token: string): boolean {
  const fromQuery = new URL(req.url ?? '/', 'ws://x').searchParams.get('token');
  const auth = req.headers.authorization;
  const given = fromQuery ?? (auth?.startsWith('Bearer ') ? auth.slice(7) : undefined);
  return sameToken(given, token);
}

/** Constant-time comparison of a token a client gave with the server's. */
export function sameToken(given: string | undefined, token: string): boolean {
  if (!given) return false;
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}
