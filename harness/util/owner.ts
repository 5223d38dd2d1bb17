/**
 * Who owns a leftover (a temp folder, a device lease, a journal entry): a pid
 * and that process's start time, so a reused pid never passes for the owner.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface Owner {
  pid: number;
  /** Field 22 of /proc/PID/stat (clock ticks since boot); absent where /proc cannot be read. */
  start?: string;
}

function statFields(pid: number | 'self'): string[] | undefined {
  try {
    const stat = readFileSync(join('/proc', String(pid), 'stat'), 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count after its last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** A process's start time (field 22 of its stat). */
export function processStart(pid: number | 'self'): string | undefined {
  return statFields(pid)?.[19];
}

/** This process, as an owner. */
export function selfOwner(): Owner {
  const start = processStart('self');
  return start === undefined ? { pid: process.pid } : { pid: process.pid, start };
}

/**
 * The owner still runs: its pid exists, is not a zombie (a killed run its
 * parent has not reaped yet is dead), and started when the owner did.
 */
export function ownerAlive(o: Owner): boolean {
  try {
    process.kill(o.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const f = statFields(o.pid);
  if (f?.[0] === 'Z' || f?.[0] === 'X') return false;
  return o.start === undefined || f === undefined || f[19] === o.start;
}
