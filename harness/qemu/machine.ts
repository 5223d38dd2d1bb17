import { mkdirSync, writeFileSync, createWriteStream, type WriteStream } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { dir as tmpDir, type DirectoryResult } from 'tmp-promise';
import { QmpClient } from '../qmp/client.js';
import { QmpConnection } from '../qmp/protocol.js';
import { Transcript } from '../qmp/transcript.js';
import { UnixListener } from '../qmp/transport.js';
import { withDeadline, DeadlineError } from '../util/deadline.js';
import { runArtifactsDir } from '../util/paths.js';
import { runTmpDir } from '../util/run-tmp.js';
import { shellQuote } from '../util/shell.js';
import { buildArgv, type MachineDescription } from './argv.js';
import { findQemu, type QemuBinary } from './binary.js';
import { ChardevStream } from './chardev.js';
import { withParentDeath } from './parent-death.js';

export interface ExitInfo {
  code: number | null;
  signal: string | null;
  /** "exit status 1", "killed by SIGKILL". */
  text: string;
}

export interface LaunchOptions {
  binary?: QemuBinary;
  /** Where this machine's artifacts go; a fresh folder under artifacts/machines by default. */
  artifactsDir?: string;
  /** A short name for folders and messages. */
  name?: string;
  /** Deadline from spawn to a negotiated QMP connection. */
  readyTimeoutMs?: number;
  commandTimeoutMs?: number;
}

/** QEMU did not come up: names the command line, the exit status and stderr. */
export class LaunchError extends Error {
  override name = 'LaunchError';
  constructor(
    message: string,
    readonly cmdline: string,
    readonly exit: ExitInfo | undefined,
    readonly stderr: string,
    readonly artifactsDir: string,
  ) {
    super(
      `${message}\n  command: ${cmdline}\n  ${exit ? exit.text : 'still running (killed)'}\n  stderr:\n${indent(stderr || '(empty)')}\n  artifacts: ${artifactsDir}`,
    );
  }
}

const live = new Set<Machine>();
let exitHookInstalled = false;
let machineCount = 0;

/**
 * One QEMU process, owned by the harness from spawn to reaping. The Machine
 * listens on private unix sockets that QEMU connects to (QMP, serial and other
 * chardevs), captures stderr, the serial console, the QMP transcript and the
 * trace file into its artifacts folder, and guarantees the process is gone
 * after shutdown(): quit, then SIGTERM, then SIGKILL, each with a deadline.
 * QEMU runs under a parent-death SIGKILL (parent-death.ts), so a killed
 * harness leaves no QEMU behind, whatever its version and even if stopped.
 */
export class Machine {
  private exitInfo: ExitInfo | undefined;
  private readonly exited: Promise<ExitInfo>;
  private stderrTailBuf = '';
  private shutdownPromise: Promise<ExitInfo> | undefined;

  private constructor(
    readonly name: string,
    readonly description: MachineDescription,
    readonly binary: QemuBinary,
    readonly argv: string[],
    readonly artifactsDir: string,
    private readonly tmp: DirectoryResult,
    private readonly proc: ResultPromise,
    stderrLog: WriteStream,
    private readonly listeners: UnixListener[],
    readonly traceFile: string | undefined,
  ) {
    proc.stderr!.setEncoding('utf8');
    proc.stderr!.on('data', (t: string) => {
      stderrLog.write(t);
      this.stderrTailBuf = (this.stderrTailBuf + t).slice(-16 * 1024);
    });
    this.exited = proc.then((r) => {
      const signal = r.signal ?? null;
      const code = signal ? null : (r.exitCode ?? null);
      this.exitInfo = { code, signal, text: signal ? `killed by ${signal}` : `exit status ${code}` };
      live.delete(this);
      stderrLog.end();
      // Best effort: the folder may be gone (a run cleaning artifacts).
      writeFile(join(artifactsDir, 'exit.json'), JSON.stringify(this.exitInfo) + '\n').catch(() => {});
      return this.exitInfo;
    });
  }

  /** Filled in by launch() once QMP is up. */
  qmp!: QmpClient;
  /** Chardevs by id ("serial0" when description.serial). */
  readonly chardevs = new Map<string, ChardevStream>();
  private transcript!: Transcript;

  static async launch(desc: MachineDescription, opts: LaunchOptions = {}): Promise<Machine> {
    const binary = opts.binary ?? findQemu(desc.arch);
    const name = opts.name ?? `${desc.arch}-${desc.machine.type}`;
    const artifactsDir = opts.artifactsDir ?? join(runArtifactsDir(), 'machines', `${name}-${process.pid}-${++machineCount}`);
    mkdirSync(artifactsDir, { recursive: true });
    // Sockets live in a private 0700 directory; each is chmod 0600 as well.
    const tmp = await tmpDir({ tmpdir: runTmpDir(), prefix: 'harness-qemu-', unsafeCleanup: true, mode: 0o700 });
    const listeners: UnixListener[] = [];
    try {
      const qmpListener = await UnixListener.create(join(tmp.path, 'qmp.sock'));
      listeners.push(qmpListener);
      const chardevIds = [...(desc.serial ? ['serial0'] : []), ...(desc.chardevs ?? [])];
      const chardevSockets: Record<string, string> = {};
      const chardevListeners = new Map<string, UnixListener>();
      for (const id of chardevIds) {
        const l = await UnixListener.create(join(tmp.path, `${id}.sock`));
        listeners.push(l);
        chardevListeners.set(id, l);
        chardevSockets[id] = l.path;
      }
      let traceFile: string | undefined;
      let traceEventsFile: string | undefined;
      if (desc.trace?.length) {
        traceFile = join(artifactsDir, 'trace.log');
        traceEventsFile = join(tmp.path, 'trace-events');
        writeFileSync(traceEventsFile, desc.trace.join('\n') + '\n');
      }
      const argv = [
        ...binary.baseArgs,
        ...buildArgv(desc, {
          qmpSocket: qmpListener.path,
          chardevSockets,
          ...(traceFile ? { traceFile } : {}),
          ...(traceEventsFile ? { traceEventsFile } : {}),
        }),
      ];
      const fullArgs = [...binary.prefixArgs, ...argv];
      // cmdline.txt is QEMU's own command line, what a person reruns; the
      // parent-death helper in front of it is the harness's business.
      const cmdline = [binary.command, ...fullArgs].map(shellQuote).join(' ');
      writeFileSync(join(artifactsDir, 'cmdline.txt'), cmdline + '\n');
      const spawned = withParentDeath(binary.command, fullArgs);
      const stderrLog = createWriteStream(join(artifactsDir, 'stderr.log'));
      const proc = execa(spawned.command, spawned.args, {
        env: { ...process.env, ...binary.env },
        extendEnv: false,
        stdin: 'ignore',
        stdout: { file: join(artifactsDir, 'stdout.log') },
        stderr: 'pipe',
        buffer: false,
        reject: false,
        cleanup: true,
      });
      const m = new Machine(name, desc, binary, argv, artifactsDir, tmp, proc, stderrLog, listeners, traceFile);
      live.add(m);
      installExitHook();
      try {
        await m.connect(qmpListener, chardevListeners, cmdline, opts);
      } catch (e) {
        if (e instanceof LaunchError) throw e;
        // The monitor greets before the machine is built, so a realize error
        // shows up as a lost connection: wait briefly for the exit and report
        // that, which is the real story.
        const exited = await m.waitExit(1000).catch(() => undefined);
        if (exited) {
          await sleepUntilStderrSettles();
          throw new LaunchError('QEMU exited during startup', cmdline, exited, m.stderrTail(), artifactsDir);
        }
        await m.forceStop();
        throw new LaunchError(`QEMU did not become ready: ${(e as Error).message}`, cmdline, m.exitInfo, m.stderrTail(), artifactsDir);
      }
      return m;
    } catch (e) {
      for (const l of listeners) await l.close();
      await tmp.cleanup();
      throw e;
    }
  }

  private async connect(qmpListener: UnixListener, chardevs: Map<string, UnixListener>, cmdline: string, opts: LaunchOptions): Promise<void> {
    const readyTimeoutMs = opts.readyTimeoutMs ?? 30_000;
    // If QEMU exits first (a realize error, a bad option), say so at once
    // instead of waiting for the deadline.
    const died = this.exited.then(async (x) => {
      await sleepUntilStderrSettles();
      throw new LaunchError(`QEMU exited during startup`, cmdline, x, this.stderrTail(), this.artifactsDir);
    });
    died.catch(() => {});
    const abort = died.then(() => '', (e: Error) => e.message);
    const accepting = Promise.all([
      qmpListener.acceptTransport(readyTimeoutMs, abort),
      ...[...chardevs].map(async ([id, l]) => {
        const s = await l.accept(readyTimeoutMs, abort);
        this.chardevs.set(id, new ChardevStream(id, s, join(this.artifactsDir, `${id}.log`)));
      }),
    ]);
    const [transport] = await Promise.race([accepting, died]);
    this.transcript = new Transcript(join(this.artifactsDir, 'qmp.jsonl'));
    const conn = await Promise.race([
      QmpConnection.open(transport, {
        greetingTimeoutMs: readyTimeoutMs,
        transcript: this.transcript,
        ...(opts.commandTimeoutMs ? { commandTimeoutMs: opts.commandTimeoutMs } : {}),
        describeDisconnect: () => this.describeDisconnect(),
      }),
      died,
    ]);
    this.qmp = new QmpClient(conn);
  }

  get pid(): number {
    return this.proc.pid!;
  }

  /** Set once QEMU has exited. */
  get exit(): ExitInfo | undefined {
    return this.exitInfo;
  }

  /** Resolves when QEMU exits (for whatever reason), with a deadline. */
  waitExit(timeoutMs: number): Promise<ExitInfo> {
    return withDeadline(this.exited, timeoutMs, `QEMU (pid ${this.pid}) to exit`);
  }

  /** The last lines QEMU wrote to stderr. */
  stderrTail(maxLines = 20): string {
    return this.stderrTailBuf.trimEnd().split('\n').slice(-maxLines).join('\n');
  }

  chardev(id: string): ChardevStream {
    const c = this.chardevs.get(id);
    if (!c) throw new Error(`machine ${this.name} has no chardev ${JSON.stringify(id)} (has: ${[...this.chardevs.keys()].join(', ') || 'none'})`);
    return c;
  }

  /** What a test's failure message should say when QEMU went away. */
  async describeDisconnect(): Promise<string> {
    let status: string;
    try {
      status = (await this.waitExit(2000)).text;
    } catch {
      status = 'still running';
    }
    return `QEMU (pid ${this.pid}) ${status}\n  stderr tail:\n${indent(this.stderrTail() || '(empty)')}\n  artifacts: ${this.artifactsDir}`;
  }

  /**
   * Ends QEMU and reaps it: `quit` over QMP, then SIGTERM, then SIGKILL, each
   * with its own deadline. Idempotent. Resolves with how QEMU exited.
   */
  shutdown(opts: { quitTimeoutMs?: number; termTimeoutMs?: number } = {}): Promise<ExitInfo> {
    this.shutdownPromise ??= this.doShutdown(opts.quitTimeoutMs ?? 5000, opts.termTimeoutMs ?? 5000);
    return this.shutdownPromise;
  }

  private async doShutdown(quitTimeoutMs: number, termTimeoutMs: number): Promise<ExitInfo> {
    if (!this.exitInfo && this.qmp?.conn.isOpen) {
      try {
        await this.qmp.quit(quitTimeoutMs);
        await this.waitExit(quitTimeoutMs);
      } catch {
        /* escalate below */
      }
    }
    const exit = await this.forceStop(termTimeoutMs);
    this.transcript?.note(`QEMU ${exit.text}`);
    await this.qmp?.conn.close().catch(() => {});
    await this.transcript?.close();
    for (const c of this.chardevs.values()) c.close();
    for (const l of this.listeners) await l.close();
    await this.tmp.cleanup();
    return exit;
  }

  /** SIGTERM, then SIGKILL; only ever this machine's own PID. */
  private async forceStop(termTimeoutMs = 5000): Promise<ExitInfo> {
    if (this.exitInfo) return this.exitInfo;
    this.proc.kill('SIGTERM');
    try {
      return await this.waitExit(termTimeoutMs);
    } catch (e) {
      if (!(e instanceof DeadlineError)) throw e;
    }
    this.proc.kill('SIGKILL');
    return this.waitExit(10_000);
  }

  /** Sends a signal to this QEMU (tests use it to simulate crashes and hangs). */
  kill(signal: NodeJS.Signals): void {
    this.proc.kill(signal);
  }

  /**
   * Shuts down every machine still running (root hooks call this after the
   * run; an interrupted run with short deadlines, since a stopped QEMU answers
   * neither quit nor SIGTERM).
   */
  static async shutdownAll(opts: { quitTimeoutMs?: number; termTimeoutMs?: number } = {}): Promise<void> {
    await Promise.all([...live].map((m) => m.shutdown(opts).catch(() => {})));
  }

  /** The machines still running, in launch order (a copy: `harness run --watch` lists them). */
  static get running(): readonly Machine[] {
    return [...live];
  }

  /** The pids of the machines still running. */
  static get livePids(): number[] {
    return [...live].map((m) => m.pid);
  }

  static get liveCount(): number {
    return live.size;
  }
}

/** Last resort: if the harness exits with machines up, SIGKILL them by PID. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const m of live) {
      try {
        process.kill(m.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  });
}

/** stderr may still be in the pipe when the exit is seen; give it a moment. */
function sleepUntilStderrSettles(): Promise<void> {
  return new Promise((r) => setTimeout(r, 20));
}

function indent(s: string): string {
  return s
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n');
}

