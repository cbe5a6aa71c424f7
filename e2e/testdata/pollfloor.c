/*
 * pollfloor: the floor of polling a memory cgroup, for BenchmarkSidecarCPU.
 * It does what the sidecar's sampler does per idle sample and nothing else:
 * sleep one interval (nanosleep), then pread each named file from offset 0.
 * Usage: pollfloor <interval-ms> <file>...
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc < 3) {
		fprintf(stderr, "usage: %s interval-ms file...\n", argv[0]);
		return 2;
	}
	long ms = atol(argv[1]);
	int n = argc - 2;
	int fds[64];
	if (ms <= 0 || n > 64) {
		fprintf(stderr, "%s: bad interval or too many files\n", argv[0]);
		return 2;
	}
	for (int i = 0; i < n; i++) {
		fds[i] = open(argv[i + 2], O_RDONLY | O_CLOEXEC);
		if (fds[i] < 0) {
			perror(argv[i + 2]);
			return 1;
		}
	}
	struct timespec iv = {ms / 1000, (ms % 1000) * 1000000L};
	char buf[4096];
	for (;;) {
		nanosleep(&iv, NULL);
		for (int i = 0; i < n; i++) {
			if (pread(fds[i], buf, sizeof buf, 0) < 0) {
				perror("pread");
				return 1;
			}
		}
	}
}
