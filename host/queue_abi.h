/* queue_abi.h — the C ABI of the queues (runtime/queue.hpp), called through
 * LuaJIT FFI by stdlib/multiprocessing/queues.lua, which repeats these
 * declarations in its ffi.cdef.
 *
 * Why FFI: a put or get of a number or a string is then one compiled call
 * from a JIT trace, with no Lua C API frame, no argument stack and no trace
 * exit; that is most of the cost of a small message. Other values go
 * through two luamp.core functions that encode into (core.queue_put_value)
 * or decode from (core.queue_decode_held) C++ buffers, never a Lua string.
 *
 * Every function returns 1 on success, 0 when the queue stayed empty/full
 * (non-blocking or timed out), -1 on an error whose luamp type and message
 * luamp_queue_error_type/_message() give. Nothing throws or aborts.
 * Timeouts are seconds; negative: no limit; block = 0: try once.
 */
#ifndef LUAMP_QUEUE_ABI_H
#define LUAMP_QUEUE_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One process's handle; the first six fields are runtime/queue.hpp's
 * Handle. The Lua side makes three struct types of this layout, one per
 * kind, and passes them as void*. */
typedef struct luamp_queue {
  void* q;
  uint64_t offset;
  uint64_t put_seg_id, put_seen_head, get_seg_id, get_seen_tail;
  int32_t kind; /* 1 Queue, 2 SimpleQueue, 3 JoinableQueue */
  int32_t closed;
} luamp_queue;

/* What get() took: kind 0 nil, 1 boolean, 2 number, 3 string (data, len),
 * 4 any other value (decode the held message), 5 a raw message (get_raw).
 * data stays valid until the next get or luamp_queue_release(). */
typedef struct luamp_item {
  int32_t kind;
  int32_t boolean;
  double number;
  const char* data;
  size_t len;
} luamp_item;

int luamp_queue_create(void* queue, int kind, double maxsize);
int luamp_queue_attach(void* queue, double offset, int kind);
int luamp_queue_put_number(void* queue, double value, int block, double timeout);
int luamp_queue_put_string(void* queue, const char* s, size_t len, int block, double timeout);
int luamp_queue_get(void* queue, int block, double timeout, luamp_item* item);
/* Messages that are not one serialized value (the pool's framed tasks and
 * replies): put head and body as they are; get them back whole in
 * item->data/len (kind 5), held like any other. */
int luamp_queue_put_raw(void* queue, const void* head, size_t head_len, const void* body,
                        size_t body_len, int block, double timeout);
int luamp_queue_get_raw(void* queue, int block, double timeout, luamp_item* item);
/* block = 2: block without polling first (a wait known to be long). */
void luamp_queue_release(void);
double luamp_queue_size(void* queue);
double luamp_queue_maxsize(void* queue);  /* 0: unbounded */
int luamp_queue_empty(void* queue);      /* 1 empty, 0 not, -1 error */
int luamp_queue_task_done(void* queue);  /* 0: called too many times */
int luamp_queue_join(void* queue);
const char* luamp_queue_error_type(void);
const char* luamp_queue_error_message(void);

#ifdef __cplusplus
}
#endif

#endif /* LUAMP_QUEUE_ABI_H */
