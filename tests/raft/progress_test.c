/* Unit tests of the per-follower progress (raft/core/progress.h): each named transition, the
 * in-flight window's two bounds, stale and repeated rejections, the stalled-pipeline re-probe,
 * and the invariants (match < next, window only in PIPELINE, slots within (match, next)). */
#include <criterion/criterion.h>

#include "raft/core/progress.h"
#include "raft/core/raft.h"

static struct progress P;

static void setup(void)
{
    cr_assert_eq(progress_init(&P, 2, 4, 1000), 0);
    progress_reset_leader(&P, 10, false); /* a leader whose log ends at 10 */
}

static void teardown(void)
{
    progress_free(&P);
}

TestSuite(progress, .init = setup, .fini = teardown);

Test(progress, a_new_leadership_probes_from_the_end_of_its_log)
{
    cr_assert_eq(P.state, RAFT_PROGRESS_PROBE);
    cr_assert_eq(P.match, 0);
    cr_assert_eq(P.next, 11);
    cr_assert(progress_can_send(&P));
    cr_assert(progress_ok(&P));
}

Test(progress, probe_allows_one_append_until_answered)
{
    progress_sent(&P, 0, 0);
    cr_assert_not(progress_can_send(&P), "a second probe before an answer");
    cr_assert_eq(P.next, 11, "a probe does not move next");
    /* An answer that moves nothing re-arms the probe. */
    cr_assert_not(progress_acked(&P, 0));
    cr_assert(progress_can_send(&P));
}

Test(progress, an_ack_that_moves_match_switches_to_pipeline)
{
    progress_sent(&P, 0, 0);
    cr_assert(progress_acked(&P, 10));
    cr_assert_eq(P.state, RAFT_PROGRESS_PIPELINE);
    cr_assert_eq(P.match, 10);
    cr_assert_eq(P.next, 11);
    cr_assert_eq(progress_window_count(&P.window), 0);
    cr_assert(progress_ok(&P));
}

Test(progress, pipeline_window_is_bounded_by_count)
{
    progress_acked(&P, 10);
    for (int i = 0; i < 4; i++) {
        cr_assert(progress_can_send(&P));
        progress_sent(&P, 2, 10);
    }
    cr_assert_eq(P.next, 19);
    cr_assert_eq(progress_window_count(&P.window), 4);
    cr_assert_not(progress_can_send(&P), "a fifth append with max_msgs 4");
    /* An ack covering the first two appends frees exactly their slots. */
    cr_assert(progress_acked(&P, 14));
    cr_assert_eq(progress_window_count(&P.window), 2);
    cr_assert_eq(progress_window_bytes(&P.window), 20);
    cr_assert(progress_can_send(&P));
    cr_assert(progress_ok(&P));
}

Test(progress, pipeline_window_is_bounded_by_bytes)
{
    progress_acked(&P, 10);
    progress_sent(&P, 1, 600);
    cr_assert_eq(progress_window_room(&P.window), 400);
    cr_assert(progress_can_send(&P));
    progress_sent(&P, 1, 500); /* one append may pass the byte bound */
    cr_assert_eq(progress_window_room(&P.window), 0);
    cr_assert_not(progress_can_send(&P));
    cr_assert(progress_acked(&P, 12));
    cr_assert_eq(progress_window_room(&P.window), 1000);
}

Test(progress, a_probe_refused_moves_next_back_by_the_hint_but_never_to_match)
{
    progress_sent(&P, 0, 0); /* probe with prev_index 10 */
    cr_assert_eq(progress_rejected(&P, 10, 6), PROGRESS_REJECT_MOVED);
    cr_assert_eq(P.state, RAFT_PROGRESS_PROBE);
    cr_assert_eq(P.next, 6);
    cr_assert(progress_can_send(&P), "a moved probe goes out at once");
    progress_sent(&P, 0, 0);
    cr_assert(progress_acked(&P, 5));
    progress_sent(&P, 3, 30);
    /* A hint at or below match is clamped to match + 1. */
    cr_assert_eq(progress_rejected(&P, 8, 2), PROGRESS_REJECT_MOVED);
    cr_assert_eq(P.next, 6);
    cr_assert(progress_ok(&P));
}

Test(progress, the_same_probe_refused_again_waits_for_the_heartbeat)
{
    progress_sent(&P, 0, 0);
    cr_assert_eq(progress_rejected(&P, 10, 11), PROGRESS_REJECT_SAME);
    cr_assert_not(progress_can_send(&P));
    cr_assert(progress_on_heartbeat(&P), "the heartbeat resends the probe");
    cr_assert(progress_can_send(&P));
}

Test(progress, stale_rejections_are_ignored)
{
    progress_sent(&P, 0, 0);
    cr_assert_eq(progress_rejected(&P, 7, 3), PROGRESS_REJECT_STALE, "not our probe's prev");
    cr_assert_eq(P.next, 11);
    progress_acked(&P, 10);
    progress_sent(&P, 2, 10);
    progress_acked(&P, 12);
    cr_assert_eq(progress_rejected(&P, 12, 5), PROGRESS_REJECT_STALE, "at or below match");
    cr_assert_eq(P.state, RAFT_PROGRESS_PIPELINE);
}

Test(progress, a_rejection_in_pipeline_drops_to_probe_and_empties_the_window)
{
    progress_acked(&P, 10);
    progress_sent(&P, 2, 10);
    progress_sent(&P, 2, 10);
    cr_assert_eq(progress_rejected(&P, 12, 12), PROGRESS_REJECT_MOVED);
    cr_assert_eq(P.state, RAFT_PROGRESS_PROBE);
    cr_assert_eq(P.next, 12);
    cr_assert_eq(progress_window_count(&P.window), 0);
    cr_assert_eq(progress_window_bytes(&P.window), 0);
}

Test(progress, a_stalled_pipeline_is_reprobed_after_two_heartbeats)
{
    progress_acked(&P, 10);
    progress_sent(&P, 3, 30);
    cr_assert_not(progress_on_heartbeat(&P), "one heartbeat without progress is not a stall");
    cr_assert(progress_on_heartbeat(&P), "the second one without progress is");
    cr_assert_eq(P.state, RAFT_PROGRESS_PROBE);
    cr_assert_eq(P.next, 11);
}

Test(progress, an_idle_or_moving_pipeline_does_not_stall)
{
    progress_acked(&P, 10);
    for (int i = 0; i < 5; i++)
        cr_assert_not(progress_on_heartbeat(&P), "nothing in flight");
    for (uint64_t i = 0; i < 5; i++) {
        progress_sent(&P, 1, 10);
        cr_assert_not(progress_on_heartbeat(&P), "appends in flight, match moving");
        cr_assert(progress_acked(&P, 11 + i));
    }
    cr_assert_eq(P.state, RAFT_PROGRESS_PIPELINE);
}

Test(progress, snapshot_state_sends_nothing_until_the_snapshot_is_acked)
{
    progress_acked(&P, 10);
    progress_sent(&P, 1, 10);
    progress_become_snapshot(&P, 20);
    cr_assert_eq(P.state, RAFT_PROGRESS_SNAPSHOT);
    cr_assert_eq(P.pending_snapshot, 20);
    cr_assert_not(progress_can_send(&P));
    cr_assert_not(progress_on_heartbeat(&P));
    cr_assert_eq(progress_window_count(&P.window), 0);
    cr_assert(progress_ok(&P));
    cr_assert_eq(progress_rejected(&P, 10, 5), PROGRESS_REJECT_STALE, "refusals wait");
    /* An ack below the snapshot moves match but keeps waiting. */
    cr_assert(progress_acked(&P, 15));
    cr_assert_eq(P.state, RAFT_PROGRESS_SNAPSHOT);
    cr_assert(progress_ok(&P));
    cr_assert(progress_acked(&P, 20));
    cr_assert_eq(P.state, RAFT_PROGRESS_PIPELINE);
    cr_assert_eq(P.next, 21);
    cr_assert(progress_ok(&P));
}

Test(progress, a_failed_snapshot_goes_back_to_probe_at_once)
{
    progress_become_snapshot(&P, 30);
    progress_snapshot_done(&P, false);
    cr_assert_eq(P.state, RAFT_PROGRESS_PROBE);
    cr_assert_eq(P.next, 1);
    cr_assert(progress_can_send(&P));
    cr_assert(progress_ok(&P));
    progress_snapshot_done(&P, false); /* not in SNAPSHOT: nothing */
    cr_assert_eq(P.state, RAFT_PROGRESS_PROBE);
}

Test(progress, a_delivered_snapshot_probes_after_it_at_the_heartbeat)
{
    progress_become_snapshot(&P, 30);
    progress_snapshot_done(&P, true);
    cr_assert_eq(P.state, RAFT_PROGRESS_PROBE);
    cr_assert_eq(P.next, 31);
    cr_assert_not(progress_can_send(&P), "waits for the ack or the heartbeat");
    cr_assert(progress_on_heartbeat(&P), "a lost ack is replaced by the heartbeat's probe");
    cr_assert(progress_acked(&P, 30));
    cr_assert_eq(P.state, RAFT_PROGRESS_PIPELINE);
    cr_assert(progress_ok(&P));
}

Test(progress, activity_and_read_echoes)
{
    cr_assert_not(progress_take_active(&P));
    progress_heard(&P);
    cr_assert(progress_take_active(&P));
    cr_assert_not(progress_take_active(&P), "the mark is cleared by each round");
    cr_assert(progress_read_acked(&P, 3));
    cr_assert_not(progress_read_acked(&P, 3), "a duplicate echo");
    cr_assert_not(progress_read_acked(&P, 2), "an older echo");
}

Test(progress, format_names_the_state)
{
    char buf[128];
    progress_acked(&P, 10);
    progress_sent(&P, 2, 64);
    progress_format(&P, buf, sizeof buf);
    cr_assert_str_eq(buf, "match=10 next=13 PIPELINE inflight=1/64B");
}

Test(progress, ok_catches_broken_invariants)
{
    progress_acked(&P, 10);
    progress_sent(&P, 2, 10);
    cr_assert(progress_ok(&P));
    P.next = P.match; /* match < next broken */
    cr_assert_not(progress_ok(&P));
    P.next = 13;
    P.window.bytes = 11; /* bytes disagree with the slots */
    cr_assert_not(progress_ok(&P));
}
