/* What it costs on this machine for one thread to wake another: two threads pass one byte back and forth over two
 * pipes, each blocking in read() until the other writes, N times, once with both threads on one CPU and once with
 * each on a CPU of its own. Every pass is one wake-up of a sleeping thread; the printed time is per round trip (two
 * wake-ups). A drain at Celery's default prefetch is a chain of such hand-offs (Redis to the fetch thread, the fetch
 * thread to a task thread, a task thread back to the fetch thread, the fetch thread to Redis), so what one costs
 * bounds how fast the chain can turn.
 *
 *     cc -O2 -o /tmp/wakeup Benchmarks/wakeup.c -lpthread && /tmp/wakeup [round trips, default 20000]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int there[2], back[2];
static long rounds = 20000;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    int failed = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (failed) {
        fprintf(stderr, "cannot pin a thread to CPU %d (error %d)\n", cpu, failed);
        exit(1);
    }
}

static void *echo(void *cpu) {
    pin((int)(long)cpu);
    char byte;
    for (long i = 0; i < rounds; i++) {
        if (read(there[0], &byte, 1) != 1 || write(back[1], &byte, 1) != 1) exit(1);
    }
    return NULL;
}

/* Microseconds per round trip with the main thread on CPU 0 and the echoing thread on `cpu`. */
static double measure(int cpu) {
    if (pipe(there) || pipe(back)) {
        perror("pipe");
        exit(1);
    }
    pin(0);
    pthread_t thread;
    if (pthread_create(&thread, NULL, echo, (void *)(long)cpu)) {
        fprintf(stderr, "cannot start a thread\n");
        exit(1);
    }
    struct timespec start, end;
    char byte = 'x';
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < rounds; i++) {
        if (write(there[1], &byte, 1) != 1 || read(back[0], &byte, 1) != 1) exit(1);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    pthread_join(thread, NULL);
    close(there[0]), close(there[1]), close(back[0]), close(back[1]);
    return ((end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec)) / rounds / 1000.0;
}

int main(int argc, char **argv) {
    if (argc > 1) rounds = atol(argv[1]);
    if (rounds <= 0) {
        fprintf(stderr, "usage: %s [round trips > 0]\n", argv[0]);
        return 2;
    }
    if (sysconf(_SC_NPROCESSORS_ONLN) < 2) {
        fprintf(stderr, "needs two CPUs\n");
        return 1;
    }
    printf("one CPU:  %.1f us per round trip (two wake-ups)\n", measure(0));
    printf("two CPUs: %.1f us per round trip (two wake-ups)\n", measure(1));
    return 0;
}
