/**
 * Typed QMP errors, after python's qemu.qmp: a test can tell a command QEMU
 * refused (QmpCommandError, with QEMU's class and desc) from a connection that
 * went away (QmpDisconnectedError, with what the owner knows about why: exit
 * status, stderr tail) and from a peer that does not speak QMP (QmpProtocolError).
 */
export class QmpError extends Error {
  override name = 'QmpError';
}

/** QEMU answered `{"error": {"class", "desc"}}`. */
export class QmpCommandError extends QmpError {
  override name = 'QmpCommandError';
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
    readonly args?: unknown,
  ) {
    super(`${command}: ${errorClass}: ${desc}`);
  }
}

/** The peer sent something that is not QMP: bad JSON, a bad greeting, an unknown id. */
export class QmpProtocolError extends QmpError {
  override name = 'QmpProtocolError';
}

/**
 * A message longer than the connection's limit. `size` is what had arrived
 * when the limit was passed: the message's whole size when `incomplete` is
 * false, a lower bound when it is true (it is refused before its end arrives).
 */
export class QmpMessageTooLargeError extends QmpProtocolError {
  override name = 'QmpMessageTooLargeError';
  constructor(
    readonly size: number,
    readonly limit: number,
    readonly incomplete: boolean,
  ) {
    super(`QMP message of ${incomplete ? 'at least ' : ''}${size} bytes exceeds the limit of ${limit} bytes (ConnectionOptions.maxMessageBytes)`);
  }
}

/** Capability negotiation failed (the greeting was fine, qmp_capabilities was not). */
export class QmpNegotiationError extends QmpError {
  override name = 'QmpNegotiationError';
}

/** The connection closed (EOF, reset, QEMU died) while something waited on it. */
export class QmpDisconnectedError extends QmpError {
  override name = 'QmpDisconnectedError';
  constructor(
    readonly reason: string,
    readonly detail?: string,
  ) {
    super(detail ? `${reason}\n${detail}` : reason);
  }
}
