/* bench/rusage.c: `rusage OUTFILE CMD...` runs CMD (posix_spawnp, stdio
 * inherited) and writes "user_s sys_s maxrss_kb" to OUTFILE, as
 * /usr/bin/time -f '%U %S %M' does, with microsecond digits (wait4's rusage;
 * /usr/bin/time prints centiseconds). Exits with CMD's status. Built by
 * bench/cpu.sh; a benchmark tool, not part of migrate-lua. */
#include <spawn.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>

extern char **environ;

int
main(int argc, char **argv)
{
	pid_t pid;
	int status;
	struct rusage ru;
	FILE *f;

	if (argc < 3) {
		fprintf(stderr, "usage: rusage OUTFILE CMD...\n");
		return 64;
	}
	if (posix_spawnp(&pid, argv[2], NULL, NULL, argv + 2, environ) != 0) {
		perror(argv[2]);
		return 127;
	}
	if (wait4(pid, &status, 0, &ru) < 0) {
		perror("wait4");
		return 1;
	}
	f = fopen(argv[1], "w");
	if (!f) {
		perror(argv[1]);
		return 1;
	}
	fprintf(f, "%ld.%06ld %ld.%06ld %ld\n", (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec,
	        (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec, ru.ru_maxrss);
	fclose(f);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
