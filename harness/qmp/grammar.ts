import { QmpProtocolError } from './errors.js';
import { quote, show, type QmpMessage } from './framing.js';

/**
 * One message from the server, checked against the grammar of QMP's spec
 * (docs/interop/qmp-spec.rst, "Server responses" and "Asynchronous events"):
 *
 *   greeting  { "QMP": { "version": json-object, "capabilities": json-array } }
 *   success   { "return": json-value, "id": json-value }
 *   error     { "error": { "class": json-string, "desc": json-string }, "id": json-value }
 *   event     { "event": json-string, "data": json-object,
 *               "timestamp": { "seconds": json-number, "microseconds": json-number } }
 *
 * `id` is optional (the server omits it when the command had none), `data`
 * too. Nothing here knows QEMU's commands or events: only the shapes.
 */
export type ServerMessage =
  | { kind: 'greeting'; qmp: { version: Record<string, unknown>; capabilities: unknown[] } }
  | { kind: 'return'; id: unknown; value: unknown }
  | { kind: 'error'; id: unknown; errorClass: string; desc: string }
  | {
      kind: 'event';
      event: string;
      data: Record<string, unknown>;
      timestamp: { seconds: number; microseconds: number } | undefined;
    };

const KINDS = ['QMP', 'return', 'error', 'event'] as const;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Classifies `msg`; a QmpProtocolError names the member that breaks the grammar. */
export function classify(msg: QmpMessage, raw: string): ServerMessage {
  const present = KINDS.filter((k) => k in msg);
  const bad = (why: string): never => {
    throw new QmpProtocolError(`QMP message breaks the protocol: ${why}: ${quote(raw)}`);
  };
  if (present.length === 0) bad(`it has none of ${KINDS.map((k) => `"${k}"`).join(', ')}`);
  if (present.length > 1) bad(`it has both ${present.map((k) => `"${k}"`).join(' and ')}`);
  switch (present[0]!) {
    case 'QMP': {
      const q = msg.QMP;
      if (!isObject(q)) return bad(`"QMP" is ${show(q)}, not an object`);
      if (!isObject(q.version)) return bad(`"QMP.version" is ${show(q.version)}, not an object`);
      if (!Array.isArray(q.capabilities)) return bad(`"QMP.capabilities" is ${show(q.capabilities)}, not an array`);
      return { kind: 'greeting', qmp: { version: q.version, capabilities: q.capabilities } };
    }
    case 'return':
      return { kind: 'return', id: msg.id, value: msg.return };
    case 'error': {
      const e = msg.error;
      if (!isObject(e)) return bad(`"error" is ${show(e)}, not an object`);
      if (typeof e.class !== 'string') return bad(`"error.class" is ${show(e.class)}, not a string`);
      if (typeof e.desc !== 'string') return bad(`"error.desc" is ${show(e.desc)}, not a string`);
      return { kind: 'error', id: msg.id, errorClass: e.class, desc: e.desc };
    }
    case 'event': {
      if (typeof msg.event !== 'string') return bad(`"event" is ${show(msg.event)}, not a string`);
      if ('id' in msg) return bad('an event has an "id"');
      if (msg.data !== undefined && !isObject(msg.data)) return bad(`"data" of ${msg.event} is ${show(msg.data)}, not an object`);
      const t = msg.timestamp;
      if (t !== undefined && !(isObject(t) && typeof t.seconds === 'number' && typeof t.microseconds === 'number')) {
        return bad(`"timestamp" of ${msg.event} is ${show(t)}, not {"seconds": number, "microseconds": number}`);
      }
      return {
        kind: 'event',
        event: msg.event,
        data: (msg.data as Record<string, unknown> | undefined) ?? {},
        timestamp: t as { seconds: number; microseconds: number } | undefined,
      };
    }
  }
}
