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

/** Splits a stream of text chunks into lines; keeps the unfinished rest. */
export class LineSplitter {
  private rest = '';

  push(chunk: string): string[] {
    const text = this.rest + chunk;
    const lines = text.split('\n');
    this.rest = lines.pop() ?? '';
    return lines;
  }

  /** Bytes received after the last newline (a half-sent line). */
  get pending(): string {
    return this.rest;
  }
}
