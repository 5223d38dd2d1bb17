import WebSocket from 'ws';
import { withDeadline } from '../../harness/util/deadline.js';

export { wsClient } from '../../harness/qmp/ws-client.js';

/** The HTTP status a server answers a WebSocket upgrade it refuses with (it must refuse). */
export function refusedUpgrade(url: string, ms = 5000): Promise<number> {
  return withDeadline(
    new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.once('open', () => (ws.terminate(), reject(new Error(`the server accepted ${url}`))));
      ws.once('error', () => {});
    }),
    ms,
    `the answer to a WebSocket upgrade at ${url}`,
  );
}
