import { shellQuote } from '../util/shell.js';
import { DeadlineError } from '../util/deadline.js';
import { scaled } from '../util/timeouts.js';
import {
  AGENT_PROTOCOL_VERSION,
  formatPing,
  formatRun,
  guestTimeoutSeconds,
  LineSplitter,
  parseAgentLine,
  type AgentMessage,
} from './agent-protocol.js';

/**
 * The host end of the agent port: a Machine's ChardevStream for the
 * virtserialport (harness/qemu/chardev.ts) fits, or any duplex with these
 * members.
 */
export interface AgentPort {
  onData(cb: (text: string) => void): () => void;
  onClose(cb: () => void): () => void;
  write(data: string): void;
  readonly isClosed: boolean;
  readonly logPath?: string;
}

export interface RunOptions {
  /**
   * How long the command may run. The guest kills it (SIGKILL) after this,
   * rounded up to whole seconds, and answers with timedOut; the host gives up
   * waiting `graceMs` later.
   */
  timeoutMs?: number;
  /** Extra host-side wait beyond timeoutMs for the reply to arrive (TCG is slow). */
  graceMs?: number;
  /** Bytes for the command's stdin (default: empty). */
  stdin?: string | Buffer;
}

export interface RunResult {
  command: string;
  /** Exit status (128+N when killed by signal N). */
  status: number;
  /** The guest killed it at the timeout. */
  timedOut: boolean;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
  stderrBytes: Buffer;
  /** Wall time on the host from request to reply. */
  durationMs: number;
  /** The guest's own measure (10 ms resolution). */
  guestMs: number;
}

/** What the console looked like, for failure messages (set by the caller). */
export type ContextProvider = () => string;

export class AgentError extends Error {
  override name = 'AgentError';
}

/** No reply within the deadline: the agent is considered wedged from now on. */
export class AgentDeadlineError extends DeadlineError {
  override name = 'AgentDeadlineError';
}

/** The port closed (QEMU exited, the machine was shut down) while waiting. */
export class AgentClosedError extends AgentError {
  override name = 'AgentClosedError';
}

/** The command ran to its timeout in the guest and was killed there. */
export class AgentCommandTimeoutError extends AgentError {
  override name = 'AgentCommandTimeoutError';
  constructor(
    message: string,
    readonly result: RunResult,
  ) {
    super(message);
  }
}

/** check(): the command exited non-zero. */
export class AgentCommandError extends AgentError {
  override name = 'AgentCommandError';
  constructor(
    message: string,
    readonly result: RunResult,
  ) {
    super(message);
  }
}

interface Pending {
  resolve(m: AgentMessage): void;
  reject(e: Error): void;
}

const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_GRACE_MS = 5_000;

function clip(s: string, n = 2000): string {
  return s.length > n ? `…${s.slice(-n)}` : s;
}

/**
 * Runs shell commands in the guest over the agent port and returns their exit
 * status and output. Requests go one at a time (the guest runs them in
 * order), each with its own deadline. A reply is matched to its request by
 * id, so a late answer to an abandoned request is never taken for another's.
 * After a deadline passes with no reply at all, the agent is wedged: every
 * later call fails at once with that reason (the test fails, its fixture tears
 * the machine down).
 */
export class Agent {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly splitter = new LineSplitter();
  private queue: Promise<unknown> = Promise.resolve();
  private wedged: Error | undefined;
  private closed = false;
  private readonly unsubscribe: Array<() => void> = [];
  /** Lines the agent sent that were not valid messages (for diagnosis). */
  readonly garbage: Array<{ line: string; why: string }> = [];
  /**
   * PINGs waiting for their PONG, by id. A HELLO means the guest (re)opened
   * its end of the port, and what was sent before may have gone to whoever
   * had it open then: the arm64 guest's UEFI firmware drives virtio-serial
   * ports itself and consumes a PING sent while it boots. A PING is
   * idempotent, so it is sent again on each HELLO; a RUN never is.
   */
  private readonly pings = new Map<number, string>();
  /** Set by the guest's HELLO. */
  kernelRelease: string | undefined;
  helloCount = 0;

  constructor(
    readonly port: AgentPort,
    private readonly context: ContextProvider = () => '',
  ) {
    this.unsubscribe.push(
      port.onData((t) => {
        for (const line of this.splitter.push(t)) this.onLine(line);
      }),
      port.onClose(() => {
        this.closed = true;
        const err = new AgentClosedError(`the agent port closed (QEMU exited or the machine was shut down)${this.detail()}`);
        for (const p of this.pending.values()) p.reject(err);
        this.pending.clear();
      }),
    );
  }

  private detail(): string {
    const c = this.context();
    return c ? `\n${c}` : '';
  }

  private onLine(line: string): void {
    if (line === '') return;
    const m = parseAgentLine(line);
    switch (m.kind) {
      case 'hello':
        this.helloCount++;
        this.kernelRelease = m.kernelRelease;
        if (m.protocol !== AGENT_PROTOCOL_VERSION) {
          this.garbage.push({ line, why: `protocol ${m.protocol}, this harness speaks ${AGENT_PROTOCOL_VERSION}` });
        }
        for (const ping of this.pings.values()) this.port.write(ping);
        return;
      case 'garbage':
        this.garbage.push({ line: clip(line, 200), why: m.why });
        return;
      default: {
        const p = this.pending.get(m.id);
        if (!p) return; // the answer to a request whose deadline passed
        this.pending.delete(m.id);
        p.resolve(m);
      }
    }
  }

  /** Sends one request and waits for the message with its id. */
  private request(id: number, line: string, ms: number, what: string): Promise<AgentMessage> {
    if (this.wedged) return Promise.reject(this.wedged);
    if (this.closed || this.port.isClosed) return Promise.reject(new AgentClosedError(`the agent port is closed; cannot ${what}${this.detail()}`));
    return new Promise<AgentMessage>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        const garbage = this.garbage.length ? `\n  unparsed agent lines: ${this.garbage.slice(-3).map((g) => `${JSON.stringify(g.line)} (${g.why})`).join('; ')}` : '';
        const e = new AgentDeadlineError(what, ms, `  no reply from the guest agent${garbage}${this.detail()}`);
        this.wedged = e;
        reject(e);
      }, ms);
      this.pending.set(id, {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.port.write(line);
    });
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Resolves once the agent answers a PING: the guest booted, init ran and the
   * agent loop is reading. Returns the guest's uptime at that moment.
   */
  ready(timeoutMs: number): Promise<{ uptimeS: number; kernelRelease: string | undefined; hostMs: number }> {
    return this.serialized(async () => {
      const t0 = Date.now();
      const id = this.nextId++;
      const line = formatPing(id);
      this.pings.set(id, line);
      const m = await this.request(id, line, scaled(timeoutMs), 'guest agent to answer PING').finally(() => this.pings.delete(id));
      if (m.kind !== 'pong') throw new AgentError(`agent answered PING ${id} with ${m.kind}`);
      return { uptimeS: m.uptimeS, kernelRelease: this.kernelRelease, hostMs: Date.now() - t0 };
    });
  }

  /**
   * Runs `command` with the guest's sh and resolves with its status and
   * output, whatever the status. Rejects with AgentCommandTimeoutError when
   * the guest killed it at the timeout, AgentDeadlineError when no reply came
   * at all, AgentClosedError when the machine went away.
   */
  run(command: string, opts: RunOptions = {}): Promise<RunResult> {
    // Scaled here, once: the guest kills the command at the scaled timeout and the host waits that plus the grace.
    const timeoutMs = scaled(opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    const graceMs = scaled(opts.graceMs ?? DEFAULT_GRACE_MS);
    return this.serialized(async () => {
      const id = this.nextId++;
      const t0 = Date.now();
      const what = `guest command ${JSON.stringify(clip(command, 200))}`;
      const m = await this.request(id, formatRun(id, timeoutMs, command, opts.stdin), guestTimeoutSeconds(timeoutMs) * 1000 + graceMs, what);
      if (m.kind === 'error') throw new AgentError(`the guest agent refused ${what}: ${m.message}`);
      if (m.kind !== 'result') throw new AgentError(`the guest agent answered ${what} with ${m.kind}`);
      const r: RunResult = {
        command,
        status: m.status,
        timedOut: m.timedOut,
        stdout: m.stdout.toString('utf8'),
        stderr: m.stderr.toString('utf8'),
        stdoutBytes: m.stdout,
        stderrBytes: m.stderr,
        durationMs: Date.now() - t0,
        guestMs: m.guestMs,
      };
      if (r.timedOut) {
        throw new AgentCommandTimeoutError(
          `${what} did not finish within ${guestTimeoutSeconds(timeoutMs)} s and was killed in the guest\n  stdout: ${clip(r.stdout) || '(empty)'}\n  stderr: ${clip(r.stderr) || '(empty)'}`,
          r,
        );
      }
      return r;
    });
  }

  /** Like run(), but a non-zero status is an error (with stderr); resolves with stdout. */
  async check(command: string, opts: RunOptions = {}): Promise<string> {
    const r = await this.run(command, opts);
    if (r.status !== 0) {
      throw new AgentCommandError(
        `guest command ${JSON.stringify(clip(command, 200))} exited with status ${r.status}\n  stderr: ${clip(r.stderr.trimEnd()) || '(empty)'}\n  stdout: ${clip(r.stdout.trimEnd()) || '(empty)'}`,
        r,
      );
    }
    return r.stdout;
  }

  /** A file's bytes from the guest (binary-safe: sysfs config space, disks). */
  async readFile(path: string, opts: RunOptions = {}): Promise<Buffer> {
    const r = await this.run(`cat ${shellQuote(path)}`, opts);
    if (r.status !== 0) throw new AgentCommandError(`cannot read ${path} in the guest: ${r.stderr.trim() || `status ${r.status}`}`, r);
    return r.stdoutBytes;
  }

  /** Writes `data` to a file in the guest (through the command's stdin). */
  async writeFile(path: string, data: string | Buffer, opts: RunOptions = {}): Promise<void> {
    await this.check(`cat > ${shellQuote(path)}`, { ...opts, stdin: data });
  }

  /** Stops listening; pending requests fail. The port itself is the Machine's. */
  detach(): void {
    for (const u of this.unsubscribe.splice(0)) u();
    const err = new AgentClosedError('the agent was detached');
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
