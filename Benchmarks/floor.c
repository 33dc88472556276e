/* The latency floor for Benchmarks/drain.py: the simplest consumer there is, in C with hiredis. It answers each
 * message on the "celery" list (broker database 1) with the PUBLISH the latency probe waits for: one BRPOP, one
 * PUBLISH, nothing recorded, decoded or stored. Built by drain.py with the system C compiler.
 *
 *     floor <port>
 */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: floor <port>\n");
        return 2;
    }
    int port = atoi(argv[1]);
    redisContext *broker = redisConnect("127.0.0.1", port), *backend = redisConnect("127.0.0.1", port);
    if (!broker || broker->err || !backend || backend->err) {
        fprintf(stderr, "floor: cannot connect to 127.0.0.1:%d\n", port);
        return 1;
    }
    redisReply *selected = redisCommand(broker, "SELECT 1");
    if (!selected) return 1;
    freeReplyObject(selected);
    for (;;) {
        redisReply *reply = redisCommand(broker, "BRPOP celery 1");
        if (!reply) return 1;
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
            /* Celery's producer writes the task id as the header "id": "<36 characters>". */
            const char *id = strstr(reply->element[1]->str, "\"id\": \"");
            if (id) {
                char channel[64];
                snprintf(channel, sizeof channel, "celery-task-meta-%.36s", id + 7);
                redisReply *published = redisCommand(backend, "PUBLISH %s {}", channel);
                if (!published) return 1;
                freeReplyObject(published);
            }
        }
        freeReplyObject(reply);
    }
}
