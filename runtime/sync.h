/* sync.h — process-shared synchronisation primitives with a C ABI, so that
 * LuaJIT FFI calls the hot paths (acquire/release, set/wait) directly.
 *
 * Provides: Lock, RLock, Semaphore/BoundedSemaphore, Event, Condition and
 *           Barrier over caller-provided memory that every participating
 *           process maps MAP_SHARED (the arena in runtime/shm.hpp).
 * Uses:     Linux futexes (FUTEX_WAIT_BITSET with CLOCK_MONOTONIC absolute
 *           deadlines), C11/C++ atomics. Boost.Interprocess's mutexes are
 *           process-shared but not robust (sync/posix/pthread_helpers.hpp):
 *           a holder that dies wedges everyone, which SPEC.md forbids; and
 *           a Python Lock may be released by another process, which no
 *           mutex allows. Hence futex words that record the owner's pid.
 * Fork-safe: yes: all state is in the shared memory itself.
 * Errors:   return codes below; never throws, never aborts.
 *
 * Every object is `LUAMP_SYNC_SIZE` bytes (zeroed, then *_init), aligned to
 * 64 bytes. Timeouts are seconds; a negative timeout means no limit; `block`
 * = 0 means try once. A holder of a Lock/RLock that died (its pid no longer
 * exists) is treated as having released it: the next acquirer gets it.
 * Waiters spin briefly before sleeping (a cross-CPU wake-up costs 20-50 us
 * on a VM) and wake others only after the state change is published.
 */
#ifndef LUAMP_SYNC_H
#define LUAMP_SYNC_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LUAMP_SYNC_SIZE 64

/* Return codes */
#define LUAMP_OK 1            /* acquired / waited successfully */
#define LUAMP_TIMEOUT 0       /* not acquired: non-blocking or timed out */
#define LUAMP_ENOTLOCKED (-1) /* release of an unlocked Lock / over-release of a BoundedSemaphore */
#define LUAMP_ENOTOWNER (-2)  /* RLock release by a process that does not own it */
#define LUAMP_EBROKEN (-3)    /* Barrier broken (or broken while waiting) */
#define LUAMP_EOVERFLOW (-4)  /* counter would overflow */

/* -- Lock: a binary semaphore; any process may release it ---------------- */
void luamp_lock_init(void* lock);
int luamp_lock_acquire(void* lock, int block, double timeout);
int luamp_lock_release(void* lock);                 /* LUAMP_OK or ENOTLOCKED */
int luamp_lock_owner(const void* lock);             /* pid of the holder, 0 if free */

/* -- RLock: recursive, owned by one process ------------------------------- */
void luamp_rlock_init(void* rlock);
int luamp_rlock_acquire(void* rlock, int block, double timeout);
int luamp_rlock_release(void* rlock);               /* OK, ENOTOWNER or ENOTLOCKED */
int luamp_rlock_count(const void* rlock);           /* recursion depth (any owner) */
int luamp_rlock_owner(const void* rlock);

/* -- Semaphore; maxvalue > 0 makes it bounded ------------------------------ */
void luamp_sem_init(void* sem, uint32_t value, uint32_t maxvalue); /* maxvalue UINT32_MAX: unbounded */
int luamp_sem_acquire(void* sem, int block, double timeout);
int luamp_sem_release(void* sem);                   /* OK, ENOTLOCKED (bounded: over-release), EOVERFLOW */
int luamp_sem_value(const void* sem);

/* -- Event ----------------------------------------------------------------- */
void luamp_event_init(void* ev);
void luamp_event_set(void* ev);
void luamp_event_clear(void* ev);
int luamp_event_is_set(const void* ev);
int luamp_event_wait(void* ev, double timeout);     /* OK if set, TIMEOUT */

/* -- Condition over a Lock or an RLock (kind: 0 Lock, 1 RLock) --------------
 * wait: requires the caller to hold `lock`; releases it fully (an RLock's
 * whole recursion), waits for a notify or the timeout, re-acquires it (to
 * the same depth) before returning. notify wakes up to n waiters that are
 * still alive (a waiter that died is not counted). */
void luamp_cond_init(void* cond);
int luamp_cond_wait(void* cond, void* lock, int kind, double timeout); /* OK, TIMEOUT, ENOTOWNER/ENOTLOCKED */
void luamp_cond_notify(void* cond, int n);
void luamp_cond_notify_all(void* cond);

/* -- Barrier ------------------------------------------------------------------
 * wait returns the arrival index 0..parties-1 through *index. The last to
 * arrive gets LUAMP_BARRIER_ACTION: it runs the action (in Lua) and then
 * calls luamp_barrier_finish(ok) to release the others (ok = 0 breaks the
 * barrier: the others get EBROKEN). A timeout breaks the barrier (as in
 * Python: every waiter gets EBROKEN, the one that timed out too). A waiter
 * that dies while waiting breaks it as well, so nobody waits for ever. */
#define LUAMP_BARRIER_ACTION 2
void luamp_barrier_init(void* barrier, uint32_t parties);
int luamp_barrier_wait(void* barrier, double timeout, int* index);
void luamp_barrier_finish(void* barrier, int ok);
void luamp_barrier_reset(void* barrier);
void luamp_barrier_abort(void* barrier);
int luamp_barrier_parties(const void* barrier);
int luamp_barrier_n_waiting(const void* barrier);
int luamp_barrier_broken(const void* barrier);

/* -- Exit -------------------------------------------------------------------
 * Every Lock/RLock made by *_init in this process (or inherited from a fork
 * parent) is tracked; luamp_sync_track adds one brought in from elsewhere (a
 * received handle). luamp_sync_release_owned, at exit, leaves each tracked
 * lock this process still holds to its next acquirer as if this process had
 * died: a joiner that returns before the kernel has ended the process finds
 * the lock recoverable at once. */
void luamp_sync_track(void* lock);
void luamp_sync_release_owned(void);

/* -- Fork --------------------------------------------------------------------
 * A child made with clone(2) instead of fork(3) runs no pthread_atfork
 * handler: it calls this first (it drops the pid cached for the parent). */
void luamp_sync_after_fork(void);

#ifdef __cplusplus
}
#endif

#endif /* LUAMP_SYNC_H */
