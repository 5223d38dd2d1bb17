/**
 * `harness run --watch`: the run's HTML report served on loopback while the
 * run goes on, so a nightly run can be watched from a browser.
 *
 *   GET /<token>/            the report as it stands (the page reloads itself
 *                            when told to over /<token>/live)
 *   GET /<token>/<file>      a file of the run folder (the report's links)
 *   GET /<token>/machines    the running QEMUs: name, test, pid, bridge path
 *   WS  /<token>/live        {"type":"updated","summary":...} after results arrive,
 *                            {"type":"ended",...} when the run is over
 *   WS  /<token>/qmp/<m>     QMP of running machine <m> (its pid, or its name when
 *                            unique): query-* and events only unless write access
 *
 * A missing or wrong token is 403 everywhere: the URL printed at start is
 * the only key. The page is rebuilt from the run folder (results stream as
 * JSON lines, HARNESS_RESULTS_JSONL), debounced, and only while someone
 * watches it; nothing is written to the folder, so the static report the
 * run ends with stays the only report.html.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, realpathSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { basename, dirname, extname, join, relative, sep } from 'node:path';
import { WebSocketServer, type WebSocket } from 'ws';
import { followJsonLines } from '../lab/l1-results.js';
import { Machine } from '../qemu/machine.js';
import { bridgeClient, sameToken } from '../qmp/ws-bridge.js';
import { esc, renderReport } from './html/render.js';
import { joinOracles, readRun } from './html/run-folder.js';
import { summaryText, type TestResult } from './junit.js';

export interface WatchOptions {
  /** The run folder (runArtifactsDir()). */
  runDir: string;
  /** Where the reporter appends each result as it finishes; must end in .jsonl. */
  resultsJsonl: string;
  /** 0 (default) picks a free port. */
  port?: number;
  /** QMP commands beyond query-* through the bridge. */
  write?: boolean;
  /** A random one by default. */
  token?: string;
  /** Results closer together than this make one update. */
  debounceMs?: number;
  /** How often the results file is read. */
  pollMs?: number;
}

export interface WatchServer {
  /** http://127.0.0.1:PORT/TOKEN/ */
  url: string;
  token: string;
  port: number;
  /** Tells the page the run ended, then closes every socket and the server. */
  close(): Promise<void>;
}

export interface RunningMachine {
  name: string;
  /** The test's folder under the run's tests/ (or the machine's folder when outside it). */
  test: string;
  pid: number;
  /** The bridge's path on this server. */
  qmp: string;
}

const TYPES: Record<string, string> = { '.html': 'text/html; charset=utf-8', '.json': 'application/json', '.png': 'image/png', '.xml': 'application/xml' };

/**
 * Reloads the served page on "updated", keeping what the person watching had
 * set (the tests opened or closed, the filter, minor lines, the scroll);
 * never part of the report on disk.
 */
const LIVE_SCRIPT = `<div id="harness-live" style="position:fixed;bottom:0;right:0;padding:.3em .6em;background:#333;color:#fff;font:12px monospace">live</div>
<script>(()=>{
const K='harness-live-state',s=document.getElementById('harness-live'),f=document.getElementById('filter'),mi=document.getElementById('minor');
const all=()=>[...document.querySelectorAll('details[id]')];
const st=JSON.parse(sessionStorage.getItem(K)||'null');
if(st){sessionStorage.removeItem(K);
  // A test seen before keeps its state; a new one opens as the report opens it (failures open).
  const known=new Set(st.known),open=new Set(st.open);
  for(const d of all())if(known.has(d.id))d.open=open.has(d.id);
  if(f&&st.filter){f.value=st.filter;f.dispatchEvent(new Event('input'));}
  if(mi&&st.minor){mi.checked=true;mi.dispatchEvent(new Event('change'));}
  scrollTo(0,st.y);}
const save=()=>sessionStorage.setItem(K,JSON.stringify({known:all().map((d)=>d.id),open:all().filter((d)=>d.open).map((d)=>d.id),filter:f?f.value:'',minor:!!(mi&&mi.checked),y:scrollY}));
const u=new URL('live',location.href);u.protocol=u.protocol==='https:'?'wss:':'ws:';const ws=new WebSocket(u);
ws.onmessage=(e)=>{const m=JSON.parse(e.data);s.textContent=(m.type==='ended'?'run ended: ':'live: ')+m.summary;if(m.type==='updated'){save();location.reload();}};
ws.onclose=()=>{if(!s.textContent.startsWith('run ended'))s.textContent+=' (disconnected)';};})();</script>`;

/** The last line of the run's summary: "N passed, N failed, N skipped". */
const summaryLine = (results: readonly TestResult[]): string => summaryText(results).split('\n').at(-1)!;

export async function startWatch(opts: WatchOptions): Promise<WatchServer> {
  if (!opts.resultsJsonl.endsWith('.jsonl')) throw new Error(`watch: the results file ${opts.resultsJsonl} must end in .jsonl`);
  const token = opts.token ?? randomBytes(24).toString('base64url');
  const runDir = opts.runDir;
  const results: TestResult[] = [];
  const live = new Set<WebSocket>();
  const sockets = new Set<WebSocket>();
  let page: string | undefined;

  const build = (): string => {
    try {
      // readRun prefers results.json (the run's end) and falls back to the streamed lines beside it.
      const run = readRun(runDir, runDir, {}, opts.resultsJsonl.replace(/\.jsonl$/, '.json'));
      joinOracles(run, runDir);
      // No favicon: the browser would ask /favicon.ico, without the token (a 403 in its console).
      return renderReport(run, `viommu-harness run ${basename(runDir)} (live)`)
        .replace('</head>', '<link rel="icon" href="data:,"></head>')
        .replace(/<\/body>/, `${LIVE_SCRIPT}</body>`);
    } catch (e) {
      return `<!doctype html><meta charset="utf-8"><title>report not built</title><link rel="icon" href="data:,"><pre>the report could not be built yet: ${esc((e as Error).message)}</pre>${LIVE_SCRIPT}`;
    }
  };
  const broadcast = (msg: object): void => {
    for (const ws of live) if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(msg));
  };
  let timer: NodeJS.Timeout | undefined;
  const follow = followJsonLines(
    opts.resultsJsonl,
    (v) => {
      results.push(v as TestResult);
      page = undefined;
      if (timer) return;
      timer = setTimeout(() => {
        timer = undefined;
        // Rebuilt now only for someone watching; otherwise on the next request.
        if (live.size) page = build();
        broadcast({ type: 'updated', summary: summaryLine(results) });
      }, opts.debounceMs ?? 1000);
    },
    opts.pollMs ?? 500,
  );

  const machines = (): RunningMachine[] =>
    Machine.running
      .filter((m) => (m as { qmp?: unknown }).qmp !== undefined)
      .map((m) => {
        const testDir = dirname(m.artifactsDir);
        const inTests = relative(join(runDir, 'tests'), testDir);
        return { name: m.name, test: inTests.startsWith('..') ? m.artifactsDir : inTests, pid: m.pid, qmp: `/${token}/qmp/${m.pid}` };
      });
  const findMachine = (key: string): Machine | string => {
    const running = Machine.running.filter((m) => (m as { qmp?: unknown }).qmp !== undefined);
    const byPid = running.find((m) => String(m.pid) === key);
    if (byPid) return byPid;
    const byName = running.filter((m) => m.name === key);
    if (byName.length === 1) return byName[0]!;
    const names = running.map((m) => `${m.name} (pid ${m.pid})`).join(', ') || 'none';
    return byName.length ? `machine name ${key} is not unique: give its pid (running: ${names})` : `no running machine ${key} (running: ${names})`;
  };

  /** The path after /<token>, or undefined for a missing or wrong token. */
  const route = (req: IncomingMessage): string | undefined => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const m = /^\/([^/]+)(\/.*)?$/.exec(path);
    return m && sameToken(decoded(m[1]!), token) ? (m[2] ?? '') : undefined;
  };

  const server = createServer((req, res) => {
    const rest = route(req);
    if (rest === undefined) return send(res, 403, 'text/plain', 'forbidden: this URL needs the token harness run --watch printed\n');
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'text/plain', `${req.method} not allowed\n`);
    // Without the slash the page's relative links would miss the token.
    if (rest === '') return redirect(res, `/${token}/`);
    if (rest === '/') {
      page ??= build();
      return send(res, 200, TYPES['.html']!, page);
    }
    if (rest === '/machines') return send(res, 200, TYPES['.json']!, `${JSON.stringify(machines())}\n`);
    const rel = decoded(rest.slice(1));
    if (rel === undefined) return send(res, 400, 'text/plain', `bad percent-encoding in ${rest}\n`);
    return serveFile(res, runDir, rel);
  });
  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const rest = route(req);
    if (rest === undefined) return refuse(socket, 403, 'Forbidden');
    let onOpen: (ws: WebSocket) => void;
    if (rest === '/live') {
      onOpen = (ws) => {
        live.add(ws);
        ws.on('close', () => live.delete(ws));
        ws.send(JSON.stringify({ type: 'hello', summary: summaryLine(results) }));
      };
    } else if (rest.startsWith('/qmp/')) {
      const m = findMachine(decoded(rest.slice(5)) ?? rest.slice(5));
      if (typeof m === 'string') return refuse(socket, 404, 'Not Found', m);
      onOpen = (ws) => bridgeClient(m.qmp.conn, ws, { readOnly: opts.write !== true });
    } else return refuse(socket, 404, 'Not Found');
    wss.handleUpgrade(req, socket, head, (ws) => {
      sockets.add(ws);
      ws.on('close', () => sockets.delete(ws));
      onOpen(ws);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as { port: number };
  let closed: Promise<void> | undefined;
  return {
    url: `http://127.0.0.1:${port}/${token}/`,
    token,
    port,
    close: () =>
      (closed ??= (async () => {
        follow.stop();
        clearTimeout(timer);
        broadcast({ type: 'ended', summary: summaryLine(results) });
        for (const ws of sockets) ws.close(1001, 'the run ended');
        // A client that does not answer the close handshake is cut off rather than waited for.
        await new Promise((r) => setTimeout(r, 200).unref());
        for (const ws of sockets) ws.terminate();
        wss.close();
        server.closeAllConnections();
        await new Promise<void>((r) => server.close(() => r()));
      })()),
  };
}

/** A path segment decoded, or undefined for bad percent-encoding (a client's mistake, never a crash). */
function decoded(s: string): string | undefined {
  try {
    return decodeURIComponent(s);
  } catch {
    return undefined;
  }
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

function redirect(res: ServerResponse, to: string): void {
  res.writeHead(302, { location: to });
  res.end();
}

function refuse(socket: Duplex, status: number, text: string, detail = ''): void {
  socket.end(`HTTP/1.1 ${status} ${text}\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(detail)}\r\n\r\n${detail}`);
}

/** A file of the run folder; nothing outside it, symlinks included. */
function serveFile(res: ServerResponse, runDir: string, rel: string): void {
  let path: string;
  try {
    path = realpathSync(join(runDir, rel));
    const root = realpathSync(runDir);
    if (path !== root && !path.startsWith(root + sep)) return send(res, 403, 'text/plain', `forbidden: ${rel} is outside the run folder\n`);
    if (!statSync(path).isFile()) return send(res, 404, 'text/plain', `${rel} is not a file\n`);
  } catch {
    return send(res, 404, 'text/plain', `no file ${rel} in the run folder\n`);
  }
  res.writeHead(200, { 'content-type': TYPES[extname(path)] ?? 'text/plain; charset=utf-8', 'cache-control': 'no-store' });
  if (res.req.method === 'HEAD') return void res.end();
  createReadStream(path).pipe(res);
}
