/**
 * The wire format of the guest agent (images/init/harness/agent.sh): one
 * message per line, fields separated by one space, payloads base64 without
 * line breaks, so no byte of a command's output can be taken for framing.
 *
 *   host → guest  PING <id>
 *                 RUN <id> <timeout-s> <command> [<stdin>]
 *   guest → host  HELLO <protocol> <kernel-release>
 *                 PONG <id> <uptime-s>
 *                 RES <id> <status> <timed-out 0|1> <elapsed-cs> <stdout> <stderr>
 *                 ERR <id> <message>
 *
 * Pure functions only: the transport is in agent.ts.
 */

export const AGENT_PROTOCOL_VERSION = 1;

export type AgentMessage =
  | { kind: 'hello'; protocol: number; kernelRelease: string }
  | { kind: 'pong'; id: number; uptimeS: number }
  | { kind: 'result'; id: number; status: number; timedOut: boolean; guestMs: number; stdout: Buffer; stderr: Buffer }
  | { kind: 'error'; id: number; message: string }
  /** A line that is none of the above; kept so the caller can report it. */
  | { kind: 'garbage'; line: string; why: string };

const B64 = /^[A-Za-z0-9+/]*={0,2}$/;

function b64(field: string | undefined, name: string): Buffer | string {
  const f = field ?? '';
  if (!B64.test(f) || f.length % 4 !== 0) return `${name} is not base64 (${JSON.stringify(f.slice(0, 40))})`;
  return Buffer.from(f, 'base64');
}

function int(field: string | undefined): number | undefined {
  return field !== undefined && /^\d+$/.test(field) ? Number(field) : undefined;
}

/** Parses one line from the guest (without its newline). */
export function parseAgentLine(raw: string): AgentMessage {
  const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
  const f = line.split(' ');
  const garbage = (why: string): AgentMessage => ({ kind: 'garbage', line, why });
  switch (f[0]) {
    case 'HELLO': {
      const protocol = int(f[1]);
      if (protocol === undefined || f.length < 3) return garbage('HELLO needs <protocol> <kernel-release>');
      return { kind: 'hello', protocol, kernelRelease: f.slice(2).join(' ') };
    }
    case 'PONG': {
      const id = int(f[1]);
      const up = Number(f[2]);
      if (id === undefined || f.length !== 3 || !Number.isFinite(up)) return garbage('PONG needs <id> <uptime-s>');
      return { kind: 'pong', id, uptimeS: up };
    }
    case 'RES': {
      if (f.length !== 7) return garbage(`RES has ${f.length} fields, expected 7`);
      const id = int(f[1]);
      const status = int(f[2]);
      const cs = int(f[4]);
      if (id === undefined) return garbage(`RES id ${JSON.stringify(f[1])} is not a number`);
      if (status === undefined || status > 255) return garbage(`RES status ${JSON.stringify(f[2])} is not 0-255`);
      if (f[3] !== '0' && f[3] !== '1') return garbage(`RES timed-out flag ${JSON.stringify(f[3])} is not 0 or 1`);
      if (cs === undefined) return garbage(`RES elapsed ${JSON.stringify(f[4])} is not a number`);
      const stdout = b64(f[5], 'stdout');
      if (typeof stdout === 'string') return garbage(`RES ${stdout}`);
      const stderr = b64(f[6], 'stderr');
      if (typeof stderr === 'string') return garbage(`RES ${stderr}`);
      return { kind: 'result', id, status, timedOut: f[3] === '1', guestMs: cs * 10, stdout, stderr };
    }
    case 'ERR': {
      const id = int(f[1]);
      const msg = b64(f[2], 'message');
      if (id === undefined || f.length !== 3 || typeof msg === 'string') return garbage('ERR needs <id> <base64 message>');
      return { kind: 'error', id, message: msg.toString('utf8') };
    }
    case OVERLONG:
      return garbage(`a line of ${f[1]} characters exceeds the limit of ${f[2]} and was dropped; it began ${JSON.stringify(f.slice(3).join(' ').slice(0, 80))}`);
    default:
      return garbage('unknown message type');
  }
}

export function formatPing(id: number): string {
  return `PING ${id}\n`;
}

/** Whole seconds for the guest's kill timer: at least 1 (0 would kill at once). */
export function guestTimeoutSeconds(timeoutMs: number): number {
  return Math.max(1, Math.ceil(timeoutMs / 1000));
}

export function formatRun(id: number, timeoutMs: number, command: string, stdin?: Buffer | string): string {
  if (!Number.isInteger(id) || id < 0) throw new RangeError(`agent request id must be a non-negative integer, got ${id}`);
  if (!(timeoutMs > 0)) throw new RangeError(`timeoutMs must be positive, got ${timeoutMs}`);
  const cmd = Buffer.from(command, 'utf8').toString('base64');
  const input = stdin === undefined || stdin.length === 0 ? '' : ` ${Buffer.from(stdin).toString('base64')}`;
  return `RUN ${id} ${guestTimeoutSeconds(timeoutMs)} ${cmd}${input}\n`;
}

/**
 * The longest line the host accepts from the guest: a RES carries a command's
 * whole output in base64 (4/3 of its size), and the harness never asks for
 * more than a few MB. A guest that sends more (a runaway command, a console
 * flooded without newlines) must not grow the host without bound.
 */
export const MAX_AGENT_LINE = 32 << 20;

/** The line a LineSplitter hands out in place of one over its limit; parseAgentLine reports it as garbage. */
export const OVERLONG = 'OVERLONG';

/**
 * Splits a stream of text chunks into lines; keeps the unfinished rest as a
 * list of pieces joined once, so a long line costs time linear in its length
 * (concatenating on every chunk made it quadratic). A line longer than
 * `maxLine` is dropped up to its newline and handed out as
 * `OVERLONG <length> <limit> <first 200 characters>`; `dropped` counts them.
 */
export class LineSplitter {
  private parts: string[] = [];
  private partLength = 0;
  /** Length of the over-long line being skipped, or -1. */
  private skipping = -1;
  private skippedHead = '';
  dropped = 0;

  constructor(readonly maxLine = MAX_AGENT_LINE) {}

  push(chunk: string): string[] {
    const out: string[] = [];
    let from = 0;
    for (let nl = chunk.indexOf('\n'); nl >= 0; nl = chunk.indexOf('\n', from)) {
      const piece = chunk.slice(from, nl);
      from = nl + 1;
      if (this.skipping >= 0 || this.partLength + piece.length > this.maxLine) {
        if (this.skipping < 0) this.startSkipping();
        this.skip(piece);
        out.push(this.overlong());
        continue;
      }
      if (this.parts.length === 0) out.push(piece);
      else {
        this.parts.push(piece);
        out.push(this.parts.join(''));
        this.parts = [];
        this.partLength = 0;
      }
    }
    const rest = chunk.slice(from);
    if (rest.length === 0) return out;
    if (this.skipping < 0 && this.partLength + rest.length > this.maxLine) this.startSkipping();
    if (this.skipping >= 0) this.skip(rest);
    else {
      this.parts.push(rest);
      this.partLength += rest.length;
    }
    return out;
  }

  /** Text received after the last newline (a half-sent line), at most maxLine characters. */
  get pending(): string {
    if (this.parts.length > 1) this.parts = [this.parts.join('')];
    return this.parts[0] ?? '';
  }

  private startSkipping(): void {
    this.skipping = 0;
    this.skippedHead = '';
    for (const p of this.parts) this.skip(p);
    this.parts = [];
    this.partLength = 0;
  }

  /** Counts `text` of the over-long line, keeping its first 200 characters whatever the chunking. */
  private skip(text: string): void {
    if (this.skippedHead.length < 200) this.skippedHead += text.slice(0, 200 - this.skippedHead.length);
    this.skipping += text.length;
  }

  private overlong(): string {
    const line = `${OVERLONG} ${this.skipping} ${this.maxLine} ${this.skippedHead}`;
    this.skipping = -1;
    this.skippedHead = '';
    this.dropped++;
    return line;
  }
}
