// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * pdeathsig-exec PARENT_PID PROGRAM [ARG...]
 *
 * Asks the kernel to SIGKILL this process when its parent dies
 * (PR_SET_PDEATHSIG), then execs PROGRAM in place, so PROGRAM keeps this pid
 * and the setting (it survives execve for anything that is not set-uid or
 * file-capable). The harness starts every QEMU through it: QEMU's own
 * `-run-with exit-with-parent=on` exists only from 9.1 on and sends SIGTERM,
 * which a SIGSTOPped QEMU never acts on; SIGKILL ends a stopped process too.
 *
 * The parent may die between fork and prctl: then the signal never comes.
 * PARENT_PID is the harness's pid as the harness saw it; if getppid() no
 * longer matches it after prctl, the parent is already gone (we were
 * reparented to init or a subreaper) and we exit instead of running PROGRAM.
 *
 * Exit status: PROGRAM's own, or 125 for a usage error, 126 when the parent is
 * already gone or prctl fails, 127 when PROGRAM cannot be executed.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: pdeathsig-exec PARENT_PID PROGRAM [ARG...]\n");
		return 125;
	}
	char *end;
	errno = 0;
	long parent = strtol(argv[1], &end, 10);
	if (errno || *end || end == argv[1] || parent <= 0) {
		fprintf(stderr, "pdeathsig-exec: PARENT_PID %s is not a pid\n", argv[1]);
		return 125;
	}
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
		fprintf(stderr, "pdeathsig-exec: prctl(PR_SET_PDEATHSIG): %s\n", strerror(errno));
		return 126;
	}
	if (getppid() != (pid_t)parent) {
		fprintf(stderr, "pdeathsig-exec: parent %ld is gone (parent is now %ld); not starting %s\n",
			parent, (long)getppid(), argv[2]);
		return 126;
	}
	execv(argv[2], &argv[2]);
	fprintf(stderr, "pdeathsig-exec: cannot execute %s: %s\n", argv[2], strerror(errno));
	return 127;
}
