-- multiprocessing.shared — the Lua side of the shared arena (runtime/shm):
-- the FFI declarations of runtime/sync.h, allocation of arena objects, and
-- the handles that carry them to other processes.
--
-- An arena object is named by its offset; a handle is {arena id, offset,
-- ...}, rebuilt in the receiver as a pointer into its own mapping of the same
-- arena. A handle from another process tree is refused.
local ffi = require("ffi")
local core = require("luamp.core")

ffi.cdef[[
int luamp_lock_acquire(void*, int, double);
int luamp_lock_release(void*);
int luamp_lock_owner(const void*);
int luamp_rlock_acquire(void*, int, double);
int luamp_rlock_release(void*);
int luamp_rlock_count(const void*);
int luamp_rlock_owner(const void*);
void luamp_lock_init(void*);
void luamp_rlock_init(void*);
void luamp_sync_track(void*);
void luamp_sem_init(void*, uint32_t, uint32_t);
int luamp_sem_acquire(void*, int, double);
int luamp_sem_release(void*);
int luamp_sem_value(const void*);
void luamp_event_init(void*);
void luamp_event_set(void*);
void luamp_event_clear(void*);
int luamp_event_is_set(const void*);
int luamp_event_wait(void*, double);
void luamp_cond_init(void*);
int luamp_cond_wait(void*, void*, int, double);
void luamp_cond_notify(void*, int);
void luamp_cond_notify_all(void*);
void luamp_barrier_init(void*, uint32_t);
int luamp_barrier_wait(void*, double, int*);
void luamp_barrier_finish(void*, int);
void luamp_barrier_reset(void*);
void luamp_barrier_abort(void*);
int luamp_barrier_parties(const void*);
int luamp_barrier_n_waiting(const void*);
int luamp_barrier_broken(const void*);
]]

local M = {
  C = ffi.C,
  SYNC_SIZE = 64,
  OK = 1, TIMEOUT = 0, ENOTLOCKED = -1, ENOTOWNER = -2, EBROKEN = -3, EOVERFLOW = -4,
  BARRIER_ACTION = 2,
}

local base  -- uint8_t*: where the arena is mapped in this process

function M.base()
  if base == nil then base = ffi.cast("uint8_t*", core.shm_base()) end
  return base
end

-- Returns a pointer to `size` fresh zeroed shared bytes.
function M.alloc(size, align)
  return M.base() + core.shm_alloc(size, align or 64)
end

function M.offset(ptr)
  return tonumber(ffi.cast("uint8_t*", ptr) - M.base())
end

-- A pointer to the `size` bytes (default 1) at `offset`, which a handle
-- gave: an offset outside what the arena has handed out is an error, never
-- a pointer to memory that is not the arena's.
function M.at(offset, size)
  local base = M.base()
  size = size or 1
  if type(offset) ~= "number" or offset ~= math.floor(offset) or offset < 0
     or offset + size > core.shm_used() then
    core.error("SerializationError", "a handle names a place outside the shared arena: " .. tostring(offset))
  end
  return base + offset
end

local registry = debug.getregistry()
registry["luamp.cdata_reduce"] = registry["luamp.cdata_reduce"] or {}
registry["luamp.handles"] = registry["luamp.handles"] or {}
local reducers, handles = registry["luamp.cdata_reduce"], registry["luamp.handles"]

local function check_arena(name, payload)
  if payload.arena ~= core.shm_id() then
    core.error("SerializationError", ("a %s belongs to another luamp process tree"):format(name))
  end
end

-- Objects of ctype `ct` travel as handles named `name`: reduce(obj) gives a
-- payload table, rebuild(payload) the receiver's object.
function M.register_cdata(name, ct, reduce, rebuild)
  reducers[tonumber(ct)] = function(obj)
    local payload = reduce(obj)
    payload.arena = core.shm_id()
    return name, payload
  end
  handles[name] = function(payload)
    check_arena(name, payload)
    return rebuild(payload)
  end
end

-- The same for table objects: returns the metatable's __mp_reduce.
function M.register_table(name, reduce, rebuild)
  handles[name] = function(payload)
    check_arena(name, payload)
    return rebuild(payload)
  end
  return function(obj)
    local payload = reduce(obj)
    payload.arena = core.shm_id()
    return name, payload
  end
end

return M
