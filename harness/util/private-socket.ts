import { lstatSync } from 'node:fs';
import type { Server } from 'node:net';
import { dirname } from 'node:path';

/**
 * Listens on a unix socket that only this user can reach, from the moment it
 * exists. bind(2) creates the file with the process umask (0755 under the
 * usual 022), and a chmod after listen leaves a window in which a peer may
 * connect; so the umask is narrowed to 0177 around the bind, which Node
 * makes synchronously inside listen() for a path. The directory must be
 * ours and closed to group and others (0700), or anyone could replace the
 * socket file between our bind and the peer's connect.
 */
export function listenPrivately(server: Server, path: string, what: string): Promise<void> {
  checkPrivateDir(dirname(path), what);
  return new Promise<void>((resolve, reject) => {
    const onError = (e: Error) => reject(new Error(`${what}: cannot listen on ${path}: ${e.message}`));
    server.once('error', onError);
    const old = process.umask(0o177);
    try {
      server.listen(path, () => {
        server.removeListener('error', onError);
        const mode = lstatSync(path).mode & 0o777;
        if (mode !== 0o600) {
          server.close();
          reject(new Error(`${what}: socket ${path} has mode 0${mode.toString(8)}, expected 0600`));
        } else resolve();
      });
    } finally {
      process.umask(old);
    }
  });
}

/** Throws, naming the directory and its mode, unless it is a directory of ours with mode 0700 or narrower. */
export function checkPrivateDir(dir: string, what: string): void {
  let st;
  try {
    st = lstatSync(dir);
  } catch (e) {
    throw new Error(`${what}: socket directory ${dir}: ${(e as Error).message}`);
  }
  if (!st.isDirectory()) throw new Error(`${what}: socket directory ${dir} is not a directory`);
  if (process.getuid && st.uid !== process.getuid()) throw new Error(`${what}: socket directory ${dir} belongs to uid ${st.uid}, not to this user (${process.getuid()})`);
  if ((st.mode & 0o077) !== 0) {
    throw new Error(`${what}: socket directory ${dir} has mode 0${(st.mode & 0o777).toString(8)}; it must be private (0700, e.g. from mkdtemp) so no one else can reach or replace the socket`);
  }
}
