/** Quotes a word for POSIX sh (busybox sh in the guest, a person's shell for cmdline.txt). */
export function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}
