/* The relay floor for Benchmarks/relay_floor.py: a worker that costs nothing, with the Swift worker's own Redis
 * scripts. One thread drains the "celery" list (broker database 1) `window` messages at a time with the worker's
 * pop-and-record script (kombu's `unacked` record), runs no task, and settles each batch with the worker's settle
 * script (early acknowledgements and a SUCCESS result per task, backend database 0), sent right after the next
 * pop, whose messages it reads while Redis runs the settle; a settle's reply is read one batch later. What it
 * reaches at a window is what Redis and the round trips allow there, with no worker CPU, no thread hand-off and no
 * decoding in the way.
 *
 *     relay <port> <window> <pop sha> <settle sha> <tasks> [pops in flight] [work] [redis pid] [connections]
 *
 * With `work` (microseconds, default 0) the thread spins that long per task before each settle, after the next pop
 * went out: a worker on one thread that spends that much CPU on each task.
 * With N pops in flight (default 1), each pops window/N messages and a new one is sent as each reply is read, so
 * Redis always has the next pop waiting while the window stays Celery's.
 * With 1 connection (default 2) the settles go out on the pops' connection, each right after the next pop, so Redis
 * runs them in the order written and answers them in order; with 2 they go out on a connection of their own.
 * Prints "<tasks settled> <seconds> <redis seconds>" once the queue is empty: the last is the CPU time the Redis
 * server with that pid spent over the same timed span (every thread's `schedstat`; 0 without a pid), so that its
 * share of a core is read over the span the rate is. Built by relay_floor.py with the system C compiler.
 */
#include <dirent.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ID_LENGTH 36

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The CPU time every thread of process `pid` has used so far, in seconds (0 when `pid` is 0). */
static double process_cpu(int pid) {
    if (pid <= 0) return 0;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *tasks = opendir(path);
    if (!tasks) return 0;
    unsigned long long total = 0;
    for (struct dirent *task; (task = readdir(tasks));) {
        if (task->d_name[0] == '.') continue;
        char file[96]; /* a thread's id is a number of at most 10 digits */
        snprintf(file, sizeof file, "%s/%.20s/schedstat", path, task->d_name);
        FILE *stat = fopen(file, "r");
        unsigned long long ns;
        if (!stat) continue;
        if (fscanf(stat, "%llu", &ns) == 1) total += ns;
        fclose(stat);
    }
    closedir(tasks);
    return total / 1e9;
}

static void fail(const char *what, redisContext *c) {
    fprintf(stderr, "relay: %s: %s\n", what, c && c->err ? c->errstr : "unexpected reply");
    exit(1);
}

/* One popped batch: its delivery tags and task ids, copied out of the pop's reply. */
struct batch {
    int count;
    char (*tags)[64];
    char (*ids)[ID_LENGTH + 1];
    /* The settle script's arguments, allocated once for a whole window. */
    const char **argv;
    char (*keys)[64];
    char (*documents)[256];
};

static struct batch batch_for(int window) {
    struct batch b = {0, calloc(window, 64), calloc(window, ID_LENGTH + 1), calloc(11 + 3 * window, sizeof(char *)),
                      calloc(window, 64), calloc(window, 256)};
    if (!b.tags || !b.ids || !b.argv || !b.keys || !b.documents) {
        fprintf(stderr, "relay: out of memory\n");
        exit(1);
    }
    return b;
}

static void append_pop(redisContext *broker, const char *sha, int window) {
    static const char *lists[] = {"celery", "celery\x06\x16" "3", "celery\x06\x16" "6", "celery\x06\x16" "9"};
    char count[16], score[32];
    snprintf(count, sizeof count, "%d", window);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(score, sizeof score, "%.6f", ts.tv_sec + ts.tv_nsec / 1e9);
    const char *argv[] = {"EVALSHA", sha, "6", "unacked", "unacked_index",
                          lists[0], lists[1], lists[2], lists[3], count, score};
    if (redisAppendCommandArgv(broker, 11, argv, NULL) != REDIS_OK) fail("pop", broker);
}

static void append_settle(redisContext *backend, const char *sha, const struct batch *b) {
    int n = b->count;
    const char **argv = b->argv;
    char (*keys)[64] = b->keys;
    char (*documents)[256] = b->documents;
    char keycount[16], count[16];
    snprintf(keycount, sizeof keycount, "%d", 2 + n);
    snprintf(count, sizeof count, "%d", n);
    int a = 0;
    argv[a++] = "EVALSHA";
    argv[a++] = sha;
    argv[a++] = keycount;
    argv[a++] = "unacked";
    argv[a++] = "unacked_index";
    for (int i = 0; i < n; i++) {
        snprintf(keys[i], sizeof keys[i], "celery-task-meta-%s", b->ids[i]);
        argv[a++] = keys[i];
    }
    argv[a++] = "1";       /* broker database */
    argv[a++] = "0";       /* backend database */
    argv[a++] = "86400";   /* result_expires */
    argv[a++] = "json";
    argv[a++] = count;     /* early acknowledgements */
    argv[a++] = count;     /* documents */
    for (int i = 0; i < n; i++) argv[a++] = b->tags[i];
    for (int i = 0; i < n; i++) {
        snprintf(documents[i], sizeof documents[i],
                 "{\"status\": \"SUCCESS\", \"result\": null, \"traceback\": null, \"children\": [], "
                 "\"date_done\": \"2026-12-03T00:00:00.000000+00:00\", \"task_id\": \"%s\"}",
                 b->ids[i]);
        argv[a++] = documents[i];
    }
    if (redisAppendCommandArgv(backend, a, argv, NULL) != REDIS_OK) fail("settle", backend);
}

static redisReply *reply(redisContext *c, const char *what) {
    void *r = NULL;
    if (redisGetReply(c, &r) != REDIS_OK || !r) fail(what, c);
    redisReply *rr = r;
    if (rr->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "relay: %s: %s\n", what, rr->str);
        exit(1);
    }
    return rr;
}

/* Reads a pop's reply into `b`: [list, message, tag, ...], the task id from the message's "id" header. */
static void take(redisReply *r, struct batch *b) {
    b->count = 0;
    if (r->type != REDIS_REPLY_ARRAY) return;
    for (size_t i = 0; i + 2 < r->elements; i += 3) {
        redisReply *message = r->element[i + 1], *tag = r->element[i + 2];
        const char *id = message->type == REDIS_REPLY_STRING ? strstr(message->str, "\"id\": \"") : NULL;
        if (!id || tag->type != REDIS_REPLY_STRING || tag->len >= 64) {
            fprintf(stderr, "relay: a message without a task id or a tag\n");
            exit(1);
        }
        memcpy(b->ids[b->count], id + 7, ID_LENGTH);
        b->ids[b->count][ID_LENGTH] = 0;
        memcpy(b->tags[b->count], tag->str, tag->len);
        b->tags[b->count][tag->len] = 0;
        b->count++;
    }
}

/* The replies a connection owes, in order (a ring). */
struct replies {
    int *kinds;
    int size, first, count;
};

static void owe(struct replies *r, int kind) {
    r->kinds[(r->first + r->count++) % r->size] = kind;
}

static int take_owed(struct replies *r) {
    int kind = r->kinds[r->first];
    r->first = (r->first + 1) % r->size;
    r->count--;
    return kind;
}

/* The next pop's reply on the pops' connection, counting the settles answered before it (with one connection). */
static redisReply *next_pop(redisContext *broker, struct replies *owed, int *settled) {
    for (;;) {
        int kind = take_owed(owed);
        redisReply *r = reply(broker, kind ? "settle" : "pop");
        if (!kind) return r;
        *settled += kind;
        freeReplyObject(r);
    }
}

static void flush(redisContext *c) {
    int done = 0;
    while (!done)
        if (redisBufferWrite(c, &done) != REDIS_OK) fail("write", c);
}

int main(int argc, char **argv) {
    if (argc < 6 || argc > 10) {
        fprintf(stderr, "usage: relay <port> <window> <pop sha> <settle sha> <tasks> [pops in flight] [work] "
                        "[redis pid] [connections]\n");
        return 2;
    }
    int port = atoi(argv[1]), window = atoi(argv[2]), tasks = atoi(argv[5]);
    int depth = argc >= 7 ? atoi(argv[6]) : 1;
    double work = argc >= 8 ? atof(argv[7]) / 1e6 : 0;
    int redis_pid = argc >= 9 ? atoi(argv[8]) : 0;
    int one_connection = argc == 10 && atoi(argv[9]) == 1;
    if (window < 1 || depth < 1 || window % depth) {
        fprintf(stderr, "relay: the window must be a positive multiple of the pops in flight\n");
        return 2;
    }
    const char *pop = argv[3], *settle = argv[4];
    redisContext *broker = redisConnect("127.0.0.1", port), *backend = redisConnect("127.0.0.1", port);
    if (!broker || broker->err || !backend || backend->err) fail("connect", broker);
    redisReply *selected = redisCommand(broker, "SELECT 1");
    if (!selected) fail("select", broker);
    freeReplyObject(selected);
    /* The settle script's arguments are copied into hiredis's output buffer when it is appended, so one batch
     * buffer serves every pop. */
    struct batch batch = batch_for(window);
    int per = window / depth, settled = 0, inflight = 0, pending = 0, counts[2] = {0, 0}, empty = 0;
    redisContext *settles = one_connection ? broker : backend;
    /* The replies the pops' connection owes, in the order they come: 0 for a pop, else (with one connection) a
     * settle of that many tasks. At most one settle is sent after each pop, so twice the pops in flight, and one,
     * bound them. */
    struct replies owed = {calloc(2 * depth + 1, sizeof(int)), 2 * depth + 1, 0, 0};
    if (!owed.kinds) {
        fprintf(stderr, "relay: out of memory\n");
        return 1;
    }
    double redis_started = process_cpu(redis_pid), started = now();
    for (; inflight < depth; inflight++) {
        append_pop(broker, pop, per);
        owe(&owed, 0);
    }
    flush(broker);
    while (inflight > 0) {
        redisReply *popped = next_pop(broker, &owed, &settled);
        inflight--;
        take(popped, &batch);
        freeReplyObject(popped);
        if (batch.count == 0) empty = 1;
        /* The next pop first (the messages just read count as started: Celery's early acknowledgement frees
         * their prefetch slots), then this batch's settle, whose reply is read only after the next settle is
         * sent (on one connection: before the reply of the pop after it), so Redis never waits for this thread
         * to read one. */
        if (!empty) {
            append_pop(broker, pop, per);
            flush(broker);
            owe(&owed, 0);
            inflight++;
        }
        if (batch.count) {
            /* The tasks' own CPU, when asked for: spun here, after the next pop went out, as a worker on one
             * thread would run them. */
            if (work > 0) {
                double until = now() + work * batch.count;
                while (now() < until) {
                }
            }
            append_settle(settles, settle, &batch);
            flush(settles);
            if (one_connection)
                owe(&owed, batch.count);
            else
                counts[pending++] = batch.count;
        }
        if (pending == 2) {
            freeReplyObject(reply(backend, "settle"));
            settled += counts[0];
            counts[0] = counts[1];
            pending = 1;
        }
    }
    if (pending) {
        freeReplyObject(reply(backend, "settle"));
        settled += counts[0];
    }
    while (owed.count > 0) {
        freeReplyObject(reply(broker, "settle"));
        settled += take_owed(&owed);
    }
    double elapsed = now() - started, redis_spent = process_cpu(redis_pid) - redis_started;
    printf("%d %.6f %.6f\n", settled, elapsed, redis_spent);
    return settled == tasks ? 0 : 1;
}
