"""CPython side of luamp's benchmark: CPython's own multiprocessing running
the workloads defined in /work/shared/bench/README.md (stdlib only).

It runs the workloads named on its command line one after the other in this
process and prints one JSON object per metric on stdout (progress and errors
on stderr).  scripts/bench/run starts it once per workload, in a fresh
interpreter, as

    python3 -c "import sys; sys.path.insert(0, DIR); import cpython_bench;
                sys.exit(cpython_bench.main(['--quick', 'queue_small']))"

so that spawn and forkserver children import this file as an ordinary
(cached) module; run as a script, each of them would execute it again.

    main([--quick] [--reps N] [--list] WORKLOAD...)

Each line: workload, metric, value (median of the samples), unit, params
(including reps and quick), samples (one per repetition, in run order), min,
max, best, better ("lower" or "higher"), ok (the workload's own check) and
wall_s.  A workload that raises prints metric "error" with value null.
Exit status 1 if any workload errored or failed its check.
"""
# Only what multiprocessing loads anyway is imported at module level: fork
# workers in worker_memory inherit this module, and json, argparse or
# statistics would make CPython's figure look worse than it is.
import contextlib
import math
import multiprocessing as mp
import os
import sys
import time

# CLOCK_MONOTONIC on Linux: readings taken in different processes compare.
clock = time.perf_counter


# ------------------------------------------------------------------ children
# Targets and pool tasks live at module level so that every start method can
# pickle them by reference.

def noop():
    pass


def square(x):
    return x * x


def count_primes(limit):
    """Primes below limit by plain trial division (d = 2, 3, 4, ... while
    d*d <= n), the same arithmetic the Lua side does."""
    found = 0
    for n in range(2, limit):
        d = 2
        while d * d <= n and n % d != 0:
            d += 1
        if d * d > n:
            found += 1
    return found


def sleep_then_getpid(seconds):
    time.sleep(seconds)
    return os.getpid()


def produce_ints(q, n, first_put):
    put = q.put
    first_put.value = clock()
    for i in range(n):
        put(i)


def produce_blob(q, n, size, first_put):
    blob = bytes(range(256)) * (size // 256)
    put = q.put
    first_put.value = clock()
    for _ in range(n):
        put(blob)


def echo_objects(conn, n):
    recv, send = conn.recv, conn.send
    for _ in range(n):
        send(recv())


def echo_bytes(conn, n):
    recv, send = conn.recv_bytes, conn.send_bytes
    for _ in range(n):
        send(recv())


def count_under_lock(value, n, go, times, slot):
    go.wait()
    t0 = clock()
    for _ in range(n):
        with value.get_lock():
            value.value += 1
    times[2 * slot] = t0
    times[2 * slot + 1] = clock()


def answer_pings(ping, pong, n):
    for _ in range(n):
        ping.wait()
        ping.clear()
        pong.set()


def sum_shared_doubles(arr, out):
    view = memoryview(arr.get_obj()).cast("B").cast("d")
    t0 = clock()
    s = 0.0
    for x in view:
        s += x
    out[1] = (clock() - t0) * 1e3
    out[0] = s


# ------------------------------------------------------------------ registry

WORKLOADS = {}  # name -> (function(params, reps) -> [metric], full, quick)


def workload(name, full, quick=None):
    def register(fn):
        WORKLOADS[name] = (fn, full, quick if quick is not None else full)
        return fn
    return register


def metric(name, unit, samples, ok=True, better="lower", **extra):
    return {"metric": name, "unit": unit, "samples": list(samples),
            "ok": bool(ok), "better": better, "extra": extra}


def median(xs):
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def fork_ctx():
    return mp.get_context("fork")


def per_item(elapsed_s, n, scale):
    return elapsed_s * scale / n


def default_chunksize(n, workers):
    return math.ceil(n / (4 * workers))


# ------------------------------------------------------------- process start

def start_and_join(ctx):
    p = ctx.Process(target=noop)
    p.start()
    p.join()
    return p.exitcode


def preload_in_forkserver(ctx):
    """Have the forkserver import this module once, so that each child is
    one fork of it plus unpickling.  3.11 cannot preload __main__ properly
    (cpython gh-98552), and its server ignores the sys.path it is sent, so
    this directory goes into PYTHONPATH, which the server inherits."""
    if __name__ == "__main__":
        return
    here = os.path.dirname(os.path.abspath(__file__))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here] + [x for x in paths if x])
    ctx.set_forkserver_preload([__name__])


def start_join(method, n, reps):
    ctx = mp.get_context(method)
    if method == "forkserver":
        preload_in_forkserver(ctx)
    samples, bad = [], 0
    for _ in range(reps):
        bad += start_and_join(ctx) != 0  # warm-up: forkserver, resource tracker
        t0 = clock()
        for _ in range(n):
            bad += start_and_join(ctx) != 0
        samples.append(per_item(clock() - t0, n, 1e3))
    return [metric("ms_per_process", "ms", samples, ok=bad == 0)]


def interpreter_start_ms(flags, n, reps):
    """Reference, not multiprocessing: fork+exec+wait of a bare python3."""
    import subprocess
    samples = []
    for _ in range(reps):
        t0 = clock()
        for _ in range(n):
            subprocess.run([sys.executable, *flags, "-c", "pass"], check=True)
        samples.append(per_item(clock() - t0, n, 1e3))
    return samples


@workload("start_join_fork", {"n": 100, "start_method": "fork"},
          {"n": 30, "start_method": "fork"})
def wl_start_join_fork(p, reps):
    return start_join("fork", p["n"], reps)


@workload("start_join_spawn", {"n": 30, "start_method": "spawn"},
          {"n": 10, "start_method": "spawn"})
def wl_start_join_spawn(p, reps):
    return start_join("spawn", p["n"], reps) + [
        metric("ref_python_startup_ms", "ms", interpreter_start_ms([], p["n"], reps)),
        metric("ref_python_startup_nosite_ms", "ms",
               interpreter_start_ms(["-S"], p["n"], reps)),
    ]


@workload("start_join_forkserver", {"n": 100, "start_method": "forkserver"},
          {"n": 30, "start_method": "forkserver"})
def wl_start_join_forkserver(p, reps):
    return start_join("forkserver", p["n"], reps)


@workload("start_join_parallel_fork", {"n": 64, "start_method": "fork"})
def wl_start_join_parallel_fork(p, reps):
    ctx, n = fork_ctx(), p["n"]
    samples, bad = [], 0
    for _ in range(reps):
        bad += start_and_join(ctx) != 0
        t0 = clock()
        procs = [ctx.Process(target=noop) for _ in range(n)]
        for pr in procs:
            pr.start()
        for pr in procs:
            pr.join()
        samples.append(per_item(clock() - t0, n, 1e3))
        bad += sum(pr.exitcode != 0 for pr in procs)
    return [metric("ms_per_process", "ms", samples, ok=bad == 0)]


# ---------------------------------------------------------------------- pool

@contextlib.contextmanager
def warm_pool(workers):
    """Pool(workers) under fork, warmed up as the README says; closed and
    joined afterwards."""
    pool = fork_ctx().Pool(workers)
    try:
        pool.map(square, range(1000))
        for i in range(20):
            pool.apply_async(square, (i,)).get()
        yield pool
    finally:
        pool.close()
        pool.join()


def timed_map(pool, n, reps, **kw):
    expected = [i * i for i in range(n)]
    samples, ok = [], True
    for _ in range(reps):
        t0 = clock()
        got = pool.map(square, range(n), **kw)
        samples.append(n / (clock() - t0))
        ok &= got == expected
    return metric("items_per_s", "items/s", samples, ok, better="higher")


@workload("pool_map_tiny", {"n": 200000, "workers": 2, "start_method": "fork"},
          {"n": 50000, "workers": 2, "start_method": "fork"})
def wl_pool_map_tiny(p, reps):
    p["chunksize"] = default_chunksize(p["n"], p["workers"])  # CPython's default
    with warm_pool(p["workers"]) as pool:
        return [timed_map(pool, p["n"], reps)]


@workload("pool_map_tiny_chunk1",
          {"n": 20000, "workers": 2, "chunksize": 1, "start_method": "fork"},
          {"n": 5000, "workers": 2, "chunksize": 1, "start_method": "fork"})
def wl_pool_map_tiny_chunk1(p, reps):
    with warm_pool(p["workers"]) as pool:
        return [timed_map(pool, p["n"], reps, chunksize=1)]


@workload("pool_apply_async_latency",
          {"n": 2000, "workers": 2, "start_method": "fork"},
          {"n": 500, "workers": 2, "start_method": "fork"})
def wl_pool_apply_async_latency(p, reps):
    n = p["n"]
    samples, wrong = [], 0
    with warm_pool(p["workers"]) as pool:
        apply_async = pool.apply_async
        for _ in range(reps):
            t0 = clock()
            for i in range(n):
                wrong += apply_async(square, (i,)).get() != i * i
            samples.append(per_item(clock() - t0, n, 1e6))
    return [metric("us_per_call", "us", samples, ok=wrong == 0)]


@workload("pool_cpu_speedup",
          {"limit": 30000, "tasks": 16, "workers": 2, "start_method": "fork"},
          {"limit": 30000, "tasks": 8, "workers": 2, "start_method": "fork"})
def wl_pool_cpu_speedup(p, reps):
    limit, tasks = p["limit"], p["tasks"]
    p["chunksize"] = default_chunksize(tasks, p["workers"])
    serial, parallel, ok = [], [], True
    with warm_pool(p["workers"]) as pool:
        for _ in range(reps):
            t0 = clock()
            by_parent = [count_primes(limit) for _ in range(tasks)]
            t1 = clock()
            by_pool = pool.map(count_primes, [limit] * tasks)
            t2 = clock()
            serial.append(t1 - t0)
            parallel.append(t2 - t1)
            ok &= by_parent == by_pool == [3245] * tasks
    speedup = [s / q for s, q in zip(serial, parallel)]
    return [metric("serial_s", "s", serial, ok),
            metric("parallel_s", "s", parallel, ok),
            metric("speedup", "x", speedup, ok, better="higher")]


# -------------------------------------------------------------------- queues

def drain(q, n, first_put, producer, args, size_of):
    """Start producer, get n items, return (sum of size_of(item), elapsed
    from the producer's first put to our last get, exit code)."""
    pr = fork_ctx().Process(target=producer, args=(q, n, *args, first_put))
    pr.start()
    get = q.get
    total = 0
    for _ in range(n):
        total += size_of(get())
    t_last = clock()
    pr.join()
    return total, t_last - first_put.value, pr.exitcode


def queue_of_ints(kind, n, reps):
    ctx = fork_ctx()
    samples, ok = [], True
    for _ in range(reps):
        q = ctx.Queue() if kind == "Queue" else ctx.SimpleQueue()
        total, elapsed, code = drain(q, n, ctx.RawValue("d", 0.0), produce_ints,
                                     (), int)
        q.close()
        samples.append(n / elapsed)
        ok &= total == n * (n - 1) // 2 and code == 0
    return [metric("msgs_per_s", "msgs/s", samples, ok, better="higher")]


@workload("queue_small", {"n": 200000, "start_method": "fork"},
          {"n": 50000, "start_method": "fork"})
def wl_queue_small(p, reps):
    return queue_of_ints("Queue", p["n"], reps)


@workload("queue_large", {"n": 200, "size": 1 << 20, "start_method": "fork"},
          {"n": 50, "size": 1 << 20, "start_method": "fork"})
def wl_queue_large(p, reps):
    ctx, n, size = fork_ctx(), p["n"], p["size"]
    samples, ok = [], True
    for _ in range(reps):
        q = ctx.Queue()
        total, elapsed, code = drain(q, n, ctx.RawValue("d", 0.0), produce_blob,
                                     (size,), len)
        q.close()
        samples.append(n * size / 1e6 / elapsed)
        ok &= total == n * size and code == 0
    return [metric("MB_per_s", "MB/s", samples, ok, better="higher")]


@workload("simplequeue_small", {"n": 200000, "start_method": "fork"},
          {"n": 50000, "start_method": "fork"})
def wl_simplequeue_small(p, reps):
    return queue_of_ints("SimpleQueue", p["n"], reps)


# --------------------------------------------------------------------- pipes

def pingpong(raw, n, warm, reps):
    ctx = fork_ctx()
    msg = b"12345678" if raw else ("ping", 12345)
    samples, ok = [], True
    for _ in range(reps):
        a, b = ctx.Pipe()
        pr = ctx.Process(target=echo_bytes if raw else echo_objects,
                         args=(b, warm + n))
        pr.start()
        b.close()
        send, recv = (a.send_bytes, a.recv_bytes) if raw else (a.send, a.recv)
        for _ in range(warm):
            send(msg)
            recv()
        t0 = clock()
        for _ in range(n):
            send(msg)
            reply = recv()
        samples.append(per_item(clock() - t0, n, 1e6))
        pr.join()
        a.close()
        ok &= reply == msg and pr.exitcode == 0
    return [metric("us_per_roundtrip", "us", samples, ok)]


@workload("pipe_pingpong", {"n": 20000, "warmup": 100, "start_method": "fork"},
          {"n": 5000, "warmup": 100, "start_method": "fork"})
def wl_pipe_pingpong(p, reps):
    return pingpong(False, p["n"], p["warmup"], reps)


@workload("pipe_bytes_pingpong",
          {"n": 20000, "warmup": 100, "size": 8, "start_method": "fork"},
          {"n": 5000, "warmup": 100, "size": 8, "start_method": "fork"})
def wl_pipe_bytes_pingpong(p, reps):
    return pingpong(True, p["n"], p["warmup"], reps)


# ----------------------------------------------------------- synchronisation

@workload("lock_contended", {"n_per_proc": 100000, "procs": 2, "start_method": "fork"},
          {"n_per_proc": 25000, "procs": 2, "start_method": "fork"})
def wl_lock_contended(p, reps):
    ctx, n, procs = fork_ctx(), p["n_per_proc"], p["procs"]
    samples, finals, ok = [], [], True
    for _ in range(reps):
        counter, go = ctx.Value("i", 0), ctx.Event()
        times = ctx.RawArray("d", 2 * procs)
        workers = [ctx.Process(target=count_under_lock, args=(counter, n, go, times, k))
                   for k in range(procs)]
        for w in workers:
            w.start()
        go.set()
        for w in workers:
            w.join()
        samples.append(n * procs / (max(times[1::2]) - min(times[0::2])))
        finals.append(counter.value)
        ok &= finals[-1] == n * procs and all(w.exitcode == 0 for w in workers)
    return [metric("ops_per_s", "ops/s", samples, ok, better="higher",
                   final_values=finals)]


@workload("lock_uncontended", {"n": 1000000}, {"n": 200000})
def wl_lock_uncontended(p, reps):
    n = p["n"]
    lock = fork_ctx().Lock()
    acquire, release = lock.acquire, lock.release
    samples = []
    for _ in range(reps):
        t0 = clock()
        for _ in range(n):
            acquire()
            release()
        samples.append(per_item(clock() - t0, n, 1e9))
    return [metric("ns_per_pair", "ns", samples, ok=lock.acquire(False))]


@workload("event_pingpong", {"n": 5000, "warmup": 50, "start_method": "fork"},
          {"n": 1000, "warmup": 50, "start_method": "fork"})
def wl_event_pingpong(p, reps):
    ctx, n, warm = fork_ctx(), p["n"], p["warmup"]
    samples, ok = [], True
    for _ in range(reps):
        ping, pong = ctx.Event(), ctx.Event()
        pr = ctx.Process(target=answer_pings, args=(ping, pong, warm + n))
        pr.start()
        for _ in range(warm):
            ping.set()
            pong.wait()
            pong.clear()
        t0 = clock()
        for _ in range(n):
            ping.set()
            pong.wait()
            pong.clear()
        samples.append(per_item(clock() - t0, n, 1e6))
        pr.join()
        ok &= pr.exitcode == 0 and not ping.is_set() and not pong.is_set()
    return [metric("us_per_roundtrip", "us", samples, ok)]


# ------------------------------------------------------------- shared memory

@workload("array_sum", {"n": 1000000, "typecode": "d", "start_method": "fork"})
def wl_array_sum(p, reps):
    import array
    ctx, n = fork_ctx(), p["n"]
    arr = ctx.Array("d", n)
    memoryview(arr.get_obj()).cast("B").cast("d")[:] = array.array("d", range(n))
    loop_ms, whole_ms, ok = [], [], True
    for _ in range(reps):
        out = ctx.RawArray("d", 2)
        t0 = clock()
        pr = ctx.Process(target=sum_shared_doubles, args=(arr, out))
        pr.start()
        pr.join()
        whole_ms.append((clock() - t0) * 1e3)
        loop_ms.append(out[1])
        ok &= out[0] == n * (n - 1) / 2 and pr.exitcode == 0
    return [metric("ms", "ms", loop_ms, ok),
            metric("ms_incl_process", "ms", whole_ms, ok)]


@workload("manager_dict", {"n": 10000, "start_method": "fork"},
          {"n": 2000, "start_method": "fork"})
def wl_manager_dict(p, reps):
    n = p["n"]
    keys = ["k%d" % i for i in range(n)]
    both, sets, gets, ok = [], [], [], True
    manager = fork_ctx().Manager()
    try:
        for _ in range(reps):
            d = manager.dict()
            t0 = clock()
            for i in range(n):
                d[keys[i]] = i
            t1 = clock()
            total = 0
            for i in range(n):
                total += d[keys[i]]
            t2 = clock()
            both.append(per_item(t2 - t0, 2 * n, 1e6))
            sets.append(per_item(t1 - t0, n, 1e6))
            gets.append(per_item(t2 - t1, n, 1e6))
            ok &= total == n * (n - 1) // 2 and len(d) == n
            del d  # drop the proxy so the server frees the dict
    finally:
        manager.shutdown()
    return [metric("us_per_op", "us", both, ok),
            metric("us_per_set", "us", sets, ok),
            metric("us_per_get", "us", gets, ok)]


# -------------------------------------------------------------------- memory

def smaps_kb(pid):
    """Rss and Pss of a process in kB, from /proc/PID/smaps_rollup."""
    found = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                found[key.lower()] = int(rest.split()[0])
    return found


def memory_probe(method, workers, settle_s):
    """Entry point of the fresh interpreter that worker_memory starts per
    repetition and start method: prints one JSON line with the workers' and
    this process's Rss/Pss once every worker has run a task."""
    ctx = mp.get_context(method)
    if method == "forkserver":
        preload_in_forkserver(ctx)
    with ctx.Pool(workers) as pool:
        ok = pool.apply(square, (3,)) == 9
        pids = set()
        while len(pids) < workers:
            pids.update(pool.map(sleep_then_getpid, [0.02] * workers, chunksize=1))
        time.sleep(settle_s)
        report = {"workers": [smaps_kb(pid) for pid in sorted(pids)],
                  "parent": smaps_kb(os.getpid()), "ok": ok}
    import json
    print(json.dumps(report))


def probe_in_fresh_interpreter(method, p):
    import json
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys; sys.path.insert(0, %r); import cpython_bench; "
            "cpython_bench.memory_probe(%r, %d, %r)"
            % (here, method, p["workers"], p["settle_s"]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{method} probe failed: {done.stderr[-1000:]}")
    return json.loads(done.stdout.splitlines()[-1])


@workload("worker_memory", {"workers": 2, "settle_s": 0.2,
                            "methods": ["fork", "spawn", "forkserver"]})
def wl_worker_memory(p, reps):
    series, ok = {}, True
    for _ in range(reps):
        for method in p["methods"]:
            r = probe_in_fresh_interpreter(method, p)
            ok &= r["ok"] and len(r["workers"]) == p["workers"]
            for kind in ("pss", "rss"):
                worker = median(w[kind] for w in r["workers"])
                series.setdefault(f"worker_{kind}_{method}", []).append(worker)
                series.setdefault(f"parent_{kind}_{method}", []).append(r["parent"][kind])
    return [metric(name, "kB", samples, ok) for name, samples in series.items()]


# -------------------------------------------------------------------- driver

def significant(x):
    return float(f"{x:.6g}") if isinstance(x, float) and math.isfinite(x) else x


def emit(line):
    import json
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def run_one(name, quick, reps):
    """Run one workload here; print its lines; return whether it passed."""
    fn, full, quick_params = WORKLOADS[name]
    params = dict(quick_params if quick else full)
    sys.stderr.write(f"cpython: {name} ...\n")
    t0 = clock()
    try:
        metrics = fn(params, reps)
    except Exception as e:  # report it as a result line and go on
        for child in mp.active_children():
            child.terminate()
        emit({"workload": name, "metric": "error", "value": None, "unit": "",
              "params": params, "ok": False, "error": f"{type(e).__name__}: {e}"})
        return False
    wall = round(clock() - t0, 3)
    params.update(reps=reps, quick=quick)
    for m in metrics:
        s = m["samples"]
        best = min(s) if m["better"] == "lower" else max(s)
        emit({"workload": name, "metric": m["metric"],
              "value": significant(median(s)), "unit": m["unit"],
              "params": params, "samples": [significant(x) for x in s],
              "min": significant(min(s)), "max": significant(max(s)),
              "best": significant(best), "better": m["better"], "ok": m["ok"],
              "wall_s": wall, **m["extra"]})
    return all(m["ok"] for m in metrics)


def parse_args(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="cpython_bench",
                                 description="CPython side of luamp's benchmark")
    ap.add_argument("workloads", nargs="*", help="default: all, in README order")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, 3 reps")
    ap.add_argument("--reps", type=int, help="repetitions (default 7, --quick 3)")
    ap.add_argument("--list", action="store_true", help="print workload names")
    a = ap.parse_args(argv)
    unknown = sorted(set(a.workloads) - set(WORKLOADS))
    if unknown:
        ap.error("unknown workload(s): " + ", ".join(unknown))
    if a.reps is not None and a.reps < 1:
        ap.error("--reps must be at least 1")
    return a


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.list:
        print("\n".join(WORKLOADS))
        return 0
    reps = a.reps or (3 if a.quick else 7)
    passed = [run_one(name, a.quick, reps) for name in a.workloads or WORKLOADS]
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
