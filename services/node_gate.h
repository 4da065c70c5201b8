/* node_gate.h: lets a service's threads use the node until it stops, and never after.
 *
 * Why: the peer server outlives the node (services/server.c stops the node, then the peer
 * server), and a membership change or a MoveLeader runs on a worker thread of its own, so a
 * handler or that worker could otherwise call into a node that raft_node_stop has freed.
 *
 * What it promises:
 * - node_gate_enter() returns true, and the node stays usable until the matching
 *   node_gate_leave(), unless node_gate_close() has begun (then false: do not touch the node).
 * - node_gate_close() refuses every later enter and returns once every user has left. A user
 *   inside may be blocked in the node for as long as that call's own bound (raft_node_change_conf's
 *   timeout), so close waits at most that long. Call it before raft_node_stop.
 * Entering is cheap (one mutex). Do not enter again while inside: once close has begun the
 * second enter fails.
 */
#ifndef CRAFT_SERVICES_NODE_GATE_H
#define CRAFT_SERVICES_NODE_GATE_H

#include <pthread.h>
#include <stdbool.h>

struct node_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* users fell to 0 (with closed) */
    int users;
    bool closed;
};

static inline void node_gate_init(struct node_gate *g)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->users = 0;
    g->closed = false;
}

static inline bool node_gate_enter(struct node_gate *g)
{
    pthread_mutex_lock(&g->mu);
    bool ok = !g->closed;
    if (ok)
        g->users++;
    pthread_mutex_unlock(&g->mu);
    return ok;
}

static inline void node_gate_leave(struct node_gate *g)
{
    pthread_mutex_lock(&g->mu);
    if (--g->users == 0 && g->closed)
        pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Whether close has begun (a hint for loops that wait: they should give up). */
static inline bool node_gate_closing(struct node_gate *g)
{
    pthread_mutex_lock(&g->mu);
    bool c = g->closed;
    pthread_mutex_unlock(&g->mu);
    return c;
}

static inline void node_gate_close(struct node_gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->closed = true;
    while (g->users > 0)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static inline void node_gate_destroy(struct node_gate *g)
{
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
}

#endif
